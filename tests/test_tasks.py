import json

import pytest

from agentark_utils.tasks import TASKS, DatasetError, Question, check_disjoint, load_task, make_questions, read_rows
from conftest import FIXTURES


def test_reasoning_gym_task_is_seeded_and_disjoint():
    train, test = load_task("arith_mix", 20, 10, seed=1)
    assert (len(train), len(test)) == (20, 10)
    check_disjoint(train, test)
    again_train, again_test = load_task("arith_mix", 20, 10, seed=1)
    assert [q.to_dict() for q in again_test] == [q.to_dict() for q in test]
    other_train, _ = load_task("arith_mix", 20, 10, seed=2)
    assert [q.question for q in other_train] != [q.question for q in train]
    # the mix draws from every component
    assert {q.metadata["source_dataset"] for q in train + test} == {"basic_arithmetic", "chain_sum"}
    assert all(q.answer_format == "number" and q.answer.lstrip("-").isdigit() for q in train + test)


def test_question_round_trips_through_json():
    q = Question("id1", "medmcqa", "Q?", "B", "choice", ("x", "y"), "because", {"k": 1})
    assert Question.from_dict(json.loads(json.dumps(q.to_dict()))) == q


@pytest.mark.parametrize(
    "task, n_rows, first_answer, answer_format",
    [
        ("gsm8k", 6, "29", "math"),
        ("math500", 4, "\\frac{3}{4}", "math"),
        ("metamathqa", 4, "30", "math"),
        ("medmcqa", 5, "C", "choice"),
    ],
)
def test_paper_dataset_loaders_read_the_real_column_format(task, n_rows, first_answer, answer_format):
    rows = read_rows(FIXTURES / f"{task}.jsonl")
    questions = make_questions(TASKS[task], rows, task)
    assert len(questions) == n_rows
    assert questions[0].answer == first_answer
    assert questions[0].answer_format == answer_format
    assert all(q.question and q.answer for q in questions)


def test_gsm8k_answers_lose_their_thousands_separator_and_keep_the_reasoning():
    q = make_questions(TASKS["gsm8k"], read_rows(FIXTURES / "gsm8k.jsonl"), "gsm8k")[1]
    assert q.answer == "1800"
    assert "1200 / 2" in q.reasoning and "####" not in q.reasoning


def test_medmcqa_row_keeps_options_in_order():
    q = make_questions(TASKS["medmcqa"], read_rows(FIXTURES / "medmcqa.jsonl"), "medmcqa")[0]
    assert q.choices == ("Vitamin A", "Vitamin B12", "Vitamin C", "Vitamin D")


def test_local_file_split_is_disjoint_and_sized():
    train, test = load_task("medmcqa", 3, 2, seed=0, path=str(FIXTURES / "medmcqa.jsonl"))
    assert (len(train), len(test)) == (3, 2)
    assert not {q.id for q in train} & {q.id for q in test}


def test_asking_for_more_questions_than_exist_is_an_error():
    with pytest.raises(DatasetError, match="need 5\\+5"):
        load_task("gsm8k", 5, 5, path=str(FIXTURES / "gsm8k.jsonl"))


def test_overlapping_splits_are_rejected():
    q = Question("a", "t", "Same text", "1", "number")
    with pytest.raises(DatasetError, match="also appears"):
        check_disjoint([q], [Question("b", "t", "same  TEXT", "1", "number")])
