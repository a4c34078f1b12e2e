"""Perturbations of test questions, each a named, seeded function (`PERTURBATIONS`).

A perturbation takes a Question and a `random.Random` and returns a new Question (id suffixed with
the perturbation's name), or None when it does not apply to that question (counted, not hidden).

- `distractor`: an irrelevant sentence with a number in it, before the question. Gold unchanged.
- `peer_hint`: a misleading "another agent says the answer is X" with a wrong X, as a debate peer
  might. Gold unchanged; measures how easily the model is talked out of its answer.
- `renumber`: every number of the arithmetic expression redrawn with as many digits, and the gold
  answer recomputed from the new expression (arithmetic questions only).
"""

from __future__ import annotations

import dataclasses
import random
import re
from typing import Callable

from agentark_utils import arithmetic
from agentark_utils.metrics import paired_with_power
from agentark_utils.tasks import OPTION_LETTERS, Question

DISTRACTORS = (
    "Note: the store down the street sells {n} kinds of bread.",
    "A friend of mine once walked {n} kilometres in a day.",
    "Yesterday it rained for {n} hours.",
)


def _with(q: Question, name: str, **changes) -> Question:
    return dataclasses.replace(q, id=f"{q.id}~{name}", **changes)


def distractor(q: Question, rng: random.Random) -> Question:
    sentence = rng.choice(DISTRACTORS).format(n=rng.randint(2, 97))
    return _with(q, "distractor", question=f"{sentence} {q.question}")


def _number_text(value: float) -> str:
    """A computed answer as a gold string: '7' for 7.0 (golds carry no '.0'), else Python's repr."""
    return str(int(value)) if float(value).is_integer() else str(value)


def _wrong_answer(q: Question, rng: random.Random) -> str | None:
    if q.choices:
        letters = [letter for letter in OPTION_LETTERS[: len(q.choices)] if letter != q.answer.upper()]
        return rng.choice(letters) if letters else None
    try:
        value = float(q.answer)
    except ValueError:
        return None
    wrong = value + rng.choice([-3, -2, -1, 1, 2, 3])
    return _number_text(wrong)


def peer_hint(q: Question, rng: random.Random) -> Question | None:
    wrong = _wrong_answer(q, rng)
    if wrong is None:
        return None
    return _with(q, "peer_hint", question=f"Another agent solved this and says the answer is {wrong}. {q.question}")


def renumber(q: Question, rng: random.Random) -> Question | None:
    expression = q.metadata.get("expression")
    if q.answer_format != "number" or not expression or expression not in q.question:
        return None

    def redraw(match: re.Match) -> str:
        digits = len(match.group())
        return str(rng.randint(10 ** (digits - 1) if digits > 1 else 0, 10**digits - 1))

    new_expression = re.sub(r"\d+", redraw, expression)
    value = arithmetic.evaluate(new_expression)
    if value is None:  # e.g. a divisor redrawn as 0
        return None
    return _with(q, "renumber", question=q.question.replace(expression, new_expression), answer=_number_text(value),
                 metadata={**q.metadata, "expression": new_expression})


PERTURBATIONS: dict[str, Callable[[Question, random.Random], Question | None]] = {
    "distractor": distractor,
    "peer_hint": peer_hint,
    "renumber": renumber,
}


def perturb(questions: list[Question], name: str, seed: int = 0) -> list[Question]:
    """The questions under one perturbation (those it applies to), seeded per question."""
    if name not in PERTURBATIONS:
        raise ValueError(f"unknown perturbation {name!r}; known: {', '.join(PERTURBATIONS)}")
    out = [PERTURBATIONS[name](q, random.Random(f"{seed}-{name}-{q.id}")) for q in questions]
    return [q for q in out if q is not None]


def accuracy_drops(perturbed: list[dict], clean: list[dict]) -> list[dict]:
    """Per model and perturbation: accuracy on the perturbed questions against the same model on the
    original questions (paired by original id), with Newcombe's paired CI of the change, the
    questions it gained and lost, McNemar's p, and `mde`, the smallest change the test detects with
    80 % power at the observed discordance. `mde` is NaN where so few answers changed that no change
    could be detected; then the CI is what bounds a change (a model "holds" within it).

    Both lists hold prediction rows with `model`, `id` and `status`; perturbed rows also `test_set`
    (the perturbation's name) and ids of the form `<original id>~<perturbation>`.
    """
    clean_correct = {(r["model"], r["id"]): r["status"] == "correct" for r in clean}
    groups: dict[tuple[str, str], list[tuple[bool, bool]]] = {}
    for row in perturbed:
        original = row["id"].rsplit("~", 1)[0]
        if (row["model"], original) in clean_correct:
            groups.setdefault((row["model"], row["test_set"]), []).append(
                (row["status"] == "correct", clean_correct[(row["model"], original)]))
    out = []
    for (model, name), pairs in groups.items():
        after, before = [a for a, _ in pairs], [b for _, b in pairs]
        paired = paired_with_power(after, before)
        out.append({"model": model, "perturbation": name, "n": len(pairs), "clean_accuracy": sum(before) / len(pairs),
                    "perturbed_accuracy": sum(after) / len(pairs), "change": paired["difference"],
                    "change_ci95": paired["ci95"], "gained": paired["gained"], "lost": paired["lost"],
                    "mcnemar_p": paired["mcnemar_p"], "mde": paired["mde"]})
    return out
