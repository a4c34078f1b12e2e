"""Evaluation of models on test sets, and the headline table.

One greedy generation per question, graded, with cost; the headline table puts the debate stage's
systems and the students side by side, paired."""

from __future__ import annotations

import pandas as pd

from agentark_utils import metrics
from agentark_utils.backends import Generation, make_backend
from agentark_utils.config import ModelParams
from agentark_utils.debate import graded_call
from agentark_utils.prompts import question_prompt
from agentark_utils.tasks import OOD_PREFIX, Question


def greedy_answers(models: dict[str, str], prompts: list[str], model_params: ModelParams, max_new_tokens: int,
                   seed: int = 0, desc: str = "answer") -> dict[str, list[Generation]]:
    """Each model answers every prompt once, greedily, in one batched call: {model name: generations}.

    A model is loaded once and closed (its memory freed, a vLLM engine shut down) before the next
    one loads.
    """
    answers = {}
    for name, ref in models.items():
        with make_backend(model_params.model_copy(update={"student": ref}), role="student") as backend:
            answers[name] = backend.generate([[{"role": "user", "content": p}] for p in prompts], temperature=0.0,
                                             max_new_tokens=max_new_tokens, seed=seed, desc=f"{desc} {name}")
    return answers


def evaluate_grid(models: dict[str, str], test_sets: dict[str, list[Question]], model_params: ModelParams,
                  max_new_tokens: int, seed: int = 0):
    """Every model on every test set: (predictions, results), one row per answer and one row per
    (model, test set) with the accuracy, its CI, the strict accuracy and the cost."""
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
    return predictions, results


def versus(predictions: list[dict], model: str, baseline: str = "base") -> dict:
    """`model` against `baseline` on the questions both answered (`evaluate_grid`'s predictions of
    one test set): the paired comparison with its power (`metrics.paired_with_power`) and how many
    answers changed (`metrics.changed_answers`)."""
    rows = {name: sorted((r for r in predictions if r["model"] == name), key=lambda r: r["id"])
            for name in (model, baseline)}
    changed = metrics.changed_answers(rows[model], rows[baseline])  # it checks both cover the same questions
    paired = metrics.paired_with_power(*([r["status"] == "correct" for r in rows[name]] for name in (model, baseline)))
    return {**paired, "answers_changed": changed["answer_changed"]}


def held_out_sets(records: list[dict], task: str) -> dict[str, list[dict]]:
    """The debate records of every held-out split, by test-set name: the in-domain test split
    first ("<task> (in-domain)"), then each out-of-domain family ("<family> (out-of-domain)")."""
    sets: dict[str, list[dict]] = {}
    for r in records:
        if r["split"] == "test":
            sets.setdefault(f"{task} (in-domain)", []).append(r)
        elif r["split"].startswith(OOD_PREFIX):
            sets.setdefault(f"{r['split'].removeprefix(OOD_PREFIX)} (out-of-domain)", []).append(r)
    return dict(sorted(sets.items(), key=lambda item: item[0].endswith("(out-of-domain)")))


# The debate stage's systems as the headline table names them.
DEBATE_SYSTEMS = {"single agent": "single", "single agent (sampled)": "single_sampled",
                  "self-consistency": "self_consistency", "debate (final answer)": "debate",
                  "debate (majority)": "debate_majority"}


def headline_table(held_out: dict[str, list[dict]], predictions: list[dict], results: list[dict],
                   baselines: tuple[str, ...] = ("base", "cot")) -> pd.DataFrame:
    """One row per (system or student, test set): accuracy with its Wilson CI, strict accuracy,
    generated tokens and wall time per question and their ratio to the debate's, how many of a
    student's answers differ from the base's, and a paired
    comparison (Newcombe CI, exact McNemar, the minimum detectable effect at the observed
    discordance) against each of `baselines` on the same questions.

    `held_out`: the debate records per test set (`held_out_sets`); `predictions`, `results`: the
    students' answers and summaries (`evaluate_grid`) on the same questions, in the same order.
    """
    keys = ("n", "accuracy", "ci95", "strict_accuracy", "unparsed_rate", "calls_per_question",
            "generated_tokens_per_question", "latency_s_per_question")
    rows, correct = [], {}
    for test_set, records in held_out.items():
        for name, system in DEBATE_SYSTEMS.items():
            ran = [r for r in records if metrics.system_outcome(r, system) is not None]
            if len(ran) < len(records):
                continue  # not run on every question of this set: no paired comparison possible
            summary = metrics.summarize(records, system)
            rows.append({"name": name, "kind": "debate stage", "test_set": test_set, **{k: summary[k] for k in keys}})
            correct[(name, test_set)] = [metrics.system_outcome(r, system)["status"] == "correct" for r in records]
    for result in results:
        rows.append({"name": result["model"], "kind": "student", "test_set": result["test_set"],
                     **{k: result[k] for k in keys}})
    for row in predictions:
        correct.setdefault((row["model"], row["test_set"]), []).append(row["status"] == "correct")
    table = pd.DataFrame(rows)
    debate = table[table["name"] == "debate (final answer)"].set_index("test_set")
    for column in ("generated_tokens_per_question", "latency_s_per_question"):
        table[f"debate / this ({column.removesuffix('_per_question')})"] = [
            debate[column].get(t, float("nan")) / v if v else float("nan") for t, v in zip(table["test_set"], table[column])]
    # how many greedy answers a student changed against the base (did training move it at all?)
    by_model: dict[tuple[str, str], list[dict]] = {}
    for row in predictions:
        by_model.setdefault((row["model"], row["test_set"]), []).append(row)
    table["answers_changed_vs_base"] = [
        metrics.changed_answers(by_model[(name, test_set)], by_model[("base", test_set)])["answer_changed"]
        if (name, test_set) in by_model and ("base", test_set) in by_model else float("nan")
        for name, test_set in zip(table["name"], table["test_set"])]
    for baseline in baselines:
        paired = []
        for name, test_set in zip(table["name"], table["test_set"]):
            if name == baseline or (baseline, test_set) not in correct:
                paired.append({})
                continue
            paired.append(metrics.paired_with_power(correct[(name, test_set)], correct[(baseline, test_set)]))
        for key in ("difference", "ci95", "gained", "lost", "mcnemar_p", "mde"):
            missing = [float("nan")] * 2 if key == "ci95" else float("nan")
            table[f"vs_{baseline}_{key}"] = [p.get(key, missing) for p in paired]
    return table
