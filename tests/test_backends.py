import os
import socket
import subprocess
import sys
import time
import urllib.request

import pytest

from agentark_utils.backends import (Generation, HFBackend, OpenAIBackend, _common_prefix, decode_batch, make_backend,
                                     row_seeds)
from agentark_utils.config import ModelParams
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
    """A stand-in causal LM whose next token is always its last input token + 1, recording batch widths."""

    device = "cpu"

    def __init__(self):
        from transformers import LlamaConfig

        self.config = LlamaConfig(num_hidden_layers=1, hidden_size=8, num_attention_heads=2, vocab_size=64)
        self.widths: list[int] = []

    def __call__(self, *, input_ids, **_):
        import torch

        self.widths.append(len(input_ids))
        logits = torch.nn.functional.one_hot(input_ids[:, -1:] + 1, self.config.vocab_size).float()
        return type("Output", (), {"logits": logits})


def test_decode_batch_drops_a_row_once_it_stops():

    model = CountingLM()
    new = decode_batch(model, [[10], [5, 20], [30]], pad_id=0, max_new_tokens=5, stop_ids=[12, 31], temperature=0.0)
    assert new == [[11, 12], [21, 22, 23, 24, 25], [31]]
    assert model.widths == [3, 2, 1, 1, 1]  # the third row left after step 1, the first after step 2


class TokenCounter:
    """Wraps a model and counts the input tokens (padding included) it is given."""

    def __init__(self, model):
        self.model, self.tokens = model, 0

    def __getattr__(self, name):
        return getattr(self.model, name)

    def __call__(self, *, input_ids, **kwargs):
        self.tokens += input_ids.numel()
        return self.model(input_ids=input_ids, **kwargs)


@pytest.mark.parametrize("temperature", [0.0, 1.0])
def test_prefix_sharing_changes_no_output_and_computes_each_prompt_once(hf, temperature):
    import torch

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


@pytest.fixture(scope="module")
def server(tiny_model_dir):
    """A real OpenAI-compatible server (`transformers serve`) on loopback, serving the tiny model."""
    port = _free_port()
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    proc = subprocess.Popen(
        [os.path.join(os.path.dirname(sys.executable), "transformers"), "serve", str(tiny_model_dir),
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
        yield f"{url}/v1"
    finally:
        proc.terminate()
        proc.wait(timeout=30)


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
