"""The shipped paper numbers and the headline recomputed from them."""

import pytest

from agentark_utils.paper import gains_by_method, headline, mean_relative_gain, paper_tables


def test_shipped_tables_are_complete():
    table = paper_tables()
    assert table["source_table"].value_counts().to_dict() == {
        "Table 9": 72, "Table 10": 72, "Table 11": 72, "Table 12": 72, "Table 13": 72, "Table 8": 40}
    assert table["accuracy"].between(0, 100).all() and table["student_base_accuracy"].between(0, 100).all()


def test_headline_is_the_papers_4_8_percent():
    assert round(headline(), 2) == 4.80


@pytest.mark.parametrize("method, teacher, expected", [
    ("DA", "Qwen3-32B", 4.70),  # the digest's reconstruction of the other two methods
    ("RSFT", "Qwen3-32B", 2.37),
    ("PAD", None, 2.62),  # all three teachers
])
def test_other_mean_gains(method, teacher, expected):
    assert mean_relative_gain(paper_tables(), method, teacher) == pytest.approx(expected, abs=0.005)


def test_gain_of_a_hand_made_cell_and_errors():
    table = paper_tables()
    row = table[(table["source_table"] == "Table 9") & (table["train_set"] == "gsm8k") & (table["test_set"] == "gsm8k")
                & (table["method"] == "RSFT")].iloc[0]
    assert row["relative_gain_pct"] == pytest.approx(100 * (row["accuracy"] / row["student_base_accuracy"] - 1))
    with pytest.raises(ValueError, match="no cells"):
        mean_relative_gain(table, "PPO")
    by_method = gains_by_method(table)
    assert set(by_method["method"]) == {"RSFT", "DA", "PAD", "answer-only SFT"}


def test_table2_transcription_agrees_with_the_papers_reading_of_it():
    """The paper (§4.5): on TruthfulQA every method is at least the base, and PAD is best on every metric."""
    from agentark_utils.paper import TABLE2_TRUTHFULQA as t2

    metrics = set(t2["single"])
    assert metrics == {"bleu", "rouge1", "rouge2", "rougeL"} and all(set(v) == metrics for v in t2.values())
    for metric in metrics:
        assert max(t2, key=lambda method: t2[method][metric]) == "pad"
        assert all(t2[method][metric] >= t2["single"][metric] for method in t2)


@pytest.mark.parametrize("value", ["relative_gain_pct", "gain_points"])
def test_gains_by_method_averages_each_methods_cells(value):
    table = paper_tables()
    by_method = gains_by_method(table, "Qwen3-8B", value).set_index(["method", "test_set"])[value]
    pad = table[(table["source_table"] != "Table 8") & (table["teacher"] == "Qwen3-8B") & (table["method"] == "PAD")]
    for test_set, cells in pad.groupby("test_set"):
        assert by_method[("PAD", test_set)] == pytest.approx(cells[value].mean())
    answer_only = table[table["source_table"] == "Table 8"]  # one teacher in Table 8, whichever is asked for
    assert by_method[("answer-only SFT", "gsm8k")] == pytest.approx(
        answer_only.loc[answer_only["test_set"] == "gsm8k", value].mean())
