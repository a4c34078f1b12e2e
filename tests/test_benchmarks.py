"""The benchmark scripts still import against the package (they run outside the test suite)."""

import importlib
import sys
from types import SimpleNamespace

import pytest

from conftest import ROOT

SCRIPTS = sorted(p.stem for p in (ROOT / "benchmarks").glob("*.py") if p.stem != "common")


@pytest.mark.parametrize("name", SCRIPTS)
def test_benchmark_script_imports_and_has_a_main(name, monkeypatch):
    monkeypatch.syspath_prepend(str(ROOT / "benchmarks"))
    module = importlib.import_module(name)
    assert callable(module.main)
    sys.modules.pop(name, None)


def test_benchmark_questions_are_the_pipelines_test_questions(monkeypatch):
    """The cost benchmark scores students: its questions must be held out from their training."""
    from agentark_utils.config import load_params
    from agentark_utils.tasks import check_disjoint, load_task

    monkeypatch.syspath_prepend(str(ROOT / "benchmarks"))
    monkeypatch.chdir(ROOT)
    common = importlib.import_module("common")
    params, questions = common.setup(8)
    data = load_params(ROOT / "params.yaml").data
    train, test = load_task(data.task, data.n_train, data.n_test, seed=data.seed, path=data.path)
    assert [q.id for q in questions] == [q.id for q in test[:8]]
    check_disjoint(train, questions)
    sys.modules.pop("common", None)


def test_round_cache_keeps_exactly_the_agents_own_context(tiny_model_dir, monkeypatch):
    """The keep-or-rebuild bound skips, per later-round prompt, the tokens of the agent's own
    previous turns (what a kept cache would hold) and nothing of its peers' turn; batches follow
    `HFBackend.generate` (longest first, batch_size rows)."""
    from agentark_utils.backends import HFBackend

    monkeypatch.syspath_prepend(str(ROOT / "benchmarks"))
    round_cache = importlib.import_module("round_cache")
    backend = HFBackend(str(tiny_model_dir), dtype="float32", device="cpu", batch_size=2)
    own = [{"role": "user", "content": "What is 2 + 3?"}, {"role": "assistant", "content": "2 + 3 = 5. Final Answer: 5"}]
    peers = {"role": "user", "content": "Other agents answered 6 and 7. Revise your answer."}
    ids = backend._prompt_ids(own + [peers])
    kept = round_cache.kept_length(backend, own + [peers])
    text = backend.tokenizer.decode(ids[:kept])
    assert text.endswith("Final Answer: 5<|im_end|>\n") and "Other agents" not in text
    assert backend.tokenizer.decode(ids[kept:]).startswith("<|im_start|>user\nOther agents")

    short = own + [{"role": "user", "content": "Revise."}]
    batches = round_cache.later_round_batches(backend, [[short, own + [peers], short]])
    assert [len(batch) for batch in batches] == [2, 1]
    assert batches[0][0][0] == ids and batches[0][0][1] == kept  # the longest prompt first
    sys.modules.pop("round_cache", None)


def test_round_cache_captures_later_round_prompts_as_sent(tiny_model_dir, monkeypatch):
    """The debate appends each answer to the agent's context after the call: the captured prompts
    must be copies, ending with the peers' turn, not the answer that followed."""
    from agentark_utils.backends import HFBackend
    from agentark_utils.config import DebateParams
    from agentark_utils.debate import debate_chunk
    from agentark_utils.tasks import load_task

    monkeypatch.syspath_prepend(str(ROOT / "benchmarks"))
    round_cache = importlib.import_module("round_cache")
    backend = HFBackend(str(tiny_model_dir), dtype="float32", device="cpu", batch_size=8)
    _, questions = load_task("arith_mix", 0, 2, seed=0)
    cfg = DebateParams(n_agents=2, rounds=2, temperature=0.0, max_new_tokens=4, summarizer_max_new_tokens=4, early_stop=False)
    with round_cache.later_round_calls(backend) as calls:
        debate_chunk(questions, backend, cfg, seed=0, self_consistency=False)
    assert len(calls) == 1 and len(calls[0]) == 4  # round 2 only: 2 questions x 2 agents
    assert all([m["role"] for m in c] == ["user", "assistant", "user"] for c in calls[0])
    assert "generate" not in vars(backend)  # the wrapper is gone after the block
    sys.modules.pop("round_cache", None)


@pytest.mark.parametrize("cpuinfo, expected", [
    ("flags\t\t: fpu sse avx512f avx512_bf16 amx_bf16 amx_tile\n", ["avx512_bf16", "amx_bf16"]),
    ("flags\t\t: fpu sse avx512f avx512_bf16\nflags\t\t: fpu sse avx512f avx512_bf16\n", ["avx512_bf16"]),
    ("flags\t\t: fpu sse avx2 amx_bf16_extra\n", []),  # a flag counts whole, not as a prefix
    (None, []),  # no /proc/cpuinfo (not Linux)
])
def test_benchmarks_record_the_cpu_flags_that_decide_precision(cpuinfo, expected, tmp_path, monkeypatch):
    monkeypatch.syspath_prepend(str(ROOT / "benchmarks"))
    common = importlib.import_module("common")
    path = tmp_path / "cpuinfo"
    if cpuinfo is not None:
        path.write_text(cpuinfo)
    assert common.cpu_flags(path) == expected
    sys.modules.pop("common", None)


def test_precision_is_compared_on_each_batch_in_turn(monkeypatch):
    """fp32 and bf16 steps of the same batch run back to back after a bf16 warm-up, so drifting load
    hits both alike (it used to compare bf16 steps with fp32 times from an earlier epoch)."""
    monkeypatch.syspath_prepend(str(ROOT / "benchmarks"))
    training_step = importlib.import_module("training_step")

    class Recorder:
        def __init__(self):
            self.calls = []

        def step(self, batch, bf16=False):
            self.calls.append((batch["id"], bf16))
            return 2.0 if bf16 else 3.0

    stepper = Recorder()
    fp32, bf16 = training_step.precision_steps(stepper, [{"id": 0}, {"id": 1}])
    assert stepper.calls == [(0, True), (0, False), (0, True), (1, False), (1, True)]
    assert fp32 == [3.0, 3.0] and bf16 == [2.0, 2.0]
    sys.modules.pop("training_step", None)


@pytest.mark.parametrize("text, expected", [("1", 1), ("7", 7), ("0", None), ("-2", None), ("two", None)])
def test_benchmark_counts_must_be_at_least_one(text, expected, monkeypatch):
    import argparse

    monkeypatch.syspath_prepend(str(ROOT / "benchmarks"))
    common = importlib.import_module("common")
    if expected is None:
        with pytest.raises((argparse.ArgumentTypeError, ValueError)):
            common.at_least_one(text)
    else:
        assert common.at_least_one(text) == expected
    sys.modules.pop("common", None)


def test_token_counter_times_prefill_apart_from_decoding_steps_by_their_rows(monkeypatch):
    import torch

    monkeypatch.syspath_prepend(str(ROOT / "benchmarks"))
    common = importlib.import_module("common")
    model = lambda input_ids, **_: SimpleNamespace(logits=torch.zeros(*input_ids.shape, 4))  # noqa: E731
    counter = common.TokenCounter(model)

    def forward(shape):
        counter(input_ids=torch.zeros(shape, dtype=torch.long))

    prefill = counter.timing_prefill(lambda *shapes: [forward(shape) for shape in shapes])
    # Two prefills (the second: equal prompts, one token after their shared prefix), four steps.
    for shapes, prefilling in [([(3, 5)], True), ([(3, 1), (2, 1), (20, 1)], False), ([(1, 6), (4, 1)], True),
                               ([(70, 1)], False)]:
        prefill(*shapes) if prefilling else [forward(shape) for shape in shapes]
    assert counter.tokens == 15 + 3 + 2 + 20 + 6 + 4 + 70 and counter.prefill_tokens == 15 + 6 + 4
    assert [rows for rows, _ in counter.steps] == [3, 2, 20, 70] and counter.prefill_s > 0
    bands = counter.decoding()
    assert {name: band["steps"] for name, band in bands.items()} == {
        "1-4 rows": 2, "5-16 rows": 0, "17-64 rows": 1, "over 64 rows": 1}
    assert bands["5-16 rows"]["ms_per_step"] is None
    sys.modules.pop("common", None)


def test_pipeline_timing_resumes_keeping_the_times_of_stages_still_up_to_date(tmp_path, monkeypatch):
    monkeypatch.syspath_prepend(str(ROOT / "benchmarks"))
    pipeline = importlib.import_module("pipeline")
    out = tmp_path / "stages.json"
    out.write_text('{"stages_s": {"a": 100.0, "b": 50.0}}')
    monkeypatch.setattr(pipeline, "stage_names", lambda _: ["a", "b", "c"])
    monkeypatch.setattr(pipeline, "up_to_date", lambda stage: stage == "a")  # b changed since it was timed
    ran = []
    monkeypatch.setattr(pipeline, "timed", lambda command: ran.append(command[-1] if len(command) > 2 else "noop") or 7.0)
    monkeypatch.setattr(sys, "argv", ["pipeline.py", "--out", str(out), "--resume"])
    pipeline.main()
    result = __import__("json").loads(out.read_text())
    assert ran == ["b", "c", "noop"]
    assert result["stages_s"] == {"a": 100.0, "b": 7.0, "c": 7.0} and result["total_s"] == 114.0 and result["resumed"]
    sys.modules.pop("pipeline", None)


MASKS = {  # a decoding step's attention mask -> padding share, share in columns no row uses
    "no padding": ([[1, 1, 1], [1, 1, 1]], 0.0, 0.0),
    "a shorter row, padded after the shared prefix": ([[1, 1, 1, 1], [1, 0, 0, 1]], 0.25, 0.0),
    "a column no row uses": ([[0, 1, 1, 1], [0, 0, 1, 1]], 0.375, 0.25),
}


@pytest.mark.parametrize("mask, padding, unused", MASKS.values(), ids=MASKS.keys())
def test_token_counter_splits_the_padding_decoding_reads(mask, padding, unused, monkeypatch):
    import torch

    monkeypatch.syspath_prepend(str(ROOT / "benchmarks"))
    common = importlib.import_module("common")
    mask = torch.tensor(mask)
    counter = common.TokenCounter(lambda **kwargs: SimpleNamespace(logits=torch.zeros(len(mask), 1, 4)))
    counter(input_ids=torch.zeros(len(mask), 1, dtype=torch.long), attention_mask=mask)  # one decoding step
    assert (counter.kv_padding_share(), counter.kv_unused_column_share()) == (padding, unused)
    sys.modules.pop("common", None)
