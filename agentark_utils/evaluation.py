"""Evaluate models on test sets: one greedy generation per question, graded, with cost and paired tests."""

from __future__ import annotations

from agentark_utils import metrics
from agentark_utils.backends import Generation, make_backend
from agentark_utils.config import ModelParams
from agentark_utils.debate import graded_call, question_prompt
from agentark_utils.tasks import Question


def greedy_answers(models: dict[str, str], prompts: list[str], model_params: ModelParams, max_new_tokens: int,
                   seed: int = 0, desc: str = "answer") -> dict[str, list[Generation]]:
    """Each model answers every prompt once, greedily, in one batched call: {model name: generations}.

    A model is loaded once and freed before the next one loads.
    """
    answers = {}
    for name, ref in models.items():
        backend = make_backend(model_params.model_copy(update={"student": ref}), role="student")
        answers[name] = backend.generate([[{"role": "user", "content": p}] for p in prompts], temperature=0.0,
                                         max_new_tokens=max_new_tokens, seed=seed, desc=f"{desc} {name}")
        del backend
    return answers


def evaluate_grid(models: dict[str, str], test_sets: dict[str, list[Question]], model_params: ModelParams,
                  max_new_tokens: int, seed: int = 0, baseline: str | None = "base"):
    """Every model on every test set, and each model against `baseline` (if any) on the same questions.

    Returns (predictions, results): one row per answer, and one row per (model, test set) with the
    accuracy, its CI, the strict accuracy, the cost and the paired comparison with the baseline.
    """
    if baseline is not None and baseline not in models:
        raise ValueError(f"the baseline {baseline!r} is not among the models {sorted(models)}")
    predictions, results = [], []
    asked = [(test_name, q) for test_name, questions in test_sets.items() for q in questions]
    # Every test set in one call per model: fuller batches.
    answers = greedy_answers(models, [question_prompt(q) for _, q in asked], model_params, max_new_tokens, seed,
                             desc="evaluate")
    for name, gens in answers.items():
        for test_name in test_sets:
            rows = [{"id": q.id, **graded_call(q, gen)} for (t, q), gen in zip(asked, gens) if t == test_name]
            predictions += [{"model": name, "test_set": test_name, **row} for row in rows]
            summary = metrics.summarize_calls(rows, [[r] for r in rows])
            results.append({"model": name, "test_set": test_name, "n": len(rows), **summary})
    if baseline is None:
        return predictions, results
    correct = {}
    for row in predictions:
        correct.setdefault((row["model"], row["test_set"]), []).append(row["status"] == "correct")
    for result in results:
        paired = metrics.paired_comparison(correct[(result["model"], result["test_set"])],
                                           correct[(baseline, result["test_set"])])
        result.update({f"vs_{baseline}_{key}": value for key, value in paired.items()})
    return predictions, results
