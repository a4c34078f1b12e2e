"""Answers: extraction as named filters, then a grade of correct / wrong / unparsed.

An answer that no filter can read is *unparsed*, counted apart from *wrong*: a weak model that
never states an answer is a different failure from one that states a wrong one.

- number (reasoning-gym): filters pick a candidate, then reasoning-gym's own scorer judges it;
  its partial credit (e.g. 0.01 for a mis-formatted answer) counts as wrong, only 1.0 is correct.
- math (GSM8K, MATH, MetaMathQA): `math-verify` decides equivalence (1,234 = 1234, 1/2 = 0.5).
- choice (MedMCQA): a single option letter.
"""

from __future__ import annotations

import re
from collections import Counter
from dataclasses import dataclass
from functools import lru_cache
from typing import Callable, Literal

from agentark_utils.tasks import Question

Status = Literal["correct", "wrong", "unparsed"]
EXTRACTORS: dict[str, Callable[[str], str | None]] = {}


def extractor(name: str):
    def register(fn: Callable[[str], str | None]):
        EXTRACTORS[name] = fn
        return fn

    return register


_NUMBER = r"-?\d[\d,]*(?:\.\d+)?(?:\s*/\s*\d+)?|-?\.\d+"


def _last_boxed(text: str) -> str | None:
    """Content of the last \\boxed{...}, with nested braces matched."""
    start = text.rfind("\\boxed")
    if start < 0:
        return None
    i = text.find("{", start)
    if i < 0:
        return None
    depth, j = 0, i
    while j < len(text):
        depth += {"{": 1, "}": -1}.get(text[j], 0)
        if depth == 0:
            return text[i + 1 : j].strip() or None
        j += 1
    return None


@extractor("boxed")
def extract_boxed(text: str) -> str | None:
    return _last_boxed(text)


_FINAL = re.compile(r"final\s+answer\s*(?:is)?\s*[:：]?\s*(.+)", re.I)
_ANSWER_IS = re.compile(r"\banswer\s+is\s*[:：]?\s*(.+)", re.I)


def _clean(candidate: str) -> str | None:
    candidate = candidate.strip().strip("*").strip()
    boxed = _last_boxed(candidate)
    if boxed:
        return boxed
    candidate = candidate.strip("$").strip().rstrip(".").strip()
    return candidate or None


@extractor("final_answer")
def extract_final_answer(text: str) -> str | None:
    """The rest of the line after the last 'Final Answer:'."""
    matches = [m.group(1).splitlines()[0] for m in _FINAL.finditer(text)]
    return _clean(matches[-1]) if matches else None


@extractor("answer_is")
def extract_answer_is(text: str) -> str | None:
    matches = [m.group(1).splitlines()[0] for m in _ANSWER_IS.finditer(text)]
    return _clean(matches[-1]) if matches else None


@extractor("last_number")
def extract_last_number(text: str) -> str | None:
    numbers = re.findall(_NUMBER, text)
    return numbers[-1] if numbers else None


_LETTER_PATTERNS = [
    # The candidate is a letter, alone or followed by its option text: "B", "(B)", "B.", "B) 1 year".
    # A bare letter followed by a word ("I think", "A patient") is prose, not an answer.
    re.compile(r"^(?:(?i:answer)\s*[:：]?\s*)?\(?([A-Ja-j])\)?(?:$|[.:)]\s*|\)\s*\S)"),
    re.compile(r"\b(?:option|choice)\s+(?:is\s+)?\(?([A-J])\)?(?:\b|$)", re.I),
]


@extractor("choice_letter")
def extract_choice_letter(text: str) -> str | None:
    """An option letter: from the final-answer line if there is one, else a letter on the last line."""
    candidate = extract_boxed(text) or extract_final_answer(text) or extract_answer_is(text)
    lines = [candidate] if candidate else [line.strip() for line in text.strip().splitlines()[-1:]]
    for line in lines:
        for pattern in _LETTER_PATTERNS:
            match = pattern.search(line.strip().strip("*"))
            if match:
                return match.group(1).upper()
    return None


def first_number(candidate: str) -> str | None:
    """Reduce a candidate like '1,234 apples', '$-7$' or '58 + 26 = 84' to the number it states.

    Weak models restate the sum ("Final Answer: 58 + 26 = 84"): the result follows the last '='.
    """
    candidate = re.sub(r"\\[dt]?frac\{([^{}]+)\}\{([^{}]+)\}", r"\1/\2", candidate.rsplit("=", 1)[-1])
    match = re.search(_NUMBER, candidate)
    if match is None:
        return None
    return re.sub(r"[,\s]", "", match.group(0))


def math_candidate(candidate: str) -> str | None:
    """The value a math candidate states: what follows the last '=', if math-verify can read it.

    An echoed placeholder from the prompt ('<answer>') is no answer.
    """
    from math_verify import parse

    candidate = candidate.rsplit("=", 1)[-1].strip()
    if not candidate or re.search(r"<\w+>", candidate):
        return None
    return candidate if parse(f"${candidate}$") or parse(candidate) else None


# Per answer format: the filters tried in order, and how a filter's candidate is reduced to an
# answer. The first filter whose candidate reduces to something wins.
CHAINS: dict[str, tuple[str, ...]] = {
    "number": ("boxed", "final_answer", "answer_is", "last_number"),
    "math": ("boxed", "final_answer", "answer_is", "last_number"),
    "choice": ("choice_letter",),
}
REDUCERS: dict[str, Callable[[str], str | None]] = {
    "number": first_number,
    "math": math_candidate,
    "choice": lambda letter: letter,
}


def extract(text: str, answer_format: str) -> str | None:
    """The answer stated in a model output, or None if none can be read."""
    if not text or not text.strip():
        return None
    for name in CHAINS[answer_format]:
        candidate = EXTRACTORS[name](text)
        answer = REDUCERS[answer_format](candidate) if candidate is not None else None
        if answer is not None:
            return answer
    return None


@dataclass(frozen=True)
class Grade:
    answer: str | None
    status: Status

    @property
    def correct(self) -> bool:
        return self.status == "correct"


@lru_cache(maxsize=None)
def _rg_scorer(dataset: str):
    import reasoning_gym

    return reasoning_gym.get_score_answer_fn(dataset)


def _math_equal(gold: str, answer: str) -> bool:
    from math_verify import parse, verify

    gold_parsed = parse(f"${gold}$") or parse(gold)
    answer_parsed = parse(f"${answer}$") or parse(answer)
    return bool(gold_parsed and answer_parsed and verify(gold_parsed, answer_parsed))


def is_correct(question: Question, answer: str) -> bool:
    if question.answer_format == "number" and "source_dataset" in question.metadata:
        entry = {"question": question.question, "answer": question.answer, "metadata": question.metadata}
        return _rg_scorer(question.metadata["source_dataset"])(answer, entry) == 1.0
    if question.answer_format == "choice":
        return answer.upper() == question.answer.upper()
    return _math_equal(question.answer, answer)


def grade(question: Question, text: str) -> Grade:
    answer = extract(text, question.answer_format)
    if answer is None:
        return Grade(None, "unparsed")
    return Grade(answer, "correct" if is_correct(question, answer) else "wrong")


def answer_key(answer: str | None) -> str | None:
    """A canonical form for comparing answers between agents (consensus, majority vote)."""
    if answer is None:
        return None
    text = answer.strip().replace(",", "").replace(" ", "").strip("$")
    try:
        value = float(text)
    except ValueError:
        return text.lower()
    return str(int(value)) if value.is_integer() else repr(value)


def majority(answers: list[str | None]) -> str | None:
    """Most common parsed answer (by canonical key); ties go to the answer seen first."""
    keys = [answer_key(a) for a in answers]
    counts = Counter(k for k in keys if k is not None)
    if not counts:
        return None
    best = max(counts.values())
    for key, answer in zip(keys, answers):
        if key is not None and counts[key] == best:
            return answer
    return None
