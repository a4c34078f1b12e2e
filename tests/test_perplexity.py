"""Gold reasoning for arithmetic, and the reasoning-span NLL by hand."""

import math

import pytest
import torch

from agentark_utils.models import load_causal_lm
from agentark_utils.perplexity import (arithmetic_steps, gold_reasoning, paired_nll_difference, reasoning_nll,
                                      reasoning_perplexity)
from agentark_utils.tasks import Question


@pytest.mark.parametrize("expression, steps", [
    ("1 + 5", ["1 + 5 = 6"]),
    ("0 - 4 - 8", ["0 - 4 = -4", "-4 - 8 = -12"]),
    ("12 * 3", ["12 * 3 = 36"]),
    ("2 * 3 + 1", ["2 * 3 = 6", "6 + 1 = 7"]),  # left to right is right here
    ("2 + 3 * 4", None),  # ... but not here
    ("(1 + 2) - 3", None),
    ("7", None),
])
def test_arithmetic_steps(expression, steps):
    assert arithmetic_steps(expression) == steps


def test_gold_reasoning_prefers_the_datasets_own():
    q = Question("g", "gsm8k", "Q", "4", "math", reasoning="2 + 2 = 4")
    assert gold_reasoning(q) == "2 + 2 = 4"
    rg = Question("r", "t", "Calculate 0 - 4 - 8.", "-12", "number", metadata={"expression": "0 - 4 - 8"})
    assert gold_reasoning(rg) == "0 - 4 = -4\n\n-4 - 8 = -12"
    assert gold_reasoning(Question("n", "t", "Q", "1", "number")) is None


def test_reasoning_nll_counts_only_the_reasoning_tokens(tiny_model_dir):
    model, tok = load_causal_lm(str(tiny_model_dir), dtype="float32", device="cpu")
    nll, n = reasoning_nll(model, tok, "What is 1 + 5?", "1 + 5 = 6", "6")
    assert n == len(tok("1 + 5 = 6", add_special_tokens=False)["input_ids"])
    # by hand: the same sum from the full sequence's log-probabilities
    rendered = tok.apply_chat_template([{"role": "user", "content": "What is 1 + 5?"}], tokenize=False,
                                       add_generation_prompt=True)
    p = tok(rendered, add_special_tokens=False)["input_ids"]
    r = tok("1 + 5 = 6", add_special_tokens=False)["input_ids"]
    f = tok("\n\nFinal Answer: 6", add_special_tokens=False)["input_ids"]
    with torch.no_grad():
        logp = torch.log_softmax(model(input_ids=torch.tensor([p + r + f])).logits[0].float(), -1)
    expected = -sum(logp[len(p) + i - 1, t].item() for i, t in enumerate(r))
    assert nll == pytest.approx(expected, rel=1e-4)


def test_reasoning_perplexity_summary(tiny_model_dir):
    qs = [Question("a", "t", "Calculate 1 + 5.", "6", "number", metadata={"expression": "1 + 5"}),
          Question("b", "t", "Calculate 2 + 3 * 4.", "14", "number", metadata={"expression": "2 + 3 * 4"})]
    rows, summary = reasoning_perplexity(str(tiny_model_dir), qs, {q.id: q.question for q in qs}, device="cpu",
                                         n_boot=100)
    assert [r["id"] for r in rows] == ["a"] and summary["skipped"] == 1
    assert summary["perplexity"] == pytest.approx(math.exp(summary["avg_nll"]))
    assert summary["avg_nll"] == pytest.approx(rows[0]["nll_sum"] / rows[0]["tokens"])
    assert summary["avg_nll_ci95"][0] <= summary["avg_nll"] <= summary["avg_nll_ci95"][1]
    with pytest.raises(ValueError, match="no question has a gold reasoning"):
        reasoning_perplexity(str(tiny_model_dir), qs[1:], {"b": "Q"}, device="cpu")


def _nll_rows(per_token: list[float], tokens: list[int], ids=None) -> list[dict]:
    ids = ids or [f"q{i}" for i in range(len(per_token))]
    return [{"id": i, "nll_sum": p * n, "tokens": n, "nll_per_token": p} for i, p, n in zip(ids, per_token, tokens)]


BASE = [1.0 + (i % 7) * 0.4 for i in range(60)]  # questions differ a lot in how likely their reasoning is
TOKENS = [10 + (i % 5) * 6 for i in range(60)]


@pytest.mark.parametrize("model, difference, beyond_noise", [
    ([b - 0.5 for b in BASE], -0.5, True),        # lower on every question: pairing removes the spread
    ([b + 0.1 for b in BASE], 0.1, True),         # a small shift is still clear when it is the same everywhere
    (BASE, 0.0, False),                           # the same model
    ([b + (0.6 if i % 2 else -0.6) for i, b in enumerate(BASE)], None, False),  # noise around 0
])
def test_paired_nll_difference(model, difference, beyond_noise):
    out = paired_nll_difference(_nll_rows(model, TOKENS), _nll_rows(BASE, TOKENS), n_boot=400, seed=1)
    if difference is not None:
        assert out["difference"] == pytest.approx(difference)
    low, high = out["ci95"]
    # a constant shift makes every resample equal, up to rounding: compare with a tolerance
    assert low - 1e-9 <= out["difference"] <= high + 1e-9 and out["n_questions"] == 60
    assert (low > 0 or high < 0) == beyond_noise and (out["p"] < 0.05) == beyond_noise
    assert out["mde"] >= 0


def test_paired_nll_difference_pairs_by_question():
    # by id, not by position: the base in another order, the model on every third question only, each
    # exactly 0.3 below its own question's base NLL
    base = _nll_rows(BASE, TOKENS)[::-1]
    model = [dict(r, nll_sum=r["nll_sum"] - 0.3 * r["tokens"]) for r in _nll_rows(BASE, TOKENS)[::3]]
    out = paired_nll_difference(model, base, n_boot=100)
    assert out["n_questions"] == 20 and out["difference"] == pytest.approx(-0.3)
    # none in common is an error
    with pytest.raises(ValueError, match="no question in common"):
        paired_nll_difference(_nll_rows([1.0], [5], ids=["x"]), _nll_rows(BASE, TOKENS))
