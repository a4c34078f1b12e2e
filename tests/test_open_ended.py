"""Open-ended sets: loaders on fixture rows in each dataset's own format, and the overlap metrics."""

import pytest

from agentark_utils.open_ended import OPEN_TASKS, load_open_task, overlap_scores, token_f1
from agentark_utils.tasks import DatasetError
from conftest import FIXTURES


def test_truthfulqa_references_are_the_correct_answers():
    items = load_open_task("truthfulqa", 10, str(FIXTURES / "truthfulqa.jsonl"))
    assert [i.id for i in items] == ["truthfulqa-0", "truthfulqa-1"]
    assert items[0].references == ("Nothing in particular happens if you crack your knuckles a lot",
                                   "You will not get arthritis")
    assert items[1].references == ("The sky is blue on a clear day",)  # no correct_answers: the best answer
    assert "crack your knuckles" in items[0].prompt


def test_hotpotqa_prompt_holds_every_paragraph_and_the_question():
    (item, _) = load_open_task("hotpotqa", 10, str(FIXTURES / "hotpotqa.jsonl"))
    assert item.id == "5a8b57f25542995d1e6f1371" and item.references == ("yes",)
    assert "Ed Wood: Edward Davis Wood Jr. was an American filmmaker. He made low-budget films." in item.prompt
    assert "Scott Derrickson: Scott Derrickson is an American director." in item.prompt
    assert item.prompt.endswith("Question: Were Scott Derrickson and Ed Wood of the same nationality?")


def test_qasper_one_item_per_answerable_question():
    items = load_open_task("qasper", 10, str(FIXTURES / "qasper.jsonl"))
    assert {i.id: i.references for i in items} == {
        "q-seed": ("a vocabulary of positive and negative predicates",),
        "q-size": ("100 million sentences", "a Japanese web corpus 100 million sentences"),
        "q-code": ("Yes",),
    }  # q-gpu is unanswerable: no reference, no item
    assert "We train on a Japanese web corpus" in items[0].prompt


def test_qmsum_general_and_specific_queries_and_a_context_cap():
    items = load_open_task("qmsum", 10, str(FIXTURES / "qmsum.jsonl"), max_context_chars=60)
    assert [i.references[0] for i in items] == [
        "The team discussed the design of a new remote control and agreed on a rubber case.", "They chose a rubber case."]
    transcript = items[0].prompt.split("\n\nAnswer about the meeting")[0]
    assert transcript == "Project Manager: Let us start with the remote control design."[:60]


def test_n_caps_the_items():
    assert len(load_open_task("qasper", 2, str(FIXTURES / "qasper.jsonl"))) == 2


def test_a_row_in_another_format_is_named(tmp_path):
    path = tmp_path / "bad.jsonl"
    path.write_text((FIXTURES / "hotpotqa.jsonl").read_text().splitlines()[0] + '\n{"id": "x", "question": "Q?"}\n')
    with pytest.raises(DatasetError, match=r"bad.jsonl: row 1: not in the hotpotqa format \(missing or bad 'context'\)"):
        load_open_task("hotpotqa", 10, str(path))


def test_qmsum_needs_a_local_file():
    with pytest.raises(DatasetError, match="qmsum: not on the hub in its own format"):
        load_open_task("qmsum", 1)


@pytest.mark.parametrize("prediction, reference, f1", [
    ("Paris", "paris", 1.0),                       # case
    ("The Paris.", "Paris", 1.0),                  # articles and punctuation
    ("Paris France", "Paris", 2 * 0.5 * 1 / 1.5),  # precision 1/2, recall 1
    ("London", "Paris", 0.0),
    ("", "", 1.0),
    ("", "Paris", 0.0),
])
def test_token_f1(prediction, reference, f1):
    assert token_f1(prediction, reference) == pytest.approx(f1)


@pytest.mark.parametrize("task", sorted(OPEN_TASKS))
def test_a_prediction_equal_to_a_reference_scores_one(task):
    metrics = OPEN_TASKS[task].metrics
    scores = overlap_scores("the cat sat on the mat today", ("a dog ran", "the cat sat on the mat today"), metrics)
    assert set(scores) == set(metrics)
    assert all(value == pytest.approx(1.0) for value in scores.values())


def test_disjoint_text_scores_zero_and_partial_overlap_in_between():
    metrics = ("bleu", "f1", "rouge1", "rouge2", "rougeL")
    assert all(v == 0 for v in overlap_scores("green purple", ("the cat sat on the mat",), metrics).values())
    partial = overlap_scores("the cat sat on a rug", ("the cat sat on the mat",), metrics)
    assert all(0 < v < 1 for v in partial.values())
