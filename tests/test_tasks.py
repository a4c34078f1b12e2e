import dataclasses
import json
import math
import re
from collections import Counter

import pytest

from agentark_utils.metrics import accuracy_by_stratum
from agentark_utils.tasks import (TASKS, DatasetError, Question, check_disjoint, expression_key, load_task,
                                  load_validation, make_questions, read_rows, reasoning_gym_pool)
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
        ("gsm8k", 8, "29", "math"),
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


# --- reasoning-gym splits: stable test set, strata, de-duplication by expression, capacity ------

@pytest.mark.parametrize("task, n_test, seed", [("arith_mix", 32, 0), ("arith_mix", 32, 1), ("add_sub", 20, 3)])
def test_test_set_does_not_depend_on_n_train_and_grows_as_a_prefix(task, n_test, seed):
    splits = {n_train: load_task(task, n_train, n_test, seed=seed) for n_train in (0, 48, 96, 192)}
    assert all(test == splits[0][1] for _, test in splits.values())
    assert load_task(task, 0, n_test + 8, seed=seed)[1][:n_test] == splits[0][1]
    # A larger training set extends the smaller one, so scaling points are nested.
    assert splits[96][0][:48] == splits[48][0] and splits[192][0][:96] == splits[96][0]
    for n_train, (train, test) in splits.items():
        assert len(train) == n_train
        assert not {expression_key(q) for q in train} & {expression_key(q) for q in test}


def _within_rounding(questions, shares):
    """Every stratum has the floor or the ceiling of its share of len(questions)."""
    counts, total, n = Counter(q.metadata["stratum"] for q in questions), sum(shares.values()), len(questions)
    return all(math.floor(share * n / total) <= counts[s] <= math.ceil(share * n / total) for s, share in shares.items())


@pytest.mark.parametrize("task, n_train, n_test, seed", [
    ("arith_mix", 48, 32, 0), ("arith_mix", 384, 32, 0), ("arith_mix", 96, 200, 2), ("chain_sum", 100, 50, 1)])
def test_train_and_test_have_the_same_stratum_mix(task, n_train, n_test, seed):
    train, test = load_task(task, n_train, n_test, seed=seed)
    shares = Counter(q.metadata["stratum"] for q in reasoning_gym_pool(TASKS[task], seed))
    assert _within_rounding(train, shares) and _within_rounding(test, shares)


@pytest.mark.parametrize("text_a, meta_a, text_b, meta_b, same", [
    ("Calculate 6 + 9.", {"expression": "6 + 9"},
     "State the final answer to the following arithmetic problem: 6+9 =", {"expression": "6+9"}, True),
    ("Calculate 6 + 9.", {"expression": "6 + 9"}, "Calculate 9 + 6.", {"expression": "9 + 6"}, False),
    ("Solve for q: q + 5 = 12", {"equation": "q + 5 = 12", "variable": "q"},
     "Find the value of x in the equation: x + 5 = 12", {"equation": "x + 5 = 12", "variable": "x"}, True),
    ("Solve for q: 5 - q = 1", {"equation": "5 - q = 1", "variable": "q"},
     "Solve for q: q - 5 = 1", {"equation": "q - 5 = 1", "variable": "q"}, False),
    ("Same text", {}, "same  TEXT", {}, True),  # hub questions: their normalized text
])
def test_expression_key_ignores_templates_whitespace_and_variable_names(text_a, meta_a, text_b, meta_b, same):
    a = Question("a", "t", text_a, "1", "number", metadata=meta_a)
    b = Question("b", "t", text_b, "1", "number", metadata=meta_b)
    assert (expression_key(a) == expression_key(b)) is same


def test_one_sum_under_two_generators_templates_is_not_disjoint():
    chain = Question("chain_sum-1-0-7", "arith_mix", "State the final answer to the following arithmetic problem: 6 + 9 =",
                     "15", "number", metadata={"source_dataset": "chain_sum", "expression": "6 + 9"})
    basic = Question("basic_arithmetic-0-0-3", "arith_mix", "Calculate 6 + 9.", "15", "number",
                     metadata={"source_dataset": "basic_arithmetic", "expression": "6 + 9"})
    with pytest.raises(DatasetError, match="also appears"):
        check_disjoint([chain], [basic])


def test_arith_mix_gives_1000_distinct_questions_by_expression():
    train, test = load_task("arith_mix", 968, 32, seed=0)
    assert len({expression_key(q) for q in train + test}) == 1000


@pytest.mark.parametrize("weights", [(3, 1, 1), (1, 1, 2)])
def test_component_weights_set_the_component_mix(monkeypatch, weights):
    spec = TASKS["arith_mix"]
    components = tuple(dataclasses.replace(c, weight=w) for c, w in zip(spec.components, weights))
    monkeypatch.setitem(TASKS, "arith_mix", dataclasses.replace(spec, components=components))
    train, test = load_task("arith_mix", 200, 100, seed=0)
    for split in (train, test):
        counts = Counter(int(q.id.split("-")[2]) for q in split)  # ids: <task>-<dataset>-<component>-<seed>-<index>
        for offset, weight in enumerate(weights):
            assert abs(counts[offset] - len(split) * weight / sum(weights)) <= 2


@pytest.mark.parametrize("task, n_train, n_test, at_least", [
    ("arith_mix", 5000, 32, 1000 - 32),
    ("equations", 0, 1000, 200),  # the out-of-domain test family
])
def test_a_request_above_capacity_fails_naming_the_capacity(task, n_train, n_test, at_least):
    with pytest.raises(DatasetError, match=r"capacity \d+") as error:
        load_task(task, n_train, n_test, seed=1)
    capacity = int(re.search(r"capacity (\d+)", str(error.value)).group(1))
    assert capacity >= at_least
    sizes = (capacity, n_test) if n_train else (0, capacity)
    train, test = load_task(task, *sizes, seed=1)  # the named capacity is served ...
    assert len({expression_key(q) for q in train + test}) == sum(sizes)
    with pytest.raises(DatasetError, match="capacity"):  # ... and one more question is not
        load_task(task, sizes[0] + bool(n_train), sizes[1] + (not n_train), seed=1)


def test_accuracy_by_stratum_counts_each_stratum_with_a_wilson_interval():
    strata = ["easy"] * 4 + ["hard"] * 5 + [None]
    questions = [Question(str(i), "t", "q", "1", "number", metadata={"stratum": s} if s else {})
                 for i, s in enumerate(strata)]
    correct = [True, True, True, False] + [False] * 5 + [True]
    table = accuracy_by_stratum(questions, correct).set_index("stratum")
    assert table["n"].to_dict() == {"all": 1, "easy": 4, "hard": 5}
    assert table["accuracy"].to_dict() == {"all": 1.0, "easy": 0.75, "hard": 0.0}
    # Wilson 95 % intervals, as published for 3/4 and 0/5 (and scipy's binomtest gives)
    assert table.loc["easy", ["ci_low", "ci_high"]].tolist() == pytest.approx([0.3006, 0.9544], abs=1e-4)
    assert table.loc["hard", ["ci_low", "ci_high"]].tolist() == pytest.approx([0.0, 0.4345], abs=1e-4)
    assert table.loc["all", ["ci_low", "ci_high"]].tolist() == pytest.approx([0.2065, 1.0], abs=1e-4)


def test_splits_of_two_reasoning_gym_tasks_never_share_an_id():
    """In-domain and out-of-domain generators can share a component: ids name the task."""
    from types import SimpleNamespace

    from agentark_utils.tasks import load_splits

    data = SimpleNamespace(task="mul", n_train=20, n_test=10, seed=0, path=None, ood_tasks=["add_sub"], n_ood=10,
                           ood_paths={})
    splits = load_splits(data)
    ids = [q.id for qs in splits.values() for q in qs]
    assert len(ids) == len(set(ids)) == 40
    assert all(q.id.startswith("add_sub-") for q in splits["ood:add_sub"])


def test_an_out_of_domain_hub_set_reads_its_local_file():
    """`data.ood_paths`: MedMCQA from a file in its own format, no hub; a path for no OOD task is refused."""
    from agentark_utils.config import DataParams
    from agentark_utils.tasks import load_splits

    data = DataParams(task="gsm8k", path=str(FIXTURES / "gsm8k.jsonl"), n_train=2, n_test=2, ood_tasks=["medmcqa"],
                      n_ood=3, ood_paths={"medmcqa": str(FIXTURES / "medmcqa.jsonl")})
    ood = load_splits(data)["ood:medmcqa"]
    fixture = {json.loads(line)["question"] for line in (FIXTURES / "medmcqa.jsonl").read_text().splitlines()}
    assert len(ood) == 3 and all(q.answer_format == "choice" for q in ood)
    assert all(q.question.splitlines()[0] in fixture for q in ood)
    with pytest.raises(ValueError, match=r"ood_paths: \['math500'\] not in ood_tasks"):
        DataParams(task="gsm8k", n_train=2, n_test=2, ood_tasks=["medmcqa"], ood_paths={"math500": "x.jsonl"})
    missing = DataParams(task="gsm8k", path=str(FIXTURES / "gsm8k.jsonl"), n_train=2, n_test=2, ood_tasks=["medmcqa"],
                         ood_paths={"medmcqa": "x.jsonl"})
    with pytest.raises(DatasetError, match="x.jsonl: no such dataset file"):
        load_splits(missing)
    generated = DataParams(task="gsm8k", path=str(FIXTURES / "gsm8k.jsonl"), n_train=2, n_test=2,
                           ood_tasks=["equations"], ood_paths={"equations": str(FIXTURES / "gsm8k.jsonl")})
    with pytest.raises(DatasetError, match="task equations is generated .reasoning-gym.: it reads no file"):
        load_splits(generated)


def test_split_questions_reads_one_split_of_the_records_in_order():
    from agentark_utils.tasks import Question, split_questions

    qs = [Question(id=f"q{i}", task="arith_mix", question=f"{i}+1", answer=str(i + 1), answer_format="number")
          for i in range(4)]
    records = [{"split": split, "question": q.to_dict()} for split, q in zip(["train", "test", "train", "ood:mul"], qs)]
    assert split_questions(records, "train") == [qs[0], qs[2]]
    assert split_questions(records, "ood:mul") == [qs[3]]
    assert split_questions(records, "test")[0].choices == ()


@pytest.mark.parametrize("task, n_train, n_test, n, path", [
    ("arith_mix", 8, 10, 12, None),  # the training list continued
    ("gsm8k", 2, 2, 3, str(FIXTURES / "gsm8k.jsonl")),  # one pool: after train and test
])
def test_validation_questions_are_new_stable_and_held_out(task, n_train, n_test, n, path):
    """No stage sees them: disjoint from the run's train and test by expression, the same whatever
    n asks beyond them (a prefix), and short of the pool an error, not fewer questions."""
    train, test = load_task(task, n_train, n_test, seed=0, path=path)
    validation = load_validation(task, n_train, n_test, n, seed=0, path=path)
    assert len(validation) == n == len({expression_key(q) for q in validation})
    seen = {expression_key(q) for q in train + test}
    assert not seen & {expression_key(q) for q in validation}
    assert load_validation(task, n_train, n_test, n - 1, seed=0, path=path) == validation[:-1]
    assert load_validation(task, n_train, n_test, n, seed=1, path=path) != validation


def test_asking_for_more_validation_questions_than_are_left_is_an_error():
    with pytest.raises(DatasetError, match="too few questions for 5 validation questions .*need 2\\+7"):  # 8 rows
        load_validation("gsm8k", 2, 2, 5, path=str(FIXTURES / "gsm8k.jsonl"))


def test_validation_questions_of_a_hub_set_with_its_own_splits(monkeypatch):
    """GSM8K from the hub (stood in for): train and test are its official splits; the validation
    questions continue the training list, never repeat a test question (here one training row
    duplicates a test row), and a request past the split's end is an error."""
    from agentark_utils import tasks

    rows = read_rows(FIXTURES / "gsm8k.jsonl")
    splits = {"test": rows[:3], "train": rows[3:] + [rows[0]]}
    monkeypatch.setattr(tasks, "_hub_rows", lambda spec, split: splits[split])
    train, test = load_task("gsm8k", 2, 2)
    validation = load_validation("gsm8k", 2, 2, 3)
    assert len(validation) == 3 and load_task("gsm8k", 5, 2)[0][2:] == validation
    hub_test = {expression_key(q) for q in make_questions(TASKS["gsm8k"], splits["test"], "gsm8k")}
    assert not hub_test & {expression_key(q) for q in validation}  # the duplicated test row is not among them
    assert not {expression_key(q) for q in train + test} & {expression_key(q) for q in validation}
    with pytest.raises(DatasetError, match="too few questions for 4 validation questions"):
        load_validation("gsm8k", 2, 2, 4)
