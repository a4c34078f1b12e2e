"""Metrics: accuracy with bootstrap 95 % CIs, strict accuracy, unparsed rate, and cost per question."""

from __future__ import annotations

import math
from collections import Counter
from typing import Sequence

import numpy as np
import pandas as pd

from agentark_utils.answers import EXTRACTORS

SYSTEMS = ("single", "self_consistency", "debate")


def bootstrap_ci(values: Sequence[float], n_boot: int = 1000, seed: int = 0, level: float = 0.95) -> list[float]:
    """Percentile bootstrap CI of the mean."""
    data = np.asarray(values, dtype=float)
    if data.size == 0:
        return [float("nan"), float("nan")]
    rng = np.random.default_rng(seed)
    means = data[rng.integers(0, data.size, size=(n_boot, data.size))].mean(axis=1)
    tail = (1 - level) / 2 * 100
    return [float(np.percentile(means, tail)), float(np.percentile(means, 100 - tail))]


def system_calls(record: dict, system: str) -> list[dict]:
    """Every generation call a system made for one question."""
    if system == "single":
        return [record["single"]]
    if system == "self_consistency":
        return record["self_consistency"]["samples"]
    debate = record["debate"]
    calls = [c for round_calls in debate["rounds"] for c in round_calls]
    return calls + ([debate["summarizer"]] if debate["summarizer"] else [])


def system_outcome(record: dict, system: str) -> dict:
    if system == "single":
        return record["single"]
    if system == "self_consistency":
        return record["self_consistency"]
    return record["debate"]["final"]


def summarize_calls(outcomes: list[dict], calls: list[list[dict]], n_boot: int = 1000, seed: int = 0) -> dict:
    """Accuracy (flexible, with its CI, and strict), unparsed rate, cost per question, and how many
    calls each extractor read, from each question's outcome ({"status", "strict_status"}) and the
    generation calls spent on it.

    Records graded before strict grading existed lack its fields: their strict accuracy is NaN and
    their calls count under no extractor.
    """
    correct = [o["status"] == "correct" for o in outcomes]
    strict = [o.get("strict_status") for o in outcomes]
    n = max(len(outcomes), 1)
    prompt = sum(c["prompt_tokens"] for cs in calls for c in cs)
    generated = sum(c["completion_tokens"] for cs in calls for c in cs)
    fired = Counter(c["extractor"] for cs in calls for c in cs if "extractor" in c)
    return {
        "accuracy": float(np.mean(correct)) if outcomes else float("nan"),
        "ci95": bootstrap_ci(correct, n_boot, seed),
        "strict_accuracy": float(np.mean([s == "correct" for s in strict])) if outcomes and None not in strict
                           else float("nan"),
        "unparsed_rate": sum(o["status"] == "unparsed" for o in outcomes) / n,
        "tokens_per_question": (prompt + generated) / n,
        "generated_tokens_per_question": generated / n,
        "calls_per_question": sum(len(cs) for cs in calls) / n,
        "latency_s_per_question": sum(c["latency_s"] for cs in calls for c in cs) / n,
        # Flat keys, so tables and `dvc metrics show` get one column each; None: no extractor read an answer.
        **{f"extractor_{name}": fired[name] for name in EXTRACTORS},
        "extractor_none": fired[None],
    }


def summarize(records: list[dict], system: str, n_boot: int = 1000, seed: int = 0) -> dict:
    """`summarize_calls` for one system of the debate stage."""
    return summarize_calls([system_outcome(r, system) for r in records],
                           [system_calls(r, system) for r in records], n_boot, seed)


def wrong_to_right(record: dict) -> bool:
    """Some agent was wrong (or unparsed) in round 1 and correct in its final round."""
    rounds = record["debate"]["rounds"]
    return any(first["status"] != "correct" and last["status"] == "correct"
               for first, last in zip(rounds[0], rounds[-1]))


def debate_metrics(records: list[dict], n_boot: int = 1000, seed: int = 0) -> dict:
    """The debate stage's metrics.json: every system over all questions, and per split."""

    def block(subset: list[dict]) -> dict:
        out = {system: summarize(subset, system, n_boot, seed) for system in SYSTEMS}
        out["n_questions"] = len(subset)
        out["wrong_to_right_fraction"] = sum(map(wrong_to_right, subset)) / max(len(subset), 1)
        out["consensus_fraction"] = sum(r["debate"]["consensus_round"] is not None for r in subset) / max(len(subset), 1)
        return out

    result = block(records)
    splits = sorted({r["split"] for r in records})
    result["by_split"] = {split: block([r for r in records if r["split"] == split]) for split in splits}
    return result


def accuracy_by_round(records: list[dict]) -> pd.DataFrame:
    """Per debate round: mean agent accuracy and majority-vote accuracy.

    A question that stopped early on consensus keeps its last round's answers in later rounds.
    """
    from agentark_utils.debate import vote
    from agentark_utils.tasks import Question

    n_rounds = max(len(r["debate"]["rounds"]) for r in records)
    rows = []
    for k in range(n_rounds):
        agent, votes = [], []
        for r in records:
            question = Question.from_dict(r["question"])
            calls = r["debate"]["rounds"][min(k, len(r["debate"]["rounds"]) - 1)]
            agent.append(np.mean([c["status"] == "correct" for c in calls]))
            votes.append(vote(question, calls)["status"] == "correct")
        rows.append({"round": k + 1, "measure": "mean agent", "accuracy": float(np.mean(agent))})
        rows.append({"round": k + 1, "measure": "majority vote", "accuracy": float(np.mean(votes))})
    return pd.DataFrame(rows)


def systems_table(metrics: dict) -> pd.DataFrame:
    """One row per system: the numbers a reader compares."""
    return pd.DataFrame([{"system": s, **{k: v for k, v in metrics[s].items() if k != "ci95"},
                          "ci95_low": metrics[s]["ci95"][0], "ci95_high": metrics[s]["ci95"][1]}
                         for s in SYSTEMS])


def auroc(scores: Sequence[float], labels: Sequence[int]) -> float:
    """Area under the ROC curve: the probability that a random positive outscores a random
    negative (ties count half). NaN when either class is absent."""
    scores, labels = np.asarray(scores, dtype=float), np.asarray(labels, dtype=bool)
    pos, neg = scores[labels], scores[~labels]
    if pos.size == 0 or neg.size == 0:
        return float("nan")
    greater = (pos[:, None] > neg[None, :]).sum()
    ties = (pos[:, None] == neg[None, :]).sum()
    return float((greater + 0.5 * ties) / (pos.size * neg.size))


def mcnemar_p(only_a: int, only_b: int) -> float:
    """Exact two-sided McNemar test: p-value of `only_a` vs `only_b` discordant pairs under 50/50."""
    n = only_a + only_b
    if n == 0:
        return 1.0
    tail = sum(math.comb(n, i) for i in range(min(only_a, only_b) + 1)) / 2**n
    return min(1.0, 2 * tail)


def paired_comparison(model: Sequence[bool], base: Sequence[bool], n_boot: int = 1000, seed: int = 0) -> dict:
    """A model against the base on the same questions: accuracy difference with a paired bootstrap
    95 % CI, the discordant pairs and McNemar's exact p-value."""
    model, base = np.asarray(model, dtype=float), np.asarray(base, dtype=float)
    if model.shape != base.shape:
        raise ValueError(f"paired comparison needs the same questions: {model.size} vs {base.size} answers")
    gained, lost = int(((model == 1) & (base == 0)).sum()), int(((model == 0) & (base == 1)).sum())
    return {"difference": float((model - base).mean()) if model.size else float("nan"),
            "ci95": bootstrap_ci(model - base, n_boot, seed), "gained": gained, "lost": lost,
            "mcnemar_p": mcnemar_p(gained, lost)}


def accuracy_by_stratum(questions: Sequence, correct: Sequence[bool], level: float = 0.95) -> pd.DataFrame:
    """Accuracy per difficulty stratum (`Question.metadata["stratum"]`, "all" where a question has
    none): one row per stratum with n, accuracy and its Wilson score interval.

    The Wilson interval is computed in closed form; it equals scipy's
    `binomtest(k, n).proportion_ci(level, method="wilson")`, without needing scipy, and unlike the
    bootstrap it stays inside [0, 1] and is not [1, 1] for a small stratum that is all correct.
    """
    from statistics import NormalDist

    if len(questions) != len(correct):
        raise ValueError(f"{len(questions)} questions but {len(correct)} correctness flags")
    z = NormalDist().inv_cdf((1 + level) / 2)
    table = pd.DataFrame({"stratum": [q.metadata.get("stratum", "all") for q in questions],
                          "correct": [bool(c) for c in correct]})
    rows = []
    for stratum, group in table.groupby("stratum", sort=True):
        n, k = len(group), int(group["correct"].sum())
        centre = (k + z**2 / 2) / (n + z**2)
        half = z * math.sqrt(k * (n - k) / n + z**2 / 4) / (n + z**2)
        rows.append({"stratum": stratum, "n": n, "accuracy": k / n,
                     "ci_low": max(0.0, centre - half), "ci_high": min(1.0, centre + half)})
    return pd.DataFrame(rows, columns=["stratum", "n", "accuracy", "ci_low", "ci_high"])
