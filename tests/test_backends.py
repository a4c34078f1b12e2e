import os
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from contextlib import contextmanager
from types import SimpleNamespace

import pytest

from agentark_utils.backends import (Generation, HFBackend, OpenAIBackend, VLLMBackend, _common_prefix, cache_kwarg,
                                     decode_batch, make_backend, row_seeds, sample_tokens, split_thinking)
from agentark_utils.config import ModelParams
from conftest import QWEN3_STYLE_TEMPLATE, ROOT
from agentark_utils.models import ModelNotFoundError

CONVERSATIONS = [
    [{"role": "user", "content": "Calculate 2 + 3."}],
    [{"role": "user", "content": "A much longer question, so that left padding matters: what is 7 * 8 - 5 + 11?"}],
    [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello!"}, {"role": "user", "content": "1+1?"}],
]


@pytest.fixture(scope="module")
def hf(tiny_model_dir):
    return HFBackend(str(tiny_model_dir), dtype="float32", device="cpu", batch_size=8)


def test_hf_batched_greedy_equals_one_at_a_time(hf):
    batched = hf.generate(CONVERSATIONS, temperature=0.0, max_new_tokens=12, seed=0)
    single = [hf.generate([c], temperature=0.0, max_new_tokens=12, seed=0)[0] for c in CONVERSATIONS]
    assert [g.text for g in batched] == [g.text for g in single]
    assert [g.prompt_tokens for g in batched] == [g.prompt_tokens for g in single]


def test_decode_batch_greedy_matches_transformers_generate(hf):
    import torch

    conversations = CONVERSATIONS + [CONVERSATIONS[0]] * 2  # repeated prompts are prefilled once
    ours = decode_batch(hf.model, [hf._prompt_ids(c) for c in conversations], pad_id=hf.tokenizer.pad_token_id,
                        max_new_tokens=12, stop_ids=hf.stop_ids, temperature=0.0)
    for conversation, new in zip(conversations, ours):
        ids = torch.tensor([hf._prompt_ids(conversation)])
        reference = hf.model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=12, do_sample=False,
                                      pad_token_id=hf.tokenizer.pad_token_id)[0, ids.shape[1]:].tolist()
        stop = next((i for i, t in enumerate(reference) if t in hf.stop_ids), len(reference) - 1)
        assert new == reference[: stop + 1]


class CountingLM:
    """A stand-in causal LM whose next token is always its last input token + 1, recording batch widths;
    it writes zeros to the KV cache, one per input token."""

    device = "cpu"

    def __init__(self):
        from transformers import LlamaConfig

        self.config = LlamaConfig(num_hidden_layers=1, hidden_size=8, num_attention_heads=2, vocab_size=64)
        self.widths: list[int] = []

    def __call__(self, *, input_ids, cache=None, **_):
        import torch

        self.widths.append(len(input_ids))
        for layer in cache.layers:
            layer.update(*[torch.zeros(*input_ids.shape[:1], 1, input_ids.shape[1], 2)] * 2)
        logits = torch.nn.functional.one_hot(input_ids[:, -1:] + 1, self.config.vocab_size).float()
        return type("Output", (), {"logits": logits})


def test_decode_batch_drops_a_row_once_it_stops():

    model = CountingLM()
    new = decode_batch(model, [[10], [5, 20], [30]], pad_id=0, max_new_tokens=5, stop_ids=[12, 31], temperature=0.0)
    assert new == [[11, 12], [21, 22, 23, 24, 25], [31]]
    assert model.widths == [3, 2, 1, 1, 1]  # the third row left after step 1, the first after step 2


def test_continuous_batching_admits_waiting_rows_as_others_finish():
    model = CountingLM()
    done = []
    new = decode_batch(model, [[10], [5, 20], [30], [40], [50]], pad_id=0, max_new_tokens=[5, 5, 5, 1, 5],
                       stop_ids=[12, 24, 32], temperature=0.0, batch_size=2, on_done=done.append)
    assert new == [[11, 12], [21, 22, 23, 24], [31, 32], [41], [51, 52, 53, 54, 55]]  # row 3: its own budget of 1
    assert sum(done) == 5
    # Forwards, by rows: prefill rows 0-1, a step of both; row 0 stops, a step of row 1; row 2's
    # prefill joins it, a step of both; both stop: prefill rows 3-4; row 3 is done at once (its
    # budget), and row 4 decodes alone.
    assert model.widths == [2, 2, 1, 1, 2, 2, 1, 1, 1, 1]


def test_a_sliding_window_cache_decodes_batch_after_batch():
    """Its layers keep their own window, which a join would have to cut alike: rows wait until the
    batch is empty."""
    model = CountingLM()
    model.config.layer_types, model.config.sliding_window = ["sliding_attention"], 8
    new = decode_batch(model, [[10], [5, 20], [30], [40]], pad_id=0, max_new_tokens=3, stop_ids=[12], temperature=0.0,
                       batch_size=2)
    assert new == [[11, 12], [21, 22, 23], [31, 32, 33], [41, 42, 43]]
    # Prefill rows 0-1, a step of both, a step of row 1 alone (row 0 stopped; row 2 waits), then rows 2-3.
    assert model.widths == [2, 2, 1, 2, 2, 2]


def test_each_row_is_charged_the_steps_it_took_part_in(monkeypatch):
    """A clock that ticks once per reading, so each charged window lasts 1: the admission goes to
    the 3 rows by prompt length (equal here), each step's sampling to the rows sampled, its forward
    to the rows still running. Rows of budgets 2, 8 and 4 (no stop token):
    row 0: admission 1/3 + step 1 (sampling 1/3, forward 1/3) + step 2's sampling 1/3 = 4/3;
    row 2: 1/3 + 2/3 + step 2 (1/3, forward of 2 rows 1/2) + step 3 (1/2 + 1/2) + step 4's sampling 1/2 = 10/3;
    row 1: 1/3 + 2/3 + 1/3 + 1/2 + 1 + step 4 (1/2, forward alone 1) + steps 5-7 (2 each) + step 8's sampling 1 = 34/3.
    A token-proportional split, or a forward charged to finished rows, gives other numbers."""
    from types import SimpleNamespace

    from agentark_utils import backends

    ticks = iter(range(1000))
    monkeypatch.setattr(backends, "time", SimpleNamespace(perf_counter=lambda: float(next(ticks))))
    seconds = [0.0] * 3
    new = decode_batch(CountingLM(), [[10], [20], [30]], pad_id=0, max_new_tokens=[2, 8, 4], stop_ids=[-1],
                       temperature=0.0, seconds=seconds)
    assert [len(row) for row in new] == [2, 8, 4]
    assert seconds == pytest.approx([4 / 3, 34 / 3, 10 / 3])
    assert sum(seconds) == pytest.approx(next(ticks) - 1)  # every window charged once, none lost


def test_sampling_takes_one_generator_for_all_rows_and_needs_one_for_every_sampled_row():
    import torch

    logits = torch.randn(4, 30, generator=torch.Generator().manual_seed(1)).bfloat16()
    drawn = sample_tokens(logits, 1.0, torch.Generator().manual_seed(0))
    assert drawn.shape == (4,) and ((drawn >= 0) & (drawn < 30)).all()
    assert sample_tokens(logits, [0.0, 0.0, 0.0, 0.0]).tolist() == logits.argmax(-1).tolist()  # greedy needs none
    with pytest.raises(ValueError, match="needs a generator"):
        sample_tokens(logits, [0.0, 0.7, 0.0, 0.0], [None] * 4)
    with pytest.raises(ValueError, match="not finite"):  # else searchsorted returns an id past the vocabulary
        sample_tokens(torch.full((1, 30), float("nan")), 1.0, torch.Generator())


def test_sampling_never_draws_a_token_of_probability_zero(monkeypatch):
    """At the top of the uniform's range u x total can round up to the CDF's end, past every token:
    the draw must stay on the last token with probability above 0, not fall on the vocabulary's end."""
    import torch

    logits = torch.tensor([[0.0, 1.0, 2.0, float("-inf"), float("-inf")]])
    monkeypatch.setattr(torch, "rand", lambda *args, **kwargs: torch.ones(1))  # the rounding's worst case
    assert sample_tokens(logits, 1.0, torch.Generator()).tolist() == [2]


def test_continuous_batching_leaves_every_row_as_it_is_alone(hf):
    """Rows of different lengths join a running batch of 3 as others stop (sampled, so that they stop
    at different steps), each left-padded to the batch's width: each generates what it does alone."""
    import torch

    conversations = [CONVERSATIONS[i % 3] + [{"role": "user", "content": "More" + "?" * (5 * i)}] for i in range(7)]
    prompts = [hf._prompt_ids(c) for c in conversations]
    seeds = row_seeds(conversations, 13)

    def decode(rows: list[int], stop_ids: list[int], batch_size=None) -> list[list[int]]:
        return decode_batch(hf.model, [prompts[i] for i in rows], pad_id=hf.tokenizer.pad_token_id,
                            max_new_tokens=12, stop_ids=stop_ids, temperature=1.0, batch_size=batch_size,
                            generators=[torch.Generator().manual_seed(seeds[i]) for i in rows])

    unstopped = decode(list(range(7)), [-1])
    stop_ids = sorted({unstopped[0][1], unstopped[1][4], unstopped[4][2]})
    streamed = decode(list(range(7)), stop_ids, batch_size=3)
    assert streamed == [decode([i], stop_ids)[0] for i in range(7)]
    assert len({len(row) for row in streamed}) > 2  # rows did stop at different steps


@pytest.mark.parametrize("temperature", [0.0, 1.0])
def test_the_in_place_cache_changes_no_output(hf, temperature):
    """Rows of different lengths that stop at different steps: every cache operation of decoding."""
    import torch

    conversations = CONVERSATIONS + [CONVERSATIONS[0]] * 2
    prompts = [hf._prompt_ids(c) for c in conversations]

    def decode(in_place: bool, stop_ids: list[int]) -> list[list[int]]:
        generators = [torch.Generator().manual_seed(s) for s in row_seeds(conversations, 3)]
        return decode_batch(hf.model, prompts, pad_id=hf.tokenizer.pad_token_id, max_new_tokens=12,
                            stop_ids=stop_ids, temperature=temperature, generators=generators, cache_in_place=in_place)

    unstopped = decode(False, hf.stop_ids)  # the random tiny model never ends a turn: stop on tokens it emits
    stop_ids = [unstopped[0][2], unstopped[1][6]]
    outputs = {in_place: decode(in_place, stop_ids) for in_place in (False, True)}
    assert outputs[True] == outputs[False]
    if temperature:  # greedy, the random model repeats one token; sampled rows leave the batch at different steps
        assert len({len(row) for row in outputs[True]}) > 2


@pytest.mark.parametrize("new_tokens", [2, 4])
def test_the_benchmark_counts_the_padding_that_decoding_steps_read(hf, new_tokens, monkeypatch):
    """Two prompts of different lengths decode together: each step reads both rows' caches at the
    longer row's width, so the shorter row's left padding is read and masked out at every step."""
    monkeypatch.syspath_prepend(str(ROOT / "benchmarks"))
    from agentark_utils import backends
    from common import TokenCounter

    prompts = [hf._prompt_ids(c) for c in CONVERSATIONS[:2]]
    short, long = sorted(map(len, prompts))
    assert short < long
    model = TokenCounter(hf.model)
    monkeypatch.setattr(backends, "prefill", model.timing_prefill(backends.prefill))  # as the benchmark times it
    decode_batch(model, prompts, pad_id=hf.tokenizer.pad_token_id, max_new_tokens=new_tokens, stop_ids=[-1],
                 temperature=0.0)
    steps = new_tokens - 1  # the first token comes from the prefill's logits
    assert len(model.steps) == steps
    assert model.kv_slots == sum(2 * (long + step) for step in range(1, steps + 1))
    assert model.kv_tokens == sum(short + long + 2 * step for step in range(1, steps + 1))
    assert model.kv_padding_share() == round(1 - model.kv_tokens / model.kv_slots, 3) > 0
    # The padding sits between the shared prefix and the shorter row's remainder: every column
    # holds a token of the longer row.
    assert model.kv_unused_column_slots == 0 and model.kv_unused_column_share() == 0


@pytest.mark.parametrize("temperature", [0.0, 1.0])
def test_prefix_sharing_changes_no_output_and_computes_each_prompt_once(hf, temperature, monkeypatch):
    monkeypatch.syspath_prepend(str(ROOT / "benchmarks"))
    import torch

    from common import TokenCounter  # benchmarks/common.py: the debate throughput benchmark counts the same way

    conversations = [CONVERSATIONS[1]] * 4 + [CONVERSATIONS[0]] * 3  # self-consistency-like calls
    prompts = [hf._prompt_ids(c) for c in conversations]
    outputs, counted = {}, {}
    for share in (False, True):
        model = TokenCounter(hf.model)
        generators = [torch.Generator().manual_seed(s) for s in row_seeds(conversations, 5)]
        outputs[share] = decode_batch(model, prompts, pad_id=hf.tokenizer.pad_token_id, max_new_tokens=1,
                                      stop_ids=hf.stop_ids, temperature=temperature, generators=generators,
                                      share_prefixes=share)
        counted[share] = model.tokens
    assert outputs[True] == outputs[False]
    longest = max(map(len, prompts))
    shared = _common_prefix(prompts)
    assert shared >= len(hf._prompt_ids([{"role": "user", "content": ""}])) - 6  # the system turn at least
    assert counted[False] == len(prompts) * longest  # every row, padded to the longest
    assert counted[True] == shared + 2 * (longest - shared)  # the shared prefix once, each distinct prompt once


@pytest.mark.parametrize("temperature", [0.0, 1.0])
def test_a_prefill_in_length_buckets_changes_no_output_and_skips_the_padding(hf, temperature, monkeypatch):
    """Prompts of skewed lengths (round 2 of a debate): a forward per length bucket gives the tokens
    of one padded forward, through fewer tokens."""
    monkeypatch.syspath_prepend(str(ROOT / "benchmarks"))
    import torch

    from agentark_utils import backends
    from common import TokenCounter

    conversations = [CONVERSATIONS[1] + [{"role": "assistant", "content": "56 - 5 + 11 = 62. " * 6},
                                         {"role": "user", "content": "Check it."}]] + CONVERSATIONS
    prompts = [hf._prompt_ids(c) for c in conversations]
    outputs, counted = {}, {}
    for cost in (10**9, 0):  # one forward; a forward per distinct length
        monkeypatch.setattr(backends, "PREFILL_BUCKET_COST_TOKENS", cost)
        model = TokenCounter(hf.model)
        generators = [torch.Generator().manual_seed(s) for s in row_seeds(conversations, 7)]
        outputs[cost] = decode_batch(model, prompts, pad_id=hf.tokenizer.pad_token_id, max_new_tokens=6,
                                     stop_ids=hf.stop_ids, temperature=temperature, generators=generators)
        counted[cost] = model.tokens
    assert outputs[0] == outputs[10**9]
    shared = _common_prefix(prompts)
    remainders = [len(p) - shared for p in prompts]
    steps = counted[10**9] - shared - len(prompts) * max(remainders)  # the decoding's tokens, the same in both
    assert counted[0] == shared + sum(remainders) + steps < counted[10**9]


class PastKeyValuesModel:
    """The model as transformers < 5.2x shows it: its forward takes the KV cache as `past_key_values`
    and, like 5.17, swallows any other keyword (a `cache=` would be dropped and decoding run uncached)."""

    def __init__(self, model):
        self.model, self.device, self.config = model, model.device, model.config

    def forward(self, input_ids=None, attention_mask=None, position_ids=None, past_key_values=None, use_cache=None,
                logits_to_keep=0, **ignored):
        return self.model(input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids,
                          cache=past_key_values, use_cache=use_cache, logits_to_keep=logits_to_keep)

    __call__ = forward


def test_decoding_passes_the_cache_under_the_name_the_model_takes(hf):
    """Greedy text through a `past_key_values`-only forward equals the model's own (it failed on 5.17)."""
    prompts = [hf._prompt_ids(c) for c in CONVERSATIONS]
    kwargs = dict(pad_id=hf.tokenizer.pad_token_id, max_new_tokens=8, stop_ids=hf.stop_ids, temperature=0.0)
    assert cache_kwarg(PastKeyValuesModel(hf.model)) == "past_key_values"
    assert decode_batch(PastKeyValuesModel(hf.model), prompts, **kwargs) == decode_batch(hf.model, prompts, **kwargs)
    with pytest.raises(TypeError, match="takes no `cache` or `past_key_values`"):
        cache_kwarg(lambda input_ids, **kwargs: None)  # it would swallow either name: decoding uncached


def test_hf_records_tokens_and_latency(hf):
    gens = hf.generate(CONVERSATIONS, temperature=0.0, max_new_tokens=12, seed=0)
    assert len(gens) == len(CONVERSATIONS)
    for conversation, gen in zip(CONVERSATIONS, gens):
        ids = hf.tokenizer.apply_chat_template(conversation, tokenize=True, add_generation_prompt=True, return_dict=True)
        expected = len(ids["input_ids"])
        assert gen.prompt_tokens == expected
        assert 1 <= gen.completion_tokens <= 12
        assert gen.latency_s > 0
    assert gens[1].prompt_tokens > gens[0].prompt_tokens


def test_hf_sampling_is_seeded(hf):
    a = hf.generate(CONVERSATIONS, temperature=1.0, max_new_tokens=10, seed=7)
    b = hf.generate(CONVERSATIONS, temperature=1.0, max_new_tokens=10, seed=7)
    c = hf.generate(CONVERSATIONS, temperature=1.0, max_new_tokens=10, seed=8)
    assert [g.text for g in a] == [g.text for g in b]
    assert [g.text for g in a] != [g.text for g in c]


def test_hf_samples_do_not_depend_on_batching(hf):
    """A conversation's sample is the same alone, in a small batch or in a full one."""
    together = HFBackend.__new__(HFBackend)
    together.__dict__.update(hf.__dict__)
    alone = HFBackend.__new__(HFBackend)
    alone.__dict__.update({**hf.__dict__, "batch_size": 1})
    conversations = CONVERSATIONS + CONVERSATIONS[:1]
    batched = together.generate(conversations, temperature=1.0, max_new_tokens=10, seed=3)
    single = alone.generate(conversations, temperature=1.0, max_new_tokens=10, seed=3)
    assert [g.text for g in batched] == [g.text for g in single]
    # The first conversation's own sample does not change when other conversations join the call.
    assert hf.generate(CONVERSATIONS[:1], temperature=1.0, max_new_tokens=10, seed=3)[0].text == batched[0].text


# Each case: logits of one row, temperature, the share of draws each token must get (exact softmax).
SAMPLING_CASES = {
    "uniform": ([0.0, 0.0, 0.0, 0.0], 1.0, [0.25, 0.25, 0.25, 0.25]),
    "skewed": ([2.0, 1.0, 0.0, -1.0], 1.0, None),
    "sharpened by a low temperature": ([1.0, 0.8, 0.0, -3.0], 0.2, None),
    "a token that can never be drawn": ([0.0, float("-inf"), 1.0, 0.5], 0.7, None),
}


@pytest.mark.parametrize("logits,temperature,expected", SAMPLING_CASES.values(), ids=SAMPLING_CASES.keys())
def test_sample_tokens_draws_from_the_softmax(logits, temperature, expected):
    import torch

    rows = 20000
    generators = [torch.Generator().manual_seed(i) for i in range(rows)]
    drawn = sample_tokens(torch.tensor([logits] * rows), temperature, generators)
    shares = torch.bincount(drawn, minlength=len(logits)).double() / rows
    expected = torch.tensor(expected) if expected else torch.softmax(torch.tensor(logits) / temperature, -1)
    assert torch.allclose(shares, expected.double(), atol=4 * (0.25 / rows) ** 0.5)  # 4 standard errors at most
    assert all(shares[i] == 0 for i, p in enumerate(expected) if p == 0)


def test_sample_tokens_greedy_is_the_argmax_and_a_draw_follows_its_row_generator():
    import torch

    logits = torch.randn(6, 50, generator=torch.Generator().manual_seed(0))
    assert sample_tokens(logits, 0.0).tolist() == logits.argmax(-1).tolist()
    drawn = sample_tokens(logits, 1.0, [torch.Generator().manual_seed(seed) for seed in range(6)])
    order = [5, 3, 1, 0, 2, 4]  # the same rows and generators in another order draw the same tokens
    shuffled = sample_tokens(logits[order], 1.0, [torch.Generator().manual_seed(seed) for seed in order])
    assert shuffled.tolist() == drawn[order].tolist()


def test_rows_that_stop_early_leave_every_other_row_as_it_is_alone(hf):
    """Rows stop at different steps, first ones first, so later rows move into their cache slots
    (`kv_cache.drop_rows`); each row still generates what it generates alone. Sampled: greedy, the
    random model repeats one token in every row, and no row would stop before another."""
    import torch

    conversations = [CONVERSATIONS[i % 3] + [{"role": "user", "content": "Again" + "!" * i}] for i in range(6)]
    prompts = [hf._prompt_ids(c) for c in conversations]
    seeds = row_seeds(conversations, 11)

    def decode(rows: list[int], stop_ids: list[int]) -> list[list[int]]:
        return decode_batch(hf.model, [prompts[i] for i in rows], pad_id=hf.tokenizer.pad_token_id, max_new_tokens=10,
                            stop_ids=stop_ids, temperature=1.0,
                            generators=[torch.Generator().manual_seed(seeds[i]) for i in rows])

    unstopped = decode(list(range(6)), [-1])
    stop_ids = sorted({unstopped[0][1], unstopped[2][3], unstopped[3][5]})
    together = decode(list(range(6)), stop_ids)
    assert together == [decode([i], stop_ids)[0] for i in range(6)]
    assert len({len(row) for row in together}) > 1  # the rows did stop at different steps


def test_calls_run_together_give_what_each_gives_alone_and_share_their_prompt(hf, monkeypatch):
    """The debate's baselines and round 1 read one prompt: run together, it is prefilled once."""
    from agentark_utils import backends
    from agentark_utils.backends import Call, generate_calls

    monkeypatch.syspath_prepend(str(ROOT / "benchmarks"))
    from common import TokenCounter

    prompt = CONVERSATIONS[1]
    calls = [Call([prompt], 0.0, 3, seed=0, desc="greedy"), Call([prompt] * 3, 1.0, 6, seed=1, desc="sampled"),
             Call([], 1.0, 6, seed=2, desc="none"), Call([CONVERSATIONS[0]] * 2, 0.7, 4, seed=3, desc="other")]
    alone = [hf.generate(c.conversations, temperature=c.temperature, max_new_tokens=c.max_new_tokens, seed=c.seed)
             for c in calls]
    # Batches of 2: the greedy row, first in, ends after 3 tokens, and a sampled row joins the other
    # sampled row mid-decoding (`kv_cache.join_rows`).
    from agentark_utils import kv_cache

    joins, join_rows = [], kv_cache.join_rows
    monkeypatch.setattr(kv_cache, "join_rows", lambda *args: joins.append(1) or join_rows(*args))
    small = HFBackend.__new__(HFBackend)
    small.__dict__.update({**hf.__dict__, "batch_size": 2})
    assert [[g.text for g in gens] for gens in generate_calls(small, calls)] == [[g.text for g in gens] for gens in alone]
    assert joins  # rows did join a running batch
    model, hf.model = hf.model, TokenCounter(hf.model)
    monkeypatch.setattr(backends, "prefill", hf.model.timing_prefill(backends.prefill))
    try:
        together = generate_calls(hf, calls)
        prefilled = hf.model.prefill_tokens
    finally:
        hf.model = model
    assert [[g.text for g in gens] for gens in together] == [[g.text for g in gens] for gens in alone]
    assert [len(gens) for gens in together] == [1, 3, 0, 2]
    assert prefilled <= len(hf._prompt_ids(prompt)) + len(hf._prompt_ids(CONVERSATIONS[0]))  # each prompt once


def test_row_seeds_differ_between_calls_and_between_equal_conversations():
    same = [CONVERSATIONS[0]] * 3
    seeds = row_seeds(same, seed=1)
    assert len(set(seeds)) == 3  # k self-consistency samples of one prompt are k streams
    assert not set(seeds) & set(row_seeds(same, seed=2))  # another call (e.g. a debate round) shares none
    assert row_seeds(CONVERSATIONS[1:2] + same, seed=1)[1:] == seeds  # independent of the other rows


def test_hf_finish_reason(hf):
    (cut,) = hf.generate(CONVERSATIONS[:1], temperature=0.0, max_new_tokens=2, seed=0)
    assert cut.finish_reason == "length" and cut.completion_tokens == 2
    stopped = Generation("x", 3, 2, 0.1)
    assert stopped.finish_reason == "stop"


def test_unknown_model_names_every_place_tried(monkeypatch, tmp_path):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    params = ModelParams(teacher="no-org/no-such-model", student="x")
    with pytest.raises(ModelNotFoundError) as error:
        make_backend(params)
    message = str(error.value)
    assert "no-org/no-such-model" in message
    assert "local directory" in message and "Hugging Face cache" in message and "HF_HUB_OFFLINE=1" in message
    (tmp_path / "empty").mkdir()
    with pytest.raises(ModelNotFoundError, match="has no config.json"):
        make_backend(ModelParams(teacher=str(tmp_path / "empty"), student="x"))


def test_cpu_path_never_imports_vllm(tiny_model_dir):
    code = (
        "import sys\n"
        "from agentark_utils import backends, debate, metrics, stages\n"
        f"backends.HFBackend({str(tiny_model_dir)!r}, dtype='float32', device='cpu')\n"
        "assert 'vllm' not in sys.modules, 'vllm was imported'\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


def test_vllm_backend_without_vllm_says_how_to_install():
    pytest.importorskip("torch")
    try:
        import vllm  # noqa: F401
    except ImportError:
        with pytest.raises(ImportError, match=r"pip install -e '\.\[vllm\]'"):
            make_backend(ModelParams(teacher="x", student="x", backend="vllm"))
    else:
        pytest.skip("vllm is installed here")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextmanager
def serving(model_dir):
    """A real OpenAI-compatible server (`transformers serve`) on loopback, serving `model_dir`;
    yields (process, base URL)."""
    port = _free_port()
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    proc = subprocess.Popen(
        [os.path.join(os.path.dirname(sys.executable), "transformers"), "serve", str(model_dir),
         "--host", "127.0.0.1", "--port", str(port), "--device", "cpu", "--dtype", "float32"],
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=env,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        for _ in range(120):
            if proc.poll() is not None:
                pytest.fail(f"transformers serve exited: {proc.stderr.read().decode()[-2000:]}")
            try:
                urllib.request.urlopen(f"{url}/health", timeout=1)
                break
            except OSError:
                time.sleep(0.5)
        else:
            pytest.fail("transformers serve did not come up in 60 s")
        yield proc, f"{url}/v1"
    finally:
        proc.kill()
        proc.wait(timeout=30)


@pytest.fixture(scope="module")
def server(tiny_model_dir):
    with serving(tiny_model_dir) as (_, url):
        yield url


def test_openai_backend_against_a_real_loopback_server(server, tiny_model_dir, hf, monkeypatch):
    monkeypatch.setenv("OPENAI_API_KEY", "sk-test-secret")
    backend = make_backend(ModelParams(teacher=str(tiny_model_dir), student="x", backend="openai",
                                       openai_base_url=server, batch_size=2))
    assert isinstance(backend, OpenAIBackend)
    gens = backend.generate(CONVERSATIONS, temperature=0.0, max_new_tokens=8, seed=0)
    assert len(gens) == 3
    local = hf.generate(CONVERSATIONS, temperature=0.0, max_new_tokens=8, seed=0)
    for remote, here in zip(gens, local):
        assert remote.prompt_tokens == here.prompt_tokens  # the server applied the same chat template
        assert 1 <= remote.completion_tokens <= 8
        assert remote.latency_s > 0
    assert "sk-test-secret" not in repr(backend.__dict__)


# --- the openai backend over several endpoints -------------------------------------------------------------


def test_openai_backend_spreads_over_two_real_servers_and_survives_one_killed_mid_run(server, tiny_model_dir, hf):
    """24 conversations over two loopback servers; the second is SIGKILLed after its third answer.
    Every conversation gets exactly one generation, in order, with the same greedy text as HF."""
    conversations = [[{"role": "user", "content": f"Calculate {i} + {2 * i + 1}."}] for i in range(24)]
    expected = [g.text for g in hf.generate(conversations, temperature=0.0, max_new_tokens=6, seed=0)]
    with serving(tiny_model_dir) as (victim_proc, victim_url):
        backend = make_backend(ModelParams(teacher=str(tiny_model_dir), student="x", backend="openai",
                                           openai_base_url=[server, victim_url], batch_size=2))
        survivor, victim = backend.endpoints
        assert [survivor.url, victim.url] == [server, victim_url]
        # short backoffs: the dead endpoint's failed rounds come before the survivor drains the queue,
        # however slow a loaded machine makes the survivor
        backend.backoff_s = backend.max_backoff_s = 0.05
        for endpoint in backend.endpoints:
            endpoint.client = endpoint.client.with_options(timeout=20)  # no request hangs the test
            assert endpoint.client.max_retries == 0  # the backend retries, across endpoints
        create = victim.client.chat.completions.create
        sent, answered = [], []

        def answer_then_die(**kwargs):
            sent.append(kwargs)
            response = create(**kwargs)
            answered.append(response)
            if len(answered) == 3:  # die with the other slot's request in flight
                deadline = time.monotonic() + 5
                while victim.in_flight < 2 and time.monotonic() < deadline:
                    time.sleep(0.001)
                victim_proc.kill()
            return response

        victim.client.chat.completions.create = answer_then_die
        began = time.monotonic()
        with pytest.warns(RuntimeWarning, match=f"endpoint {victim_url} dropped"):
            gens = backend.generate(conversations, temperature=0.0, max_new_tokens=6, seed=0)
        assert time.monotonic() - began < 60
    assert victim_proc.poll() is not None  # it really died during the call
    assert [g.text for g in gens] == expected
    assert victim.dropped and not survivor.dropped
    assert victim.served >= 3 and survivor.served + victim.served == len(conversations)  # none twice, none lost
    assert len(sent) > victim.served  # requests the victim took and never answered, re-sent to the survivor


class StandIn:
    """A stand-in OpenAI client: `script(kwargs, n)` answers its n-th request (from 0) or raises."""

    def __init__(self, script):
        self.script, self.calls, self.lock = script, [], threading.Lock()
        self.chat = SimpleNamespace(completions=SimpleNamespace(create=self.create))

    def create(self, **kwargs):
        with self.lock:
            n = len(self.calls)
            self.calls.append((time.monotonic(), kwargs))
        outcome = self.script(kwargs, n)
        if isinstance(outcome, Exception):
            raise outcome
        choice = SimpleNamespace(message=SimpleNamespace(content=outcome), finish_reason="length")
        return SimpleNamespace(usage=SimpleNamespace(prompt_tokens=5, completion_tokens=2), choices=[choice])


def echo(kwargs, n):
    return f"{kwargs['messages'][-1]['content']}|{kwargs['seed']}"


def refused(*_):
    import openai

    return openai.APIConnectionError(request=None)


def http_error(status):
    import openai

    cls = {400: openai.BadRequestError, 429: openai.RateLimitError, 503: openai.InternalServerError}[status]
    return cls(f"HTTP {status}", response=SimpleNamespace(status_code=status, request=None, headers={}), body=None)


def stand_in_backend(*scripts, **options) -> OpenAIBackend:
    urls = [f"http://127.0.0.1:{9 + i}/v1" for i in range(len(scripts))]  # never contacted
    backend = OpenAIBackend("m", base_url=urls if len(urls) > 1 else urls[0], **options)
    for endpoint, script in zip(backend.endpoints, scripts):
        endpoint.client = StandIn(script)
    return backend


QUESTIONS = [[{"role": "user", "content": f"q{i}"}] for i in range(6)]


def test_openai_retries_with_exponential_backoff_and_asks_for_the_same_sample():
    outcomes = [refused(), http_error(503), http_error(429)]
    backend = stand_in_backend(lambda kwargs, n: outcomes[n] if n < 3 else echo(kwargs, n), concurrency=1,
                               backoff_s=0.05, max_failures=4)
    gens = backend.generate(QUESTIONS[:2], temperature=0.7, max_new_tokens=4, seed=1)
    seeds = row_seeds(QUESTIONS[:2], 1)
    assert [g.text for g in gens] == [f"q0|{seeds[0]}", f"q1|{seeds[1]}"]
    assert gens[0].finish_reason == "length"
    calls = backend.endpoints[0].client.calls
    assert [c[1]["seed"] for c in calls[:4]] == [seeds[0]] * 4  # every retry asks for the same sample
    gaps = [b[0] - a[0] for a, b in zip(calls, calls[1:4])]
    assert gaps[0] >= 0.05 and gaps[1] >= 0.1 and gaps[2] >= 0.2  # doubled after each failure
    assert backend.endpoints[0].failures == 0 and not backend.endpoints[0].dropped  # a success resets it


def test_openai_client_error_is_raised_at_once_with_the_endpoint():
    backend = stand_in_backend(lambda kwargs, n: http_error(400), concurrency=1)
    with pytest.raises(RuntimeError, match=r"http://127\.0\.0\.1:9/v1 refused the request with HTTP 400"):
        backend.generate(QUESTIONS, temperature=0.0, max_new_tokens=4, seed=0)
    assert len(backend.endpoints[0].client.calls) == 1


def test_openai_failing_endpoint_is_dropped_and_its_requests_go_elsewhere():
    backend = stand_in_backend(refused, echo, concurrency=2, backoff_s=0.01, max_failures=3)
    dying, healthy = backend.endpoints

    def after_the_drop(kwargs, n):  # the healthy endpoint answers only once the other is out
        deadline = time.monotonic() + 10
        while not dying.dropped and time.monotonic() < deadline:
            time.sleep(0.005)
        return echo(kwargs, n)

    healthy.client.script = after_the_drop
    with pytest.warns(RuntimeWarning, match="dropped after 3 failed rounds"):
        gens = backend.generate(QUESTIONS, temperature=0.0, max_new_tokens=4, seed=0)
    seeds = row_seeds(QUESTIONS, 0)
    assert [g.text for g in gens] == [f"q{i}|{s}" for i, s in enumerate(seeds)]
    assert dying.dropped and not healthy.dropped
    assert len(healthy.client.calls) == len(QUESTIONS)  # each conversation answered once: no duplicate
    assert 3 <= len(dying.client.calls) <= 4  # a burst of up to 2, then one probe per round
    tried = len(dying.client.calls)
    backend.generate(QUESTIONS, temperature=0.0, max_new_tokens=4, seed=1)
    assert len(dying.client.calls) == tried  # it stays out of the rotation


def test_openai_all_endpoints_dead_names_them_and_poison_requests_are_bounded():
    backend = stand_in_backend(refused, refused, concurrency=2, backoff_s=0.01, max_failures=2)
    with pytest.warns(RuntimeWarning), pytest.raises(RuntimeError) as error:
        backend.generate(QUESTIONS, temperature=0.0, max_new_tokens=4, seed=0)
    message = str(error.value)
    assert "every openai endpoint failed" in message and "6 of 6 conversations" in message
    assert "http://127.0.0.1:9/v1 (APIConnectionError" in message and "http://127.0.0.1:10/v1" in message

    def poisoned(kwargs, n):
        return http_error(503) if kwargs["messages"][-1]["content"] == "q3" else echo(kwargs, n)

    backend = stand_in_backend(poisoned, poisoned, concurrency=1, backoff_s=0.001, max_failures=100,
                               max_attempts=4)
    with pytest.raises(RuntimeError, match="conversation 3 failed 4 times"):
        backend.generate(QUESTIONS, temperature=0.0, max_new_tokens=4, seed=0)


def test_vllm_backend_runs_one_tensor_parallel_engine_with_prefix_caching(monkeypatch, tiny_model_dir):
    made = []

    class LLM:
        def __init__(self, **kwargs):
            made.append(kwargs)

        def chat(self, conversations, params, use_tqdm, chat_template_kwargs):
            made.append(chat_template_kwargs)
            return [SimpleNamespace(prompt_token_ids=[1] * 7, outputs=[SimpleNamespace(
                text=f"{c[-1]['content']}|{p.seed}", token_ids=[1, 2], finish_reason="length" if i else "stop")])
                for i, (c, p) in enumerate(zip(conversations, params))]

    monkeypatch.setitem(sys.modules, "vllm", SimpleNamespace(LLM=LLM, SamplingParams=SimpleNamespace))
    backend = make_backend(ModelParams(teacher=str(tiny_model_dir), student="x", backend="vllm", dtype="bfloat16",
                                       tensor_parallel_size=2))
    assert isinstance(backend, VLLMBackend)
    assert made == [{"model": str(tiny_model_dir), "dtype": "bfloat16", "tensor_parallel_size": 2,
                     "trust_remote_code": False, "enable_prefix_caching": True}]
    gens = backend.generate(QUESTIONS[:2], temperature=0.5, max_new_tokens=4, seed=3)
    assert made[-1] == {}  # thinking mode unset: the template's default
    seeds = row_seeds(QUESTIONS[:2], 3)
    assert [g.text for g in gens] == [f"q0|{seeds[0]}", f"q1|{seeds[1]}"]
    assert [g.finish_reason for g in gens] == ["stop", "length"]


def fake_vllm(monkeypatch, events: list) -> type:
    """A stand-in `vllm` whose engine records its shutdown and vLLM's distributed cleanup."""
    core = SimpleNamespace(shutdown=lambda: events.append("engine core shut down"))

    class LLM:
        def __init__(self, **kwargs):
            self.llm_engine = SimpleNamespace(engine_core=core)
            events.append("engine made")

    monkeypatch.setitem(sys.modules, "vllm", SimpleNamespace(LLM=LLM, SamplingParams=SimpleNamespace))
    monkeypatch.setitem(sys.modules, "vllm.distributed", SimpleNamespace(
        cleanup_dist_env_and_memory=lambda: events.append("distributed state and memory cleaned up")))
    return LLM


def test_closing_the_vllm_backend_shuts_its_engine_down(monkeypatch, tiny_model_dir):
    """`del` leaves a vLLM engine's GPU memory taken: close() shuts the engine core down and cleans
    up vLLM's distributed state and memory, once, also when left by a `with` block."""
    events = []
    fake_vllm(monkeypatch, events)
    with make_backend(ModelParams(teacher=str(tiny_model_dir), student="x", backend="vllm")) as backend:
        assert isinstance(backend, VLLMBackend) and events == ["engine made"]
    assert events == ["engine made", "engine core shut down", "distributed state and memory cleaned up"]
    assert backend.llm is None  # no reference left to the engine
    backend.close()
    assert len(events) == 3  # closing again does nothing


def test_closing_the_hf_backend_drops_its_model_and_empties_the_cuda_cache_only_on_cuda(monkeypatch):
    import torch

    emptied = []
    monkeypatch.setattr(torch.cuda, "empty_cache", lambda: emptied.append(True))
    for device, expected in (("cpu", []), ("cuda", [True])):
        backend = HFBackend.__new__(HFBackend)  # no weights needed to test the release
        backend.model = SimpleNamespace(device=torch.device(device))
        with backend:
            pass
        assert backend.model is None and emptied == expected
        backend.close()  # again: nothing left to release
        assert emptied == expected


def test_closing_the_openai_backend_closes_its_http_clients():
    backend = OpenAIBackend("m", base_url=["http://127.0.0.1:9/v1", "http://127.0.0.1:10/v1"])  # never contacted
    assert not any(e.client.is_closed() for e in backend.endpoints)
    with backend:
        pass
    assert all(e.client.is_closed() for e in backend.endpoints)


@pytest.mark.parametrize("raw, thinking, answer", [
    ("Final Answer: 5", "", "Final Answer: 5"),
    ("<think>\n2 + 3 is 5\n</think>\n\nFinal Answer: 5", "2 + 3 is 5", "Final Answer: 5"),
    ("<think>\n\n</think>\n\nFinal Answer: 5", "", "Final Answer: 5"),  # thinking switched off
    ("<think>\nstill thinking when the budget ran out", "still thinking when the budget ran out", ""),
    ("Okay. </think> Final Answer: 5", "Okay.", "Final Answer: 5"),  # the template opened the block
])
def test_split_thinking(raw, thinking, answer):
    assert split_thinking(raw) == (thinking, answer)


@pytest.mark.parametrize("enable_thinking, empty_block", [(None, False), (True, False), (False, True)])
def test_thinking_mode_reaches_the_chat_template(tiny_model_dir, tmp_path, enable_thinking, empty_block):
    """A Qwen3-style template gets `enable_thinking`; off, it closes an empty thinking block itself."""
    import shutil

    model_dir = tmp_path / "qwen3-style"
    shutil.copytree(tiny_model_dir, model_dir)
    backend = HFBackend(str(model_dir), dtype="float32", device="cpu", batch_size=2, enable_thinking=enable_thinking)
    backend.tokenizer.chat_template = QWEN3_STYLE_TEMPLATE
    prompt = backend.tokenizer.decode(backend._prompt_ids(CONVERSATIONS[0]))
    assert ("<think>\n\n</think>" in prompt) == empty_block
    (gen,) = backend.generate(CONVERSATIONS[:1], temperature=0.0, max_new_tokens=4, seed=0)
    assert gen.completion_tokens >= 1 and "<think>" not in gen.text


def test_hf_backend_hands_on_only_the_visible_answer(hf, monkeypatch):
    """Whatever the model thinks stays in `thinking`; the text graded and shown to peers is the answer."""
    from agentark_utils import backends

    monkeypatch.setattr(backends, "decode_batch",
                        lambda model, prompts, **kw: [[hf.stop_ids[0]] for _ in prompts])
    monkeypatch.setattr(hf.tokenizer, "decode", lambda ids, **kw: "<think>\nhmm, 2 + 3\n</think>\n\nFinal Answer: 5")
    (gen,) = hf.generate(CONVERSATIONS[:1], temperature=0.0, max_new_tokens=4, seed=0)
    assert gen.text == "Final Answer: 5" and gen.thinking == "hmm, 2 + 3"


def test_openai_backend_sends_the_thinking_mode(monkeypatch):
    sent = []

    def script(kwargs, n):
        sent.append(kwargs.get("extra_body"))
        return echo(kwargs, n)

    backend = stand_in_backend(script, enable_thinking=False)
    backend.generate(QUESTIONS[:1], temperature=0.0, max_new_tokens=4, seed=0)
    assert sent == [{"chat_template_kwargs": {"enable_thinking": False}}]
