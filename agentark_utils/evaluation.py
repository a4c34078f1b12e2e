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


def evaluate_grid(models: dict[str, str], test_sets: dict[str, list[Question]], model_params: ModelParams,
                  max_new_tokens: int, n_boot: int = 1000, seed: int = 0, baseline: str = "base"):
    """Every model on every test set, and each model against `baseline` on the same questions.

    Returns (predictions, results): one row per answer, and one row per (model, test set) with the
    accuracy, its CI, the cost and the paired comparison with the baseline.
    """
    if baseline not in models:
        raise ValueError(f"the baseline {baseline!r} is not among the models {sorted(models)}")
    predictions, results = [], []
    for name, ref in models.items():
        for test_name, questions in test_sets.items():
            rows, summary = evaluate(ref, questions, model_params, max_new_tokens, n_boot, seed)
            predictions += [{"model": name, "test_set": test_name, **row} for row in rows]
            results.append({"model": name, "test_set": test_name, "n": len(rows), **summary})
    correct = {}
    for row in predictions:
        correct.setdefault((row["model"], row["test_set"]), []).append(row["status"] == "correct")
    for result in results:
        paired = metrics.paired_comparison(correct[(result["model"], result["test_set"])],
                                           correct[(baseline, result["test_set"])], n_boot, seed)
        result.update({f"vs_{baseline}_{key}": value for key, value in paired.items()})
    return predictions, results
