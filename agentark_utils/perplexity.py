"""Reasoning-span perplexity of gold reasoning traces under each student (the paper's Table 1).

How likely each student finds a gold reasoning trace, teacher-forced, counting the reasoning
tokens only (not the prompt, not the final answer).

Gold reasoning: the dataset's own where it has one (GSM8K's rationale before '####', MATH
solutions); for reasoning-gym arithmetic, built from the expression, one step per operation, left
to right, in the same blank-line step format the prompts ask for.
"""

from __future__ import annotations

import math
import re

import numpy as np
import torch
import torch.nn.functional as F

from agentark_utils import arithmetic
from agentark_utils.prompts import render_chat, user_turn
from agentark_utils.steps import STEP_SEPARATOR
from agentark_utils.tasks import Question


def arithmetic_steps(expression: str) -> list[str] | None:
    """'0 - 4 - 8' -> ['0 - 4 = -4', '-4 - 8 = -12']: left to right. None when precedence or
    parentheses would make left to right wrong (a '*' after the first operation, or brackets)."""
    tokens = re.findall(r"\d+|[-+*]", expression)
    if "(" in expression or len(tokens) < 3 or len(tokens) % 2 == 0 or "*" in tokens[3::2]:
        return None
    steps, value = [], int(tokens[0])
    for op, number in zip(tokens[1::2], tokens[2::2]):
        new = arithmetic.evaluate(f"{value} {op} {number}")
        steps.append(f"{value} {op} {number} = {new}")
        value = new
    return steps


def gold_reasoning(q: Question) -> str | None:
    """The gold reasoning of a question, without its final answer; None if there is none."""
    if q.reasoning:
        return q.reasoning.strip()
    expression = q.metadata.get("expression")
    steps = arithmetic_steps(expression) if expression else None
    return STEP_SEPARATOR.join(steps) if steps else None


@torch.no_grad()
def reasoning_nll(model, tokenizer, prompt: str, reasoning: str, answer: str) -> tuple[float, int]:
    """(summed NLL, token count) of the reasoning span, given the chat-formatted prompt before it and
    the final-answer line after it (which is in the input but not counted)."""
    rendered = render_chat(tokenizer, [user_turn(prompt)])
    pieces = [tokenizer(text, add_special_tokens=False)["input_ids"]
              for text in (rendered, reasoning, f"{STEP_SEPARATOR}Final Answer: {answer}")]
    ids = torch.tensor([pieces[0] + pieces[1] + pieces[2]], device=model.device)
    start, end = len(pieces[0]), len(pieces[0]) + len(pieces[1])
    logits = model(input_ids=ids).logits[0, start - 1 : end - 1].float()
    nll = F.cross_entropy(logits, ids[0, start:end], reduction="sum")
    return float(nll), end - start


def reasoning_perplexity(model_ref: str, questions: list[Question], prompts: dict[str, str], device: str = "auto",
                         dtype: str = "float32", n_boot: int = 1000, seed: int = 0) -> tuple[list[dict], dict]:
    """Per question NLL of its gold reasoning, and the summary: token-weighted mean NLL, perplexity
    exp(NLL), and a bootstrap CI of that mean (questions resampled)."""
    from agentark_utils.models import load_causal_lm

    model, tokenizer = load_causal_lm(model_ref, dtype=dtype, device=device)
    rows = []
    for q in questions:
        reasoning = gold_reasoning(q)
        if reasoning is None:
            continue
        nll, n = reasoning_nll(model, tokenizer, prompts[q.id], reasoning, q.answer)
        rows.append({"id": q.id, "nll_sum": nll, "tokens": n, "nll_per_token": nll / n})
    if not rows:
        raise ValueError("no question has a gold reasoning trace to score")
    nll = np.array([r["nll_sum"] for r in rows])
    tokens = np.array([r["tokens"] for r in rows])
    mean_nll = float(nll.sum() / tokens.sum())
    # the token-weighted mean, resampled by question (a ratio estimator, so not metrics.bootstrap_ci)
    picks = np.random.default_rng(seed).integers(0, len(rows), size=(n_boot, len(rows)))
    ratios = nll[picks].sum(axis=1) / tokens[picks].sum(axis=1)
    summary = {"n_questions": len(rows), "skipped": len(questions) - len(rows), "avg_nll": mean_nll,
               "perplexity": math.exp(mean_nll),
               "avg_nll_ci95": [float(np.percentile(ratios, 2.5)), float(np.percentile(ratios, 97.5))]}
    return rows, summary


def paired_nll_difference(rows: list[dict], base_rows: list[dict], n_boot: int = 1000, seed: int = 0) -> dict:
    """A model's token-weighted mean NLL minus the base's, on the questions both scored (rows of
    `reasoning_perplexity`), with a paired bootstrap: each resample draws the same questions for
    both, so the per-question correlation narrows the interval that two separate CIs would give.
    Returns the difference, its 95 % CI, a two-sided bootstrap p, and `mde`, the smallest difference
    the run could detect (2.8 bootstrap standard errors: 5 % two-sided, 80 % power)."""
    base = {r["id"]: r for r in base_rows}
    pairs = [(r, base[r["id"]]) for r in rows if r["id"] in base]
    if not pairs:
        raise ValueError("the model and the base scored no question in common")
    nll, tokens = (np.array([[pair[side][key] for pair in pairs] for side in (0, 1)]) for key in ("nll_sum", "tokens"))
    difference = float(nll[0].sum() / tokens[0].sum() - nll[1].sum() / tokens[1].sum())
    picks = np.random.default_rng(seed).integers(0, len(pairs), size=(n_boot, len(pairs)))
    means = nll[:, picks].sum(axis=2) / tokens[:, picks].sum(axis=2)  # (model/base, resample)
    boot = means[0] - means[1]
    tail = min((boot <= 0).sum(), (boot >= 0).sum())
    return {"n_questions": len(pairs), "difference": difference,
            "ci95": [float(np.percentile(boot, 2.5)), float(np.percentile(boot, 97.5))],
            "p": min(1.0, 2 * (tail + 1) / (n_boot + 1)), "mde": float(2.8 * boot.std(ddof=1))}
