"""Each perturbation, table-driven, graded by the real checkers."""

import random

import pytest

from agentark_utils.answers import is_correct
from agentark_utils.arithmetic import evaluate
from agentark_utils.robustness import PERTURBATIONS, perturb
from agentark_utils.tasks import Question, load_task

RG = load_task("arith_mix", 0, 12, seed=0)[1]
CHOICE = Question("m1", "medmcqa", "Which?", "B", "choice", ["x", "y", "z"])
WORDS = Question("w1", "gsm8k", "How many?", "many", "math")


def test_renumber_recomputes_a_gold_answer_the_checker_accepts():
    changed = perturb(RG, "renumber", seed=0)
    assert len(changed) == len(RG)
    for old, new in zip(RG, changed):
        assert new.id == f"{old.id}~renumber" and new.metadata["expression"] in new.question
        assert new.answer == str(evaluate(new.metadata["expression"]))
        assert is_correct(new, new.answer)
        assert [len(n) for n in __import__("re").findall(r"\d+", new.metadata["expression"])] == \
               [len(n) for n in __import__("re").findall(r"\d+", old.metadata["expression"])]
    assert any(new.answer != old.answer for old, new in zip(RG, changed))


@pytest.mark.parametrize("name, question, applies", [
    ("distractor", RG[0], True),
    ("distractor", CHOICE, True),
    ("peer_hint", RG[0], True),
    ("peer_hint", CHOICE, True),
    ("peer_hint", WORDS, False),  # no wrong answer to suggest for a non-numeric answer
    ("renumber", RG[0], True),
    ("renumber", CHOICE, False),
    ("renumber", WORDS, False),
])
def test_which_questions_each_perturbation_applies_to(name, question, applies):
    result = PERTURBATIONS[name](question, random.Random(0))
    assert (result is not None) == applies
    if result is not None and name != "renumber":
        assert result.answer == question.answer and question.question in result.question


def test_peer_hint_is_always_wrong_and_seeded():
    for q in RG + [CHOICE]:
        hinted = perturb([q], "peer_hint", seed=3)[0]
        suggested = hinted.question.split("says the answer is ")[1].split(".")[0]
        assert not is_correct(q, suggested)
    assert perturb(RG, "distractor", seed=1) == perturb(RG, "distractor", seed=1)
    assert perturb(RG, "distractor", seed=1) != perturb(RG, "distractor", seed=2)
    with pytest.raises(ValueError, match="unknown perturbation"):
        perturb(RG, "typos")


def test_accuracy_drops_pair_by_original_question():
    from agentark_utils.robustness import accuracy_drops

    clean = [{"model": "m", "id": "a", "status": "correct"}, {"model": "m", "id": "b", "status": "correct"},
             {"model": "m", "id": "c", "status": "wrong"}, {"model": "n", "id": "a", "status": "wrong"}]
    perturbed = [{"model": "m", "id": "a~hint", "test_set": "hint", "status": "wrong"},
                 {"model": "m", "id": "b~hint", "test_set": "hint", "status": "correct"},
                 {"model": "m", "id": "c~hint", "test_set": "hint", "status": "unparsed"},
                 {"model": "n", "id": "a~hint", "test_set": "hint", "status": "correct"}]
    rows = {r["model"]: r for r in accuracy_drops(perturbed, clean)}
    assert (rows["m"]["n"], rows["m"]["clean_accuracy"], rows["m"]["perturbed_accuracy"]) == (3, 2 / 3, 1 / 3)
    assert rows["m"]["change"] == pytest.approx(-1 / 3)
    assert rows["n"]["change"] == 1.0 and rows["n"]["perturbation"] == "hint"


def test_accuracy_drops_say_what_each_comparison_could_detect():
    """"Holds" needs the smallest change the questions could have shown, beside gained and lost."""
    import math

    from agentark_utils.metrics import minimum_detectable_effect
    from agentark_utils.robustness import accuracy_drops

    ids = [f"q{i}" for i in range(100)]
    clean = [{"model": m, "id": i, "status": "correct" if k < 50 else "wrong"} for m in "mn" for k, i in enumerate(ids)]
    # m loses 30 of its 50 right answers and gains 5; n answers every perturbed question as before.
    perturbed = [{"model": "m", "id": f"{i}~hint", "test_set": "hint",
                  "status": "wrong" if k < 30 else "correct" if 50 <= k < 55 else clean[k]["status"]}
                 for k, i in enumerate(ids)]
    perturbed += [{"model": "n", "id": f"{i}~hint", "test_set": "hint", "status": clean[k]["status"]}
                  for k, i in enumerate(ids)]
    rows = {r["model"]: r for r in accuracy_drops(perturbed, clean)}
    assert (rows["m"]["gained"], rows["m"]["lost"], rows["m"]["change"]) == (5, 30, pytest.approx(-0.25))
    assert rows["m"]["mde"] == pytest.approx(minimum_detectable_effect(100, 0.35)) and 0 < rows["m"]["mde"] < 0.35
    assert rows["m"]["mcnemar_p"] < 0.001
    assert (rows["n"]["gained"], rows["n"]["lost"]) == (0, 0) and math.isnan(rows["n"]["mde"])


@pytest.mark.parametrize("seed", range(6))
def test_renumber_reads_division_and_skips_a_zero_divisor(seed):
    # the evaluator it shares with extraction reads '/': a division expression is renumbered with a
    # correct answer, or skipped when the redrawn divisor is 0, never an error
    q = Question("d1", "basic_arithmetic", "Calculate 8 / 2.", "4", "number", metadata={"expression": "8 / 2"})
    new = PERTURBATIONS["renumber"](q, random.Random(seed))
    if new is not None:
        a, b = map(int, new.metadata["expression"].split(" / "))
        assert float(new.answer) == a / b
