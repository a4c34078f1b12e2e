"""Metrics: accuracies, their intervals and paired comparisons, AUROC, cost.

Accuracy with Wilson 95 % CIs, paired differences with Newcombe's interval and McNemar's
exact test, AUROC with a question-level bootstrap CI, strict and flexible accuracy, unparsed rate,
cost per question, and how many answers two models give differently.

Accuracies are binomial proportions over a few dozen questions: a percentile bootstrap of them
collapses at such counts (2/32 correct gave [0, 0.156], a zero lower limit the data cannot
support), so they get score intervals. The bootstrap is kept for means that are not proportions.
"""

from __future__ import annotations

import math
from collections import Counter
from statistics import NormalDist
from typing import Sequence

import numpy as np
import pandas as pd

from agentark_utils.answers import EXTRACTORS, answer_key, vote
from agentark_utils.tasks import Question

# The debate stage's systems: single agent (greedy, and sampled at the debate's temperature),
# self-consistency (held-out splits only), the debate's final answer and its final-round majority.
SYSTEMS = ("single", "single_sampled", "self_consistency", "debate", "debate_majority")


def bootstrap_ci(values: Sequence[float], n_boot: int = 1000, seed: int = 0, level: float = 0.95) -> list[float]:
    """Percentile bootstrap CI of the mean, for scores that are not proportions (F1, ROUGE).

    Accuracies take `wilson_ci`, paired accuracy differences `paired_difference_ci`.
    """
    data = np.asarray(values, dtype=float)
    if data.size == 0:
        return [float("nan"), float("nan")]
    rng = np.random.default_rng(seed)
    means = data[rng.integers(0, data.size, size=(n_boot, data.size))].mean(axis=1)
    tail = (1 - level) / 2 * 100
    return [float(np.percentile(means, tail)), float(np.percentile(means, 100 - tail))]


def _z(level: float) -> float:
    """The two-sided standard normal quantile of a confidence level (1.95996... at 0.95)."""
    return NormalDist().inv_cdf(0.5 + level / 2)


def wilson_ci(successes: int, n: int, level: float = 0.95) -> list[float]:
    """Wilson score interval of a binomial proportion successes / n; NaNs when n is 0.

    Newcombe (1998), "Two-sided confidence intervals for the single proportion", method 3.
    """
    if n == 0:
        return [float("nan"), float("nan")]
    z2 = _z(level) ** 2
    p = successes / n
    centre = (p + z2 / (2 * n)) / (1 + z2 / n)
    half = math.sqrt(z2 * (p * (1 - p) / n + z2 / (4 * n * n))) / (1 + z2 / n)
    # the limits are exactly 0 at successes == 0 and 1 at successes == n; rounding may overshoot
    return [max(0.0, centre - half), min(1.0, centre + half)]


def paired_difference_ci(both: int, only_a: int, only_b: int, neither: int, level: float = 0.95) -> list[float]:
    """CI of p_a - p_b for two proportions measured on the same n items, from the 2x2 counts.

    Newcombe (1998), "Improved confidence intervals for the difference between binomial
    proportions based on paired data", method 10: the Wilson limits of p_a and p_b combined
    square-and-add, with the correlation of the pairs (phi, continuity-corrected) subtracted.
    NaNs when n is 0.
    """
    n = both + only_a + only_b + neither
    if n == 0:
        return [float("nan"), float("nan")]
    a, b = both + only_a, both + only_b
    p_a, p_b = a / n, b / n
    lo_a, hi_a = wilson_ci(a, n, level)
    lo_b, hi_b = wilson_ci(b, n, level)
    margins = a * (n - a) * b * (n - b)
    association = both * neither - only_a * only_b
    # Newcombe's correction: a positive association is shrunk by n/2 (and floored at 0), a
    # negative one is kept; phi is 0 when a margin is empty (the correlation is undefined).
    corrected = max(association - n / 2, 0.0) if association > 0 else association
    phi = corrected / math.sqrt(margins) if margins else 0.0
    d = p_a - p_b
    # max(0, .): the radicands are >= 0 for |phi| <= 1, but rounding can dip below at phi = 1
    lower = d - math.sqrt(max(0.0, (p_a - lo_a) ** 2 - 2 * phi * (p_a - lo_a) * (hi_b - p_b) + (hi_b - p_b) ** 2))
    upper = d + math.sqrt(max(0.0, (p_b - lo_b) ** 2 - 2 * phi * (p_b - lo_b) * (hi_a - p_a) + (hi_a - p_a) ** 2))
    return [max(-1.0, lower), min(1.0, upper)]


def system_calls(record: dict, system: str) -> list[dict]:
    """Every generation call a system made for one question."""
    if system in ("single", "single_sampled"):
        return [record[system]]
    if system == "self_consistency":
        return record["self_consistency"]["samples"]
    debate = record["debate"]
    calls = [c for round_calls in debate["rounds"] for c in round_calls]
    return calls + ([debate["summarizer"]] if debate["summarizer"] and system == "debate" else [])


def system_outcome(record: dict, system: str) -> dict | None:
    """A system's graded answer to one question; None where the system did not run on it."""
    if system in ("single", "single_sampled"):
        return record.get(system)
    if system == "self_consistency":
        return record.get("self_consistency")
    return record["debate"]["final" if system == "debate" else "majority"]


def summarize_calls(outcomes: list[dict], calls: list[list[dict]]) -> dict:
    """Accuracy (flexible, with its Wilson 95 % CI, and strict), unparsed rate, cost per question, and
    how many calls each extractor read, from each question's outcome ({"status", "strict_status"})
    and the generation calls spent on it.

    Records graded before strict grading existed lack its fields: their strict accuracy is NaN and
    their calls count under no extractor.
    """
    correct = sum(o["status"] == "correct" for o in outcomes)
    strict = [o.get("strict_status") for o in outcomes]
    n = max(len(outcomes), 1)
    prompt = sum(c["prompt_tokens"] for cs in calls for c in cs)
    generated = sum(c["completion_tokens"] for cs in calls for c in cs)
    fired = Counter(c["extractor"] for cs in calls for c in cs if "extractor" in c)
    return {
        "accuracy": correct / len(outcomes) if outcomes else float("nan"),
        "ci95": wilson_ci(correct, len(outcomes)),
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


def summarize(records: list[dict], system: str) -> dict:
    """`summarize_calls` for one system of the debate stage, over the questions it ran on (n)."""
    ran = [r for r in records if system_outcome(r, system) is not None]
    return {"n": len(ran), **summarize_calls([system_outcome(r, system) for r in ran],
                                             [system_calls(r, system) for r in ran])}


def wrong_to_right(record: dict) -> bool:
    """Some agent was wrong (or unparsed) in round 1 and correct in its final round."""
    rounds = record["debate"]["rounds"]
    return any(first["status"] != "correct" and last["status"] == "correct"
               for first, last in zip(rounds[0], rounds[-1]))


def debate_metrics(records: list[dict]) -> dict:
    """The debate stage's metrics.json: every system over all questions, and per split."""

    def block(subset: list[dict]) -> dict:
        out = {system: summarize(subset, system) for system in SYSTEMS}
        out["n_questions"] = len(subset)
        out["wrong_to_right_fraction"] = sum(map(wrong_to_right, subset)) / max(len(subset), 1)
        out["consensus_fraction"] = sum(r["debate"]["consensus_round"] is not None for r in subset) / max(len(subset), 1)
        # where the debate's final answer came from: consensus, the summarizer, or the majority fallback
        out["final_source"] = dict(Counter(r["debate"]["final"].get("source", "unrecorded") for r in subset))
        # the calibration question: does the debate beat the greedy single agent on the same questions?
        single = [r["single"]["status"] == "correct" for r in subset]
        for system in ("debate", "debate_majority", "single_sampled"):
            ran = [system_outcome(r, system) for r in subset]
            if subset and None not in ran:
                out[f"{system}_vs_single"] = paired_with_power([o["status"] == "correct" for o in ran], single)
        return out

    result = block(records)
    splits = sorted({r["split"] for r in records})
    result["by_split"] = {split: block([r for r in records if r["split"] == split]) for split in splits}
    return result


def accuracy_by_round(records: list[dict]) -> pd.DataFrame:
    """Per debate round: mean agent accuracy and majority-vote accuracy.

    A question that stopped early on consensus keeps its last round's answers in later rounds.
    """
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
    negative (ties count half). NaN when either class is absent.

    Computed as the Mann-Whitney U of the positives from average ranks: O(n log n) time and O(n)
    memory, where comparing every positive with every negative needs n_pos * n_neg cells.
    """
    scores, labels = np.asarray(scores, dtype=float), np.asarray(labels, dtype=bool)
    n_pos = int(labels.sum())
    n_neg = labels.size - n_pos
    if n_pos == 0 or n_neg == 0:
        return float("nan")
    order = np.argsort(scores, kind="stable")
    ordered = scores[order]
    # runs of equal scores share the mean of the 1-based ranks they span: a tie counts half
    starts = np.flatnonzero(np.r_[True, ordered[1:] != ordered[:-1]])
    ends = np.r_[starts[1:], ordered.size]
    ranks = np.empty(scores.size)
    ranks[order] = np.repeat((starts + 1 + ends) / 2, ends - starts)
    u = ranks[labels].sum() - n_pos * (n_pos + 1) / 2
    return float(u / (n_pos * n_neg))


def mcnemar_p(only_a: int, only_b: int) -> float:
    """Exact two-sided McNemar test: p-value of `only_a` vs `only_b` discordant pairs under 50/50."""
    n = only_a + only_b
    if n == 0:
        return 1.0
    tail = sum(math.comb(n, i) for i in range(min(only_a, only_b) + 1)) / 2**n
    return min(1.0, 2 * tail)


def _binomial_pmf(d: int, p: float) -> np.ndarray:
    """P(X = k) for k = 0..d, X ~ Binomial(d, p)."""
    k = np.arange(d + 1)
    if p <= 0 or p >= 1:
        return (k == (0 if p <= 0 else d)).astype(float)
    log_comb = np.array([math.lgamma(d + 1) - math.lgamma(i + 1) - math.lgamma(d - i + 1) for i in k])
    return np.exp(log_comb + k * math.log(p) + (d - k) * math.log1p(-p))


def mcnemar_power(n: int, discordance: float, difference: float, alpha: float = 0.05) -> float:
    """Power of the exact two-sided McNemar test (`mcnemar_p`) at level alpha, for n paired questions
    of which a share `discordance` is discordant, and a true accuracy difference `difference`.

    Given d discordant pairs, those the first model gets right are Binomial(d, (1 + diff/disc) / 2);
    the test rejects at the counts whose exact p-value is <= alpha. Summed over d ~ Binomial(n, disc).
    """
    if not 0 <= abs(difference) <= discordance <= 1:
        raise ValueError(f"need |difference| <= discordance <= 1, got {difference} and {discordance}")
    share = 0.5 if discordance == 0 else (1 + difference / discordance) / 2
    power = 0.0
    for d, p_d in enumerate(_binomial_pmf(n, discordance)):
        if p_d < 1e-12 or d == 0:
            continue
        null_cdf = np.cumsum(_binomial_pmf(d, 0.5))
        lower = np.nonzero(2 * null_cdf <= alpha)[0]  # b with an exact two-sided p-value <= alpha, b < d/2
        if lower.size == 0:
            continue
        c = int(lower[-1])
        pmf = _binomial_pmf(d, share)
        power += p_d * (pmf[: c + 1].sum() + pmf[d - c :].sum())
    return float(power)


def minimum_detectable_effect(n: int, discordance: float, alpha: float = 0.05, power: float = 0.8) -> float:
    """The smallest accuracy difference the exact McNemar test detects with the given power, for n
    paired questions at the given discordance rate (NaN if even a difference equal to the
    discordance, every discordant pair one way, is not detected)."""
    if mcnemar_power(n, discordance, discordance, alpha) < power:
        return float("nan")
    low, high = 0.0, discordance
    for _ in range(40):  # bisection: power grows with the difference
        mid = (low + high) / 2
        low, high = (low, mid) if mcnemar_power(n, discordance, mid, alpha) >= power else (mid, high)
    return high


def paired_comparison(model: Sequence[bool], base: Sequence[bool]) -> dict:
    """A model against the base on the same questions: accuracy difference with Newcombe's paired
    95 % CI, the discordant pairs and McNemar's exact p-value."""
    model, base = np.asarray(model, dtype=bool), np.asarray(base, dtype=bool)
    if model.shape != base.shape:
        raise ValueError(f"paired comparison needs the same questions: {model.size} vs {base.size} answers")
    both, neither = int((model & base).sum()), int((~model & ~base).sum())
    gained, lost = int((model & ~base).sum()), int((~model & base).sum())
    return {"difference": (gained - lost) / model.size if model.size else float("nan"),
            "ci95": paired_difference_ci(both, gained, lost, neither), "gained": gained, "lost": lost,
            "mcnemar_p": mcnemar_p(gained, lost)}


def paired_with_power(model: Sequence[bool], base: Sequence[bool]) -> dict:
    """`paired_comparison`, plus the minimum detectable effect at the observed discordance (NaN
    where nothing was discordant or no effect is detectable)."""
    comparison = paired_comparison(model, base)
    discordance = (comparison["gained"] + comparison["lost"]) / max(len(model), 1)
    comparison["mde"] = minimum_detectable_effect(len(model), discordance) if discordance else float("nan")
    return comparison


def accuracy_by_stratum(questions: Sequence, correct: Sequence[bool]) -> pd.DataFrame:
    """Accuracy per difficulty stratum (`Question.metadata["stratum"]`, "all" where a question has
    none): one row per stratum with n, accuracy and its Wilson 95 % interval."""
    if len(questions) != len(correct):
        raise ValueError(f"{len(questions)} questions but {len(correct)} correctness flags")
    table = pd.DataFrame({"stratum": [q.metadata.get("stratum", "all") for q in questions],
                          "correct": [bool(c) for c in correct]})
    rows = []
    for stratum, group in table.groupby("stratum", sort=True):
        n, k = len(group), int(group["correct"].sum())
        low, high = wilson_ci(k, n)
        rows.append({"stratum": stratum, "n": n, "accuracy": k / n, "ci_low": low, "ci_high": high})
    return pd.DataFrame(rows, columns=["stratum", "n", "accuracy", "ci_low", "ci_high"])


def clustered_auroc(scores: dict[str, Sequence[float]], labels: Sequence[int], clusters: Sequence,
                    n_boot: int = 1000, seed: int = 0, level: float = 0.95, reference: str | None = None) -> pd.DataFrame:
    """AUROC of each named score against the same labels, with a cluster (question-level) percentile
    bootstrap CI: a resample draws whole clusters with replacement and takes the AUROC over all their
    items. The steps of one question are not independent (they share its traces and its difficulty),
    so resampling steps would give intervals that are too narrow.

    Every score is computed on the same resamples, so with a `reference` score each row also gets the
    paired "difference" AUROC(reference) - AUROC(this) and its interval: the reference beats a score
    beyond noise when that interval's lower limit is above 0. Resamples that miss a class (AUROC
    undefined) are left out of the percentiles. One row per score, in the given order.
    """
    labels, clusters = np.asarray(labels, dtype=bool), np.asarray(clusters)
    values = {name: np.asarray(s, dtype=float) for name, s in scores.items()}
    for name, v in values.items():
        if v.shape != labels.shape:
            raise ValueError(f"score {name!r} has {v.size} values for {labels.size} labels")
    if reference is not None and reference not in values:
        raise ValueError(f"the reference {reference!r} is not among the scores {list(values)}")
    members = [np.flatnonzero(clusters == c) for c in pd.unique(clusters)]
    rng = np.random.default_rng(seed)
    boots = {name: np.empty(n_boot) for name in values}
    for b in range(n_boot):
        rows = np.concatenate([members[i] for i in rng.integers(0, len(members), len(members))]) if members \
            else np.array([], dtype=int)
        for name, v in values.items():
            boots[name][b] = auroc(v[rows], labels[rows])
    tail = (1 - level) / 2 * 100

    def interval(samples: np.ndarray) -> list[float]:
        samples = samples[~np.isnan(samples)]
        if samples.size == 0:
            return [float("nan"), float("nan")]
        return [float(np.percentile(samples, tail)), float(np.percentile(samples, 100 - tail))]

    table = []
    for name, v in values.items():
        row = {"score": name, "auroc": auroc(v, labels), **dict(zip(("ci_low", "ci_high"), interval(boots[name])))}
        if reference is not None:
            row["difference"] = auroc(values[reference], labels) - row["auroc"]
            row["difference_ci_low"], row["difference_ci_high"] = interval(boots[reference] - boots[name])
        table.append(row)
    return pd.DataFrame(table)


def changed_answers(a_predictions: Sequence[dict], b_predictions: Sequence[dict]) -> dict:
    """How many questions two models answer differently: the extracted answer (compared by
    `answers.answer_key`, so "18" and "18.0" are the same answer; no answer is an answer of its own)
    and the correctness ("status" == "correct"). Rows are matched by "id"; both must cover the same
    questions."""
    a = {row["id"]: row for row in a_predictions}
    b = {row["id"]: row for row in b_predictions}
    if len(a) != len(a_predictions) or len(b) != len(b_predictions):
        raise ValueError("a question id appears twice in the predictions")
    if a.keys() != b.keys():
        raise ValueError(f"the predictions cover different questions: {len(a.keys() ^ b.keys())} ids differ")
    answer = sum(answer_key(a[i]["answer"]) != answer_key(b[i]["answer"]) for i in a)
    correctness = sum((a[i]["status"] == "correct") != (b[i]["status"] == "correct") for i in a)
    n = len(a)
    return {"n": n, "answer_changed": answer, "answer_changed_fraction": answer / n if n else float("nan"),
            "correctness_changed": correctness, "correctness_changed_fraction": correctness / n if n else float("nan")}
