import numpy as np
import pytest

from agentark_utils import metrics


def test_bootstrap_ci_brackets_the_mean_and_narrows_with_more_data():
    rng = np.random.default_rng(0)
    small = rng.random(20) < 0.4
    large = rng.random(2000) < 0.4
    lo_s, hi_s = metrics.bootstrap_ci(small, seed=1)
    lo_l, hi_l = metrics.bootstrap_ci(large, seed=1)
    assert lo_s <= small.mean() <= hi_s
    assert lo_l <= large.mean() <= hi_l
    assert hi_l - lo_l < (hi_s - lo_s) / 4
    assert metrics.bootstrap_ci([1, 1, 1]) == [1.0, 1.0]
    assert np.isnan(metrics.bootstrap_ci([])[0])


def call(status, prompt=10, generated=5, latency=0.5, answer="1"):
    return {"text": "", "answer": answer, "status": status, "prompt_tokens": prompt,
            "completion_tokens": generated, "latency_s": latency}


def record(split, single, rounds, final, sc_status="correct"):
    return {
        "split": split,
        "question": {"id": "x", "task": "t", "question": "q", "answer": "1", "answer_format": "math",
                     "choices": [], "reasoning": None, "metadata": {}},
        "single": call(single),
        "self_consistency": {"samples": [call("correct"), call("wrong")], "answer": "1", "status": sc_status},
        "debate": {"rounds": [[call(s) for s in r] for r in rounds], "consensus_round": None,
                   "summarizer": call(final), "majority": {"answer": "1", "status": final},
                   "final": {"answer": "1", "status": final}},
    }


def test_debate_metrics_by_hand():
    records = [
        record("train", "correct", [["wrong", "correct"], ["correct", "correct"]], "correct"),
        record("test", "unparsed", [["wrong", "wrong"], ["wrong", "wrong"]], "wrong", sc_status="unparsed"),
    ]
    m = metrics.debate_metrics(records)
    assert m["n_questions"] == 2
    assert m["single"]["accuracy"] == 0.5 and m["single"]["unparsed_rate"] == 0.5
    assert m["self_consistency"]["unparsed_rate"] == 0.5
    assert m["debate"]["calls_per_question"] == 5  # 2 agents x 2 rounds + summarizer
    assert m["debate"]["tokens_per_question"] == 5 * 15
    assert m["debate"]["generated_tokens_per_question"] == 5 * 5
    assert m["debate"]["latency_s_per_question"] == pytest.approx(2.5)
    assert m["wrong_to_right_fraction"] == 0.5
    assert m["by_split"]["test"]["n_questions"] == 1 and m["by_split"]["test"]["debate"]["accuracy"] == 0.0


@pytest.mark.parametrize("successes, n, low, high", [
    # Newcombe (1998), "Two-sided confidence intervals for the single proportion: comparison of
    # seven methods", Stat Med 17:857-872, Table I, method 3 (Wilson score, no continuity correction)
    (81, 263, 0.2553, 0.3662),
    (15, 148, 0.0624, 0.1605),
    (0, 20, 0.0, 0.1611),
    (1, 29, 0.0061, 0.1718),
])
def test_wilson_interval_matches_newcombe_table_1(successes, n, low, high):
    assert metrics.wilson_ci(successes, n) == pytest.approx([low, high], abs=1e-4)


def test_accuracy_ci_does_not_collapse_at_small_counts():
    """2 of 32 correct: the percentile bootstrap gave [0, 0.156], as if 0 % were plausible."""
    outcomes = [{"status": s} for s in ["correct"] * 2 + ["wrong"] * 29 + ["unparsed"]]
    summary = metrics.summarize_calls(outcomes, [[]] * 32)
    assert summary["accuracy"] == 2 / 32
    # Wilson by hand: centre (2 + z^2/2) / (32 + z^2), half-width z sqrt(2 * 30 / 32 + z^2 / 4) / (32 + z^2)
    assert summary["ci95"] == pytest.approx([0.0173, 0.2015], abs=1e-4)
    assert np.isnan(metrics.wilson_ci(0, 0)).all()


@pytest.mark.parametrize("both, only_a, only_b, neither, low, high", [
    # Newcombe (1998), "Improved confidence intervals for the difference between binomial
    # proportions based on paired data", Stat Med 17:2635-2650, Table II, method 10; the values as
    # the R package propint checks them (github.com/m-Py/propint, tests/testthat/test_Two_Dependent_Props_CI.R)
    (36, 12, 2, 0, 0.0569, 0.3404),
    (18, 12, 2, 18, 0.0562, 0.3290),
    (53, 0, 0, 1, -0.0729, 0.0729),
    (0, 30, 0, 0, 0.8395, 1.0),
])
def test_paired_difference_ci_matches_newcombe_table_2(both, only_a, only_b, neither, low, high):
    assert metrics.paired_difference_ci(both, only_a, only_b, neither) == pytest.approx([low, high], abs=1e-4)
    # the difference the other way round: the same interval, negated
    assert metrics.paired_difference_ci(both, only_b, only_a, neither) == pytest.approx([-high, -low], abs=1e-4)


def test_paired_comparison_of_das_review_example():
    """The review's case, 32 questions, DA gained 2 and lost none: the paired bootstrap said
    [0.000, 0.156] (it cannot go below 0 without a lost question), Newcombe's interval
    [-0.049, 0.181]. The review gave only the intervals; 6 questions both right and 24 both
    wrong are the counts that reproduce them."""
    model = [1] * 6 + [1] * 2 + [0] * 24
    base = [1] * 6 + [0] * 2 + [0] * 24
    result = metrics.paired_comparison(model, base)
    assert set(result) == {"difference", "ci95", "gained", "lost", "mcnemar_p"}
    assert result["difference"] == pytest.approx(2 / 32)
    assert (result["gained"], result["lost"]) == (2, 0)
    assert result["ci95"] == pytest.approx([-0.049, 0.181], abs=1e-3)
    assert result["mcnemar_p"] == pytest.approx(0.5)  # 2 * (1/2)^2


def test_accuracy_by_round_carries_early_stopped_questions_forward():
    records = [
        record("test", "correct", [["correct", "correct"]], "correct"),  # stopped after round 1
        record("test", "wrong", [["wrong", "wrong"], ["correct", "wrong"]], "wrong"),
    ]
    table = metrics.accuracy_by_round(records).set_index(["round", "measure"])["accuracy"]
    assert table[(1, "mean agent")] == 0.5
    assert table[(2, "mean agent")] == pytest.approx((1 + 0.5) / 2)


@pytest.mark.parametrize("scores, labels, expected", [
    ([0.9, 0.8, 0.2, 0.1], [1, 1, 0, 0], 1.0),
    ([0.1, 0.2, 0.8, 0.9], [1, 1, 0, 0], 0.0),
    ([0.5, 0.5, 0.5, 0.5], [1, 0, 1, 0], 0.5),  # ties count half
    ([0.9, 0.3, 0.6, 0.1], [1, 1, 0, 0], 0.75),  # 3 of the 4 positive-negative pairs are ordered right
    ([0.4, 0.6], [1, 1], None),  # one class only: undefined
])
def test_auroc(scores, labels, expected):
    value = metrics.auroc(scores, labels)
    assert np.isnan(value) if expected is None else value == pytest.approx(expected)


def test_auroc_from_ranks_is_the_pairwise_probability_with_ties():
    rng = np.random.default_rng(0)
    for _ in range(20):
        scores = rng.integers(0, 5, size=40) / 4  # few distinct values: many ties, within and across classes
        labels = rng.random(40) < 0.3
        pos, neg = scores[labels], scores[~labels]
        pairwise = ((pos[:, None] > neg).sum() + 0.5 * (pos[:, None] == neg).sum()) / (pos.size * neg.size)
        assert metrics.auroc(scores, labels) == pytest.approx(pairwise)


def test_auroc_memory_is_linear_in_the_number_of_scores():
    import tracemalloc

    rng = np.random.default_rng(0)
    scores, labels = rng.random(20_000), np.arange(20_000) % 2 == 0
    tracemalloc.start()
    value = metrics.auroc(scores, labels)
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    assert 0.45 < value < 0.55
    # all positive-negative pairs would take 10,000 x 10,000 bytes = 100 MB
    assert peak < 10e6


@pytest.mark.parametrize("only_a, only_b, p", [
    (0, 0, 1.0),
    (5, 5, 1.0),
    (6, 0, 2 / 2**6),  # all discordant pairs one way
    (1, 4, 2 * (1 + 5) / 2**5),  # 2 * P(X <= 1), X ~ Bin(5, 1/2)
    (10, 0, 2 / 2**10),
])
def test_mcnemar_exact(only_a, only_b, p):
    assert metrics.mcnemar_p(only_a, only_b) == pytest.approx(p)


def test_paired_comparison_counts_discordant_pairs():
    model = [1, 1, 1, 0, 1, 0]
    base = [0, 0, 1, 0, 1, 1]
    result = metrics.paired_comparison(model, base)
    assert result["difference"] == pytest.approx(1 / 6)
    assert (result["gained"], result["lost"]) == (2, 1)
    assert result["ci95"][0] <= result["difference"] <= result["ci95"][1]
    assert result["mcnemar_p"] == pytest.approx(1.0)
    with pytest.raises(ValueError, match="same questions"):
        metrics.paired_comparison([1], [1, 0])


@pytest.mark.parametrize("n, discordance, difference", [(32, 0.2, 0.0), (200, 0.2, 0.0), (200, 0.3, 0.1)])
def test_mcnemar_power_agrees_with_a_simulation(n, discordance, difference):
    """Power of the exact test, against simulated paired trials tested with `mcnemar_p` itself."""
    rng = np.random.default_rng(0)
    gained_p, lost_p = (discordance + difference) / 2, (discordance - difference) / 2
    draws = rng.multinomial(n, [gained_p, lost_p, 1 - discordance], size=4000)
    simulated = np.mean([metrics.mcnemar_p(int(g), int(lost)) <= 0.05 for g, lost, _ in draws])
    assert metrics.mcnemar_power(n, discordance, difference) == pytest.approx(simulated, abs=0.025)
    if difference == 0:
        assert metrics.mcnemar_power(n, discordance, 0.0) <= 0.05  # the exact test keeps its level


def test_minimum_detectable_effect_shrinks_with_more_questions():
    small, large = (metrics.minimum_detectable_effect(n, 0.3) for n in (32, 200))
    assert large < small
    assert metrics.mcnemar_power(200, 0.3, large) >= 0.8 > metrics.mcnemar_power(200, 0.3, large - 0.01)
    assert np.isnan(metrics.minimum_detectable_effect(32, 0.2))  # 32 questions at 20 % discordance: nothing


def test_clustered_auroc_resamples_whole_questions():
    # question A holds only positives, B only negatives: a resample of A twice or B twice has one
    # class (no AUROC, left out), so every defined resample holds A and B once: a CI of one point
    scores, labels, clusters = [0.9, 0.2, 0.4, 0.1], [1, 1, 0, 0], ["A", "A", "B", "B"]
    table = metrics.clustered_auroc({"prm": scores}, labels, clusters, n_boot=200, seed=0)
    full = metrics.auroc(scores, labels)
    assert full == 0.75
    assert table.loc[0, ["auroc", "ci_low", "ci_high"]].tolist() == [full, full, full]
    # resampled step by step (each step its own cluster) the interval is not one point
    steps = metrics.clustered_auroc({"prm": scores}, labels, [0, 1, 2, 3], n_boot=200, seed=0)
    assert steps.loc[0, "ci_low"] < full


def test_clustered_auroc_is_wider_than_a_step_bootstrap_when_questions_differ():
    rng = np.random.default_rng(1)
    scores, labels, clusters = [], [], []
    for q in range(8):  # the score ranks steps well in half the questions and backwards in the others
        sign = 1 if q % 2 else -1
        for _ in range(40):
            label = int(rng.random() < 0.5)
            scores.append(sign * label + rng.normal(0, 0.3))
            labels.append(label)
            clusters.append(q)
    by_question = metrics.clustered_auroc({"s": scores}, labels, clusters, n_boot=300, seed=0).loc[0]
    by_step = metrics.clustered_auroc({"s": scores}, labels, range(len(labels)), n_boot=300, seed=0).loc[0]
    assert by_question["auroc"] == by_step["auroc"]
    assert by_question["ci_high"] - by_question["ci_low"] > 2 * (by_step["ci_high"] - by_step["ci_low"])


def test_clustered_auroc_pairs_every_score_with_the_reference_on_the_same_resamples():
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 2, 300)
    clusters = np.repeat(np.arange(30), 10)
    good = labels + rng.normal(0, 0.5, 300)
    scores = {"good": good, "noise": rng.normal(0, 1, 300), "same": good.copy()}
    table = metrics.clustered_auroc(scores, labels, clusters, n_boot=200, seed=3, reference="good").set_index("score")
    assert table.loc["good", "auroc"] > 0.8 and table.loc["noise", "difference_ci_low"] > 0  # beats noise
    assert table.loc["same", ["difference", "difference_ci_low", "difference_ci_high"]].tolist() == [0, 0, 0]
    again = metrics.clustered_auroc(scores, labels, clusters, n_boot=200, seed=3, reference="good").set_index("score")
    assert again.equals(table)  # seeded
    with pytest.raises(ValueError, match="reference"):
        metrics.clustered_auroc(scores, labels, clusters, reference="prm")
    with pytest.raises(ValueError, match="2 values for 300 labels"):
        metrics.clustered_auroc({"short": [0.1, 0.2]}, labels, clusters)


@pytest.mark.parametrize("a, b, expected", [
    # (answer, status) per question; expected (answers changed, correctness changed)
    ([("5", "correct"), ("7", "wrong")], [("5", "correct"), ("7", "wrong")], (0, 0)),
    ([("5", "correct"), ("7", "wrong")], [("5.0", "correct"), ("8", "wrong")], (1, 0)),  # 5.0 is 5; 7 -> 8 wrong both
    ([("5", "correct"), ("7", "wrong")], [("6", "wrong"), ("9", "correct")], (2, 2)),
    ([(None, "unparsed"), ("7", "wrong")], [("4", "wrong"), (None, "unparsed")], (2, 0)),  # no answer is an answer
])
def test_changed_answers(a, b, expected):
    rows = lambda pairs: [{"id": f"q{i}", "answer": ans, "status": st} for i, (ans, st) in enumerate(pairs)]
    out = metrics.changed_answers(rows(a), rows(b)[::-1])  # matched by id, not by order
    assert (out["answer_changed"], out["correctness_changed"]) == expected
    assert out["n"] == 2 and out["answer_changed_fraction"] == expected[0] / 2
    assert out["correctness_changed_fraction"] == expected[1] / 2


def test_changed_answers_needs_the_same_questions():
    row = {"id": "q0", "answer": "1", "status": "correct"}
    with pytest.raises(ValueError, match="different questions"):
        metrics.changed_answers([row], [{**row, "id": "q1"}])
    with pytest.raises(ValueError, match="twice"):
        metrics.changed_answers([row, row], [row])
