"""Each registered GRPO reward, table-driven."""

import json
import math

import pytest

from agentark_utils.rewards import (AGGREGATIONS, REWARDS, PRMReward, aggregate, answer_reward, build_rewards,
                                    compare_aggregations)
from agentark_utils.tasks import Question

NUMBER = json.dumps(Question("q", "t", "What is 2 + 3?", "5", "number").to_dict())
CHOICE = json.dumps(Question("m", "t", "Pick", "B", "choice", ["x", "y", "z"]).to_dict())


@pytest.mark.parametrize("how, scores, expected", [
    ("mean", [0.2, 0.4, 0.9], 0.5),
    ("min", [0.2, 0.4, 0.9], 0.2),
    ("softmin", [0.5, 0.5], 0.5),
    ("softmin", [0.2, 0.9], (0.2 * math.exp(-2) + 0.9 * math.exp(-9)) / (math.exp(-2) + math.exp(-9))),
    ("last", [0.2, 0.9, 0.4], 0.4),
    ("mean", [], 0.0),
    ("last", [], 0.0),
    ("min", [], 0.0),
])
def test_aggregations(how, scores, expected):
    assert aggregate(scores, how) == pytest.approx(expected)


def test_the_config_offers_every_aggregation():
    from typing import get_args

    from agentark_utils.config import GRPOParams

    assert get_args(GRPOParams.model_fields["aggregation"].annotation) == tuple(AGGREGATIONS)


def test_compare_aggregations_judges_whole_traces_by_hand():
    import numpy as np
    import pandas as pd

    traces = [  # question, trace, step scores, final answer correct
        ("q1", "a", [0.9, 0.8], True), ("q1", "b", [0.95, 0.3], False),
        ("q2", "a", [0.5, 0.6, 0.7, 0.6], True), ("q2", "b", [0.9], False)]
    table = pd.DataFrame([{"question_id": q, "trace_id": t, "step": i, "trace_correct": ok, "trace_steps": len(s),
                           "trace_chars": 10 * len(s), "PRM": x} for q, t, s, ok in traces for i, x in enumerate(s)])
    out = compare_aggregations(table, "PRM", n_boot=100, seed=0).set_index("aggregation")
    assert list(out.index) == list(AGGREGATIONS) and (out["n_traces"] == 4).all()
    # mean: correct {0.85, 0.6} vs wrong {0.625, 0.9}: 1 of 4 pairs ordered; min and last: 2 of 4
    assert out.loc["mean", "auroc"] == pytest.approx(0.25)
    assert out.loc["min", "auroc"] == out.loc["last", "auroc"] == pytest.approx(0.5)
    # Spearman of the mean (ranks 3, 2, 1, 4) with the step counts (ranks 2.5, 2.5, 4, 1)
    expected = np.corrcoef([3, 2, 1, 4], [2.5, 2.5, 4, 1])[0, 1]
    assert out.loc["mean", "spearman_trace_steps"] == pytest.approx(expected)
    assert out.loc["mean", "spearman_trace_chars"] == pytest.approx(expected)
    assert (out["ci_low"] <= out["auroc"]).all() and (out["auroc"] <= out["ci_high"]).all()


def test_softmin_lies_between_min_and_mean():
    scores = [0.1, 0.6, 0.8, 0.95]
    assert AGGREGATIONS["min"](scores) < AGGREGATIONS["softmin"](scores) < AGGREGATIONS["mean"](scores)


@pytest.mark.parametrize("completion, question, expected", [
    ("2 + 3 = 5\n\nFinal Answer: 5", NUMBER, 1.0),
    ("Final Answer: 6", NUMBER, 0.0),
    ("", NUMBER, 0.0),
    ("no answer at all ünïcode", NUMBER, 0.0),
    ([{"role": "assistant", "content": "Final Answer: 5"}], NUMBER, 1.0),  # conversational
    ("Final Answer: B", CHOICE, 1.0),
    ("Final Answer: C", CHOICE, 0.0),
])
def test_answer_reward(completion, question, expected):
    assert answer_reward(["p"], [completion], question=[question]) == [expected]


class FakeScorer:
    def __init__(self):
        self.seen = []

    def score(self, prompts, steps):
        self.seen.append((prompts, steps))
        return [[0.1 * (i + 1) for i in range(len(s))] for s in steps]


@pytest.mark.parametrize("how, expected", [("mean", [0.15, 0.1, 0.0]), ("min", [0.1, 0.1, 0.0])])
def test_prm_reward_cuts_steps_and_aggregates(how, expected):
    scorer = FakeScorer()
    reward = PRMReward(scorer, how)
    prompts = [[{"role": "user", "content": "Q1"}]] * 3
    completions = [[{"role": "assistant", "content": "a\n\nFinal Answer: 1"}],
                   [{"role": "assistant", "content": "Final Answer: 2"}], [{"role": "assistant", "content": ""}]]
    assert reward(prompts, completions) == pytest.approx(expected)
    assert scorer.seen == [(["Q1"] * 3, [["a", "Final Answer: 1"], ["Final Answer: 2"], []])]
    assert reward.__name__ == f"prm_{how}"


@pytest.mark.parametrize("weights, names, kept", [
    ({"prm": 1.0, "answer": 0.0}, ["prm_mean"], [1.0]),
    ({"prm": 1.0, "answer": 0.5}, ["prm_mean", "answer_reward"], [1.0, 0.5]),
    ({"answer": 2.0}, ["answer_reward"], [2.0]),
])
def test_build_rewards_keeps_the_weighted_ones(weights, names, kept):
    funcs, w = build_rewards(weights, FakeScorer(), "mean")
    assert [getattr(f, "__name__") for f in funcs] == names and w == kept


def test_build_rewards_errors():
    with pytest.raises(ValueError, match="unknown reward"):
        build_rewards({"length": 1.0})
    with pytest.raises(ValueError, match="needs a PRM scorer"):
        build_rewards({"prm": 1.0})
    with pytest.raises(ValueError, match="unknown aggregation"):
        PRMReward(FakeScorer(), "median")
    assert set(REWARDS) == {"prm", "answer"}
