import pytest

from agentark_utils.extraction import Example
from agentark_utils.config import SFTParams
from agentark_utils.scaling import data_subset, point_fingerprint, question_order


def rows(n_questions: int, per_question: int = 3) -> list[Example]:
    return [Example(f"q{i}", f"prompt {i}", f"trace {j}", 1 / per_question, f"agent {j}")
            for i in range(n_questions) for j in range(per_question)]


@pytest.mark.parametrize("fraction, n_questions", [(1.0, 10), (0.5, 5), (0.25, 3), (0.01, 1)])
def test_a_fraction_keeps_that_share_of_questions_with_all_their_rows(fraction, n_questions):
    subset = data_subset(rows(10), fraction, seed=0)
    kept = {e.question_id for e in subset}
    assert len(kept) == n_questions
    assert len(subset) == 3 * n_questions  # DA's k traces stay together, weights unchanged
    assert all(e.weight == pytest.approx(1 / 3) for e in subset)


def test_smaller_fractions_are_nested_in_larger_ones():
    examples = rows(20)
    previous: set[str] = set()
    for fraction in (0.1, 0.25, 0.5, 0.75, 1.0):
        kept = {e.question_id for e in data_subset(examples, fraction, seed=3)}
        assert previous <= kept
        previous = kept


def test_the_subset_depends_on_the_seed_only():
    examples = rows(20)
    assert data_subset(examples, 0.3, seed=1) == data_subset(list(reversed(examples))[::-1], 0.3, seed=1)
    assert question_order(examples, 1) != question_order(examples, 2)


@pytest.mark.parametrize("fraction", [0, -0.5, 1.5])
def test_a_fraction_outside_zero_one_is_refused(fraction):
    with pytest.raises(ValueError, match="fraction must be in"):
        data_subset(rows(4), fraction, seed=0)


def test_a_point_is_not_reused_after_a_training_setting_changes(tmp_path):
    sft = SFTParams(learning_rate=5e-5, epochs=3, batch_size=8)
    inputs = [e.to_dict() for e in rows(4)]
    model = tmp_path / "base"
    model.mkdir()
    (model / "weights").write_bytes(b"v1")
    before = point_fingerprint("data", "da", 4, inputs, str(model), [sft])
    assert point_fingerprint("data", "da", 4, inputs, str(model), [sft]) == before
    assert point_fingerprint("data", "da", 4, inputs, str(model), [sft.model_copy(update={"learning_rate": 1e-4})]) != before
    assert point_fingerprint("data", "da", 4, inputs[:-1], str(model), [sft]) != before  # other rows
    (model / "weights").write_bytes(b"v2")
    assert point_fingerprint("data", "da", 4, inputs, str(model), [sft]) != before  # other base weights
