"""Evaluate a model on test questions: one greedy generation each, graded, with cost."""

from __future__ import annotations

from agentark_utils import metrics
from agentark_utils.backends import make_backend
from agentark_utils.config import ModelParams
from agentark_utils.debate import graded_call, question_prompt
from agentark_utils.tasks import Question


def evaluate(model_ref: str, questions: list[Question], model_params: ModelParams, max_new_tokens: int,
             n_boot: int = 1000, seed: int = 0) -> tuple[list[dict], dict]:
    """Per-question rows (text, answer, status, tokens, latency) and their summary metrics."""
    backend = make_backend(model_params.model_copy(update={"student": model_ref}), role="student")
    gens = backend.generate([[{"role": "user", "content": question_prompt(q)}] for q in questions],
                            temperature=0.0, max_new_tokens=max_new_tokens, seed=seed, desc=f"evaluate {model_ref}")
    rows = [{"id": q.id, **graded_call(q, gen)} for q, gen in zip(questions, gens)]
    summary = metrics.summarize_calls([r["status"] for r in rows], [[r] for r in rows], n_boot, seed)
    return rows, summary
