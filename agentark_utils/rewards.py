"""Rewards for GRPO, registered by name (`REWARDS`), in TRL's reward-function form:
`f(prompts, completions, **dataset_columns) -> list[float]`, one value per completion.

- `prm`: the process reward model scores each step of the completion (cut at `STEP_SEPARATOR`);
  the step probabilities are aggregated into one reward by `AGGREGATIONS[aggregation]`.
  `compare_aggregations` measures, on held-out debate traces, how well each aggregation separates
  traces with a correct final answer from wrong ones, and how much it follows the trace's length.
- `answer`: 1.0 when the completion's final answer is verified correct, else 0.0 (the reference
  code's verifiable reward; the paper does not mention one).
"""

from __future__ import annotations

import json
import math
from typing import Callable

import pandas as pd

from agentark_utils import answers
from agentark_utils.metrics import clustered_auroc
from agentark_utils.steps import split_steps
from agentark_utils.tasks import Question


def _softmin(scores: list[float], temperature: float = 0.1) -> float:
    """Weights softmax(-s / T): close to the minimum, but every step keeps some credit (PURE)."""
    weights = [math.exp(-s / temperature) for s in scores]
    return sum(w * s for w, s in zip(weights, scores)) / sum(weights)


AGGREGATIONS: dict[str, Callable[[list[float]], float]] = {
    "mean": lambda scores: sum(scores) / len(scores),
    "min": min,
    "softmin": _softmin,
    "last": lambda scores: scores[-1],  # the step that states the answer
}


def aggregate(scores: list[float], how: str) -> float:
    """One reward from a completion's step scores; a completion with no step gets 0."""
    return AGGREGATIONS[how](scores) if scores else 0.0


def compare_aggregations(table: pd.DataFrame, score: str, n_boot: int = 1000, seed: int = 0) -> pd.DataFrame:
    """Each aggregation as a judge of whole traces: one row per aggregation with the AUROC of the
    aggregated trace reward against the trace's final correctness (question-level bootstrap CI) and
    its Spearman correlation with the trace's step count and character length (negative: it
    rewards brevity).

    `table`: a `prm.step_table`, one row per scored step with the step score in column `score`. A
    trace with no scored step is not in it (GRPO gives such a completion 0).
    """
    traces = table.groupby(["question_id", "trace_id"], sort=False)
    shape = traces[["trace_correct", "trace_steps", "trace_chars"]].first()
    rewards = {how: traces[score].agg(lambda s: aggregate(s.tolist(), how)) for how in AGGREGATIONS}
    out = clustered_auroc(rewards, shape["trace_correct"], shape.index.get_level_values("question_id"),
                          n_boot=n_boot, seed=seed).rename(columns={"score": "aggregation"})
    # Spearman = Pearson on average ranks (pandas' own Spearman needs scipy)
    for length in ("trace_steps", "trace_chars"):
        out[f"spearman_{length}"] = [rewards[how].rank().corr(shape[length].rank()) for how in AGGREGATIONS]
    out.insert(1, "n_traces", len(shape))
    return out


def _text(message) -> str:
    """A prompt or completion, conversational (a list of messages) or plain, as its last text."""
    return message[-1]["content"] if isinstance(message, list) else message


def answer_reward(prompts, completions, question, **_) -> list[float]:
    """1.0 when the final answer is correct (exact: partial credit counts as wrong), else 0.0."""
    return [float(answers.grade(Question.from_dict(json.loads(q)), _text(c)).status == "correct")
            for c, q in zip(completions, question)]


class PRMReward:
    """The PRM's aggregated step score of each completion, given its question prompt."""

    def __init__(self, scorer, aggregation: str = "mean"):
        if aggregation not in AGGREGATIONS:
            raise ValueError(f"unknown aggregation {aggregation!r}; known: {', '.join(AGGREGATIONS)}")
        self.scorer, self.aggregation = scorer, aggregation
        self.__name__ = f"prm_{aggregation}"  # TRL logs each reward under its function's name

    def __call__(self, prompts, completions, **_) -> list[float]:
        scores = self.scorer.score([_text(p) for p in prompts], [split_steps(_text(c)) for c in completions])
        return [aggregate(s, self.aggregation) for s in scores]


REWARDS: dict[str, Callable[..., Callable]] = {
    "prm": lambda scorer, aggregation: PRMReward(scorer, aggregation),
    "answer": lambda scorer, aggregation: answer_reward,
}


def build_rewards(weights: dict[str, float], scorer=None, aggregation: str = "mean") -> tuple[list[Callable], list[float]]:
    """The reward functions with a non-zero weight, and those weights, in registry order."""
    unknown = set(weights) - set(REWARDS)
    if unknown:
        raise ValueError(f"unknown reward(s) {sorted(unknown)}; known: {', '.join(REWARDS)}")
    chosen = [name for name in REWARDS if weights.get(name, 0) > 0]
    if "prm" in chosen and scorer is None:
        raise ValueError("the prm reward needs a PRM scorer")
    return [REWARDS[name](scorer, aggregation) for name in chosen], [weights[name] for name in chosen]
