"""Answers: extraction as named filters, then a grade of correct / wrong / unparsed.

An answer that no filter can read is *unparsed*, counted apart from *wrong*: a weak model that
never states an answer is a different failure from one that states a wrong one.

Every grade is given twice, as lm-evaluation-harness reports strict-match beside flexible-extract:
the *flexible* status takes the answer from any filter (down to the last number in free text); the
*strict* status counts only an answer stated on an explicit final-answer line ("Final Answer:" or
\\boxed{}), so a model that does not follow the answer format is visible as strictly unparsed.

- number (reasoning-gym): filters pick a candidate, reduced to one canonical number (18.0, +18 and
  $18$ are 18; -4 stays -4), then reasoning-gym's own scorer judges it; its partial credit (e.g. 0.01
  for a mis-formatted answer) counts as wrong, only 1.0 is correct.
- math (GSM8K, MATH, MetaMathQA): `math-verify` decides equivalence (1,234 = 1234, 1/2 = 0.5).
- choice (MedMCQA): a single option letter, one of the question's options.
"""

from __future__ import annotations

import re
from collections import Counter
from dataclasses import dataclass
from functools import lru_cache
from typing import Callable, Literal, NamedTuple

from agentark_utils.tasks import OPTION_LETTERS, Question

Status = Literal["correct", "wrong", "unparsed"]
EXTRACTORS: dict[str, Callable[[str], str | None]] = {}
# The filters that read an explicit final-answer line; each chain tries them before any fallback.
STRICT_EXTRACTORS = frozenset({"boxed", "final_answer"})


def extractor(name: str):
    def register(fn: Callable[[str], str | None]):
        EXTRACTORS[name] = fn
        return fn

    return register


# Models write minus as U+2212 (math typesetting) or as a dash; all mean '-'.
_MINUS = str.maketrans({"\u2212": "-", "\u2013": "-", "\ufe63": "-", "\uff0d": "-"})
# Digits with commas only in real thousands groups: '1,234' is a number, '1,2' a list.
_INTEGER = r"(?:\d{1,3}(?:,\d{3})+(?!\d)|\d+)"
# A number in running text: a sign belongs to it only when it does not follow an operand ('58-26').
_NUMBER = re.compile(rf"(?:(?<![\w).])[-+])?(?:{_INTEGER}(?:\.\d+)?(?:\s*/\s*\d+)?|\.\d+)")
# A text that is one number: sign (a space may follow it), digits, decimals ('18.' too), a denominator.
_LONE_NUMBER = re.compile(rf"([-+]?)\s*({_INTEGER}(?:\.\d*)?|\.\d+)(?:\s*/\s*(\d+))?")


def canonical_number(text: str) -> str | None:
    """The canonical form of a text that is one number, else None: '18.0', '+18', '$18$', '18.' -> '18';
    '−4', '- 4' -> '-4'; '1,234' -> '1234'; '3.50' -> '3.5'; '06/8' -> '6/8'.

    The one number normaliser: extraction, grading and the comparison of answers all use it. Digits
    are rewritten as text, never converted, so no length limit or rounding applies.
    """
    text = text.translate(_MINUS).strip().strip("$").strip()
    match = _LONE_NUMBER.fullmatch(text)
    if match is None:
        return None
    sign, number, denominator = match.groups()
    integer, _, decimals = number.replace(",", "").partition(".")
    decimals = decimals.rstrip("0")
    value = (integer.lstrip("0") or "0") + (f".{decimals}" if decimals else "")
    if denominator is not None:
        denominator = denominator.lstrip("0")
        if not denominator:
            return None
        value += f"/{denominator}"
    if value == "0" or value.startswith("0/"):  # zero has no sign: '-0' is '0'
        return "0"
    return f"-{value}" if sign == "-" else value


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


def _clean(candidate: str) -> str | None:
    """A candidate without the markdown and LaTeX around it: '**18**', '$18$.', '$\\boxed{18}$' -> '18'."""
    boxed = _last_boxed(candidate)
    if boxed:
        return boxed
    # A leading '.' is kept: '.5' is a number.
    candidate = re.sub(r"^[\s*_$]+|[\s*_$.]+$", "", candidate)
    return candidate or None


@extractor("boxed")
def extract_boxed(text: str) -> str | None:
    return _last_boxed(text)


# 'Final Answer: 18', '**Final Answer:** 18', '*Final answer*: 18', 'The final answer is: 18'; or a line
# that is only the marker, a heading such as '### Final Answer', with the answer on the next line.
_FINAL = re.compile(r"final\s+answer(?:\s+is)?[ \t*_]*[:：]|^[ \t#*_>]*final\s+answer[ \t#*_]*$", re.I | re.M)
_ANSWER_IS = re.compile(r"\banswer\s+is\s*[:：]?\s*(.+)", re.I)


@extractor("final_answer")
def extract_final_answer(text: str) -> str | None:
    """What the last final-answer marker states: the rest of its line, or else the next non-empty line."""
    for match in reversed(list(_FINAL.finditer(text))):
        line, _, below = text[match.end():].partition("\n")
        next_line = next((rest for rest in below.splitlines() if rest.strip()), "")
        candidate = _clean(line) or _clean(next_line)
        if candidate:
            return candidate
    return None


@extractor("answer_is")
def extract_answer_is(text: str) -> str | None:
    matches = [m.group(1).splitlines()[0] for m in _ANSWER_IS.finditer(text)]
    return _clean(matches[-1]) if matches else None


@extractor("last_number")
def extract_last_number(text: str) -> str | None:
    numbers = _NUMBER.findall(text)
    return numbers[-1] if numbers else None


@extractor("last_line")
def extract_last_line(text: str) -> str | None:
    lines = text.strip().splitlines()
    return _clean(lines[-1]) if lines else None


def _stated_side(candidate: str) -> str:
    """The side of a restated equation that is the result: a lone number, on whichever side it stands
    ('58 + 26 = 84' and '84 = 58 + 26' -> '84'), else the last side ('x = \\frac{1}{2}')."""
    sides = candidate.split("=")
    return next((side for side in reversed(sides) if canonical_number(side)), sides[-1])


def stated_number(candidate: str) -> str | None:
    """The canonical number a candidate states: '- 4' -> '-4', '1,234 apples' -> '1234', '58 + 26 = 84' -> '84'."""
    side = _stated_side(re.sub(r"\\[dt]?frac\{([^{}]+)\}\{([^{}]+)\}", r"\1/\2", candidate))
    lone = canonical_number(side)
    if lone is not None:
        return lone
    match = _NUMBER.search(side)
    return canonical_number(match.group(0)) if match else None


def stated_math(candidate: str) -> str | None:
    """The value a math candidate states, if math-verify can read it; a lone number in canonical form.

    An echoed placeholder from the prompt ('<answer>') is no answer.
    """
    from math_verify import parse

    side = _stated_side(candidate).strip()
    if not side or re.search(r"<\w+>", side):
        return None
    lone = canonical_number(side)
    if lone is not None:
        return lone
    return side if parse(f"${side}$") or parse(side) else None


_LETTER_PATTERNS = [
    # The candidate is a letter, alone or followed by its option text: "B", "(B)", "B.", "B) 1 year".
    # A bare letter followed by a word ("I think", "A patient") is prose, not an answer.
    re.compile(r"^(?:(?i:answer)\s*[:：]?\s*)?\(?([A-Ja-j])\)?(?:$|[.:)]\s*|\)\s*\S)"),
    re.compile(r"\b(?:option|choice)\s+(?:is\s+)?\(?([A-J])\)?(?:\b|$)", re.I),
]


def stated_letter(candidate: str, n_options: int) -> str | None:
    """The option letter a candidate states, if it is one of the question's `n_options` options."""
    for pattern in _LETTER_PATTERNS:
        match = pattern.search(candidate)
        # A letter past the options ('E' of four) is no answer to this question.
        if match and OPTION_LETTERS.index(match.group(1).upper()) < n_options:
            return match.group(1).upper()
    return None


# Per answer format: the filters tried in order, strict ones first, and how a filter's candidate is
# reduced to an answer. The first filter whose candidate reduces to something wins.
CHAINS: dict[str, tuple[str, ...]] = {
    "number": ("boxed", "final_answer", "answer_is", "last_number"),
    "math": ("boxed", "final_answer", "answer_is", "last_number"),
    "choice": ("boxed", "final_answer", "answer_is", "last_line"),
}
REDUCERS: dict[str, Callable[[str, Question], str | None]] = {
    "number": lambda candidate, question: stated_number(candidate),
    "math": lambda candidate, question: stated_math(candidate),
    "choice": lambda candidate, question: stated_letter(candidate, len(question.choices)),
}


class Extraction(NamedTuple):
    """An answer read from a model output."""

    answer: str
    extractor: str  # the name of the filter that read it


def extract(text: str, question: Question) -> Extraction | None:
    """The answer a model output states to `question`, and the filter that read it; None if none can."""
    if not text or not text.strip():
        return None
    text = text.translate(_MINUS)
    for name in CHAINS[question.answer_format]:
        candidate = EXTRACTORS[name](text)
        answer = REDUCERS[question.answer_format](candidate, question) if candidate is not None else None
        if answer is not None:
            return Extraction(answer, name)
    return None


@dataclass(frozen=True)
class Grade:
    answer: str | None
    status: Status  # flexible: the answer any filter read
    extractor: str | None  # the filter that read the answer; None when unparsed
    strict_status: Status  # only an answer on a final-answer line counts; others are unparsed


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
        # Some reasoning-gym scorers match strings exactly: they must all see the canonical number.
        entry = {"question": question.question, "answer": question.answer, "metadata": question.metadata}
        return _rg_scorer(question.metadata["source_dataset"])(canonical_number(answer) or answer, entry) == 1.0
    if question.answer_format == "choice":
        return answer.upper() == question.answer.upper()
    return _math_equal(question.answer, answer)


def judge(question: Question, answer: str | None) -> Status:
    """The status of an answer already extracted: unparsed (None), correct or wrong."""
    if answer is None:
        return "unparsed"
    return "correct" if is_correct(question, answer) else "wrong"


def grade(question: Question, text: str) -> Grade:
    found = extract(text, question)
    if found is None:
        return Grade(None, "unparsed", None, "unparsed")
    status = judge(question, found.answer)
    return Grade(found.answer, status, found.extractor, status if found.extractor in STRICT_EXTRACTORS else "unparsed")


def answer_key(answer: str | None) -> str | None:
    """A canonical form for comparing answers between agents (consensus, majority vote):
    the canonical number, else the answer without case or spaces."""
    if answer is None:
        return None
    return canonical_number(answer) or re.sub(r"\s+", "", answer).strip("$").lower()


def majority(answers: list[str | None]) -> str | None:
    """Most common parsed answer (by `answer_key`), as the canonical number where it is one, so a
    scorer sees '18' and not the first surface form '18.0'; ties go to the answer seen first."""
    keys = [answer_key(a) for a in answers]
    counts = Counter(k for k in keys if k is not None)
    if not counts:
        return None
    best = max(counts.values())
    for key, answer in zip(keys, answers):
        if key is not None and counts[key] == best:
            return canonical_number(answer) or answer
    return None


def vote(q: Question, calls: list[dict]) -> dict:
    """Majority vote over calls (of canonical answers), graded against the gold answer.

    The strict vote counts only the strictly stated answers. Calls graded before strict grading
    existed have no strict status, so neither has their vote (None).
    """
    answer = majority([c["answer"] for c in calls])
    strict = None
    if all("strict_status" in c for c in calls):
        strict = judge(q, majority([c["answer"] for c in calls if c["strict_status"] != "unparsed"]))
    return {"answer": answer, "status": judge(q, answer), "strict_status": strict}
