import pytest

from agentark_utils import answers, metrics
from agentark_utils.answers import vote
from agentark_utils.backends import Generation
from agentark_utils.debate import graded_call
from agentark_utils.tasks import Question, load_task

NUMBER = Question("q", "t", "?", "0", "number")
MATH = Question("q", "gsm8k", "?", "0", "math")


def _choice(n_options: int = 4, gold: str = "C") -> Question:
    return Question("q", "medmcqa", "?", gold, "choice", tuple("abcdefghij"[:n_options]))


def _rg(dataset: str, gold: str) -> Question:
    """A reasoning-gym number question, graded by `dataset`'s own scorer as generated ones are."""
    return Question("q", "t", "?", gold, "number", metadata={"source_dataset": dataset})


def _answer(text: str, question: Question) -> str | None:
    found = answers.extract(text, question)
    return found.answer if found else None


@pytest.mark.parametrize(
    "text, expected",
    [
        ("\\boxed{1,234}", "1234"),
        ("so the result is \\boxed{\\frac{3}{4}}.", "3/4"),
        ("Final Answer: 42", "42"),
        ("final answer is -7.", "-7"),
        ("Final Answer: 58 + 26 = 84", "84"),  # weak models restate the sum
        ("Final Answer: 84 = 58 + 26", "84"),  # ... on either side: the lone number is the result
        ("Final Answer: x = -4", "-4"),
        ("Step 1: 3+4=7\nFinal Answer: $1,000$ apples", "1000"),
        ("The answer is 12. Hope this helps! 99 bottles", "12"),  # trailing text after the answer
        ("First 3, then 5, so 8", "8"),  # no marker: last number
        ("so 10-4 gives 6 and then 58-26", "26"),  # a minus after an operand is subtraction, not a sign
        ("Final Answer: 3.5", "3.5"),
        ("Final Answer: <number>\nThe correct answer is 54.", "54"),  # echoed placeholder skipped
        ("Final answer: 1\nFinal answer: 2", "2"),  # the last statement wins
        ("", None),
        ("I don't know.", None),
        ("答案是 七", None),  # non-ASCII, no number
    ],
)
def test_extract_number(text, expected):
    assert _answer(text, NUMBER) == expected


@pytest.mark.parametrize(
    "text, expected",
    [
        ("Thus $x = \\boxed{\\frac{1}{2}}$", "\\frac{1}{2}"),
        ("\\boxed{\\sqrt{2}}", "\\sqrt{2}"),
        ("Final Answer: 58 + 26 = 84", "84"),
        ("Final Answer: 84 = 58 + 26", "84"),
        ("Final Answer: 18.0", "18"),  # lone numbers in canonical form, as in number tasks
        ("Final Answer: <answer>", None),
        ("The answer is: 15", "15"),
        ("nothing here", None),
    ],
)
def test_extract_math(text, expected):
    assert _answer(text, MATH) == expected


@pytest.mark.parametrize(
    "text, n_options, expected",
    [
        ("Final Answer: C", 4, "C"),
        ("Final Answer: (A)", 4, "A"),
        ("so the answer is (B) 1 year", 4, "B"),
        ("\\boxed{D}", 4, "D"),
        ("Answer: B. 1 year", 4, "B"),
        ("the correct option is D", 4, "D"),
        ("reasoning...\nD", 4, "D"),
        ("I think so", 4, None),  # a pronoun is not option I
        ("A patient presents with fever", 4, None),
        ("", 4, None),
        # A letter past the question's options is no answer to it.
        ("Final Answer: E", 4, None),
        ("Final Answer: E", 5, "E"),
        ("\\boxed{F}", 4, None),
        ("reasoning...\nthe correct option is E", 4, None),
        ("Final Answer: C", 2, None),
    ],
)
def test_extract_choice(text, n_options, expected):
    assert _answer(text, _choice(n_options)) == expected


# Markdown around the final-answer line: the answer and the strict filter that read it.
MARKDOWN = [
    ("**Final Answer:** {}", "final_answer"),
    ("**Final Answer: {}**", "final_answer"),
    ("### Final Answer\n{}", "final_answer"),  # a heading, the answer on the next line
    ("**Final Answer**\n\n{}", "final_answer"),
    ("Final Answer:\n{}", "final_answer"),
    ("Final Answer: $\\boxed{{{}}}$", "boxed"),
    ("Final Answer: **{}**", "final_answer"),
    ("Final Answer: **{}**.", "final_answer"),
    ("*Final answer*: {}", "final_answer"),
]


@pytest.mark.parametrize("template, extractor", MARKDOWN)
@pytest.mark.parametrize("question, answer", [(NUMBER, "18"), (MATH, "18"), (_choice(), "B")])
def test_markdown_around_the_final_answer(template, extractor, question, answer):
    text = "Let me think.\n\nThe number 7 appears first.\n" + template.format(answer)
    assert answers.extract(text, question) == (answer, extractor)


@pytest.mark.parametrize("dataset", ["basic_arithmetic", "chain_sum", "simple_equations"])
@pytest.mark.parametrize(
    "gold, stated, status",
    [
        ("18", "18", "correct"),
        ("18", "18.0", "correct"),
        ("18", "18.00", "correct"),
        ("18", "+18", "correct"),
        ("18", "$18$", "correct"),
        ("18", "18.", "correct"),
        ("18", "\\boxed{18}", "correct"),
        ("18", "58 - 40 = 18", "correct"),
        ("18", "18 = 58 - 40", "correct"),
        ("-4", "\u22124", "correct"),  # Unicode minus
        ("-4", "- 4", "correct"),
        ("-4", "-4.0", "correct"),
        ("1234", "1,234", "correct"),
        ("-4", "4", "wrong"),  # the sign is kept
        ("4", "-4", "wrong"),
        ("18", "180", "wrong"),
        ("18", "1.8", "wrong"),
        ("18", "18 = 58 - 41", "correct"),  # the stated result is graded, not the sum
    ],
)
def test_every_reasoning_gym_component_grades_the_canonical_number(dataset, gold, stated, status):
    grade = answers.grade(_rg(dataset, gold), f"Final Answer: {stated}")
    assert (grade.status, grade.strict_status) == (status, status)


@pytest.mark.parametrize(
    "text, answer, extractor, status, strict_status",
    [
        ("Final Answer: 18", "18", "final_answer", "correct", "correct"),
        ("\\boxed{18}", "18", "boxed", "correct", "correct"),
        ("### Final Answer\n18", "18", "final_answer", "correct", "correct"),
        ("The final answer is: 18", "18", "final_answer", "correct", "correct"),
        ("Final Answer: 17", "17", "final_answer", "wrong", "wrong"),
        # Fallbacks: flexibly graded, strictly unparsed.
        ("The answer is 18.", "18", "answer_is", "correct", "unparsed"),
        ("the final answer is 18", "18", "answer_is", "correct", "unparsed"),  # no final-answer line
        ("10 + 8 makes 18 in total", "18", "last_number", "correct", "unparsed"),
        ("10 + 8 makes 17 in total", "17", "last_number", "wrong", "unparsed"),
        ("Final Answer: <number>\nso 18", "18", "last_number", "correct", "unparsed"),
        ("no idea", None, None, "unparsed", "unparsed"),
    ],
)
def test_strict_and_flexible_grades(text, answer, extractor, status, strict_status):
    grade = answers.grade(_rg("basic_arithmetic", "18"), text)
    assert (grade.answer, grade.extractor, grade.status, grade.strict_status) == (answer, extractor, status,
                                                                                  strict_status)


def test_strict_filters_come_first_in_every_chain():
    """A strict answer is never shadowed by a fallback, so the strict grade is the chain's own."""
    for chain in answers.CHAINS.values():
        strict = [name in answers.STRICT_EXTRACTORS for name in chain]
        assert strict == sorted(strict, reverse=True) and any(strict)


def _math(gold: str) -> Question:
    return Question("q", "gsm8k", "?", gold, "math")


@pytest.mark.parametrize(
    "question, text, status",
    [
        (_math("1800"), "Final Answer: 1,800", "correct"),
        (_math("0.5"), "\\boxed{\\frac{1}{2}}", "correct"),
        (_math("-5"), "Final Answer: -5", "correct"),
        (_math("-5"), "Final Answer: \u22125", "correct"),
        (_math("-5"), "Final Answer: 5", "wrong"),
        (_math("\\frac{3}{4}"), "The answer is 0.75", "correct"),
        (_math("29"), "no idea", "unparsed"),
        (_choice(), "Final Answer: c", "correct"),
        (_choice(), "Final Answer: B", "wrong"),
        (_choice(), "maybe", "unparsed"),
        (_choice(gold="D"), "Final Answer: E", "unparsed"),
    ],
)
def test_grade(question, text, status):
    assert answers.grade(question, text).status == status


def test_reasoning_gym_grading_counts_only_full_credit():
    (q,) = load_task("add_sub", 0, 1, seed=3)[1]
    assert answers.grade(q, f"Final Answer: {q.answer}").status == "correct"
    wrong = str(int(q.answer) + 1)
    assert answers.grade(q, f"Final Answer: {wrong}").status == "wrong"
    assert answers.grade(q, "no number here").status == "unparsed"


@pytest.mark.parametrize(
    "text, expected",
    [
        ("18", "18"), ("18.0", "18"), ("+18", "18"), ("$18$", "18"), ("18.", "18"), ("3.50", "3.5"),
        ("\u22124", "-4"), ("- 4", "-4"), ("-0", "0"), ("1,234", "1234"), ("100", "100"), ("0.50", "0.5"),
        (".5", "0.5"), ("3/4", "3/4"), ("-0/5", "0"), ("9" * 5000, "9" * 5000),  # no rounding, no length limit
        ("1,2", None), ("18 apples", None), ("1/0", None), ("x", None),
    ],
)
def test_canonical_number(text, expected):
    assert answers.canonical_number(text) == expected


@pytest.mark.parametrize(
    "a, b, same",
    [
        ("18.0", "18", True),
        ("\u22124", "-4", True),
        ("1,234", "1234", True),
        ("B", "b", True),
        ("-4", "4", False),
        ("{1,2}", "{12}", False),  # commas only group thousands in a number
    ],
)
def test_answer_key_agrees_with_the_canonical_number(a, b, same):
    assert (answers.answer_key(a) == answers.answer_key(b)) is same


@pytest.mark.parametrize(
    "given, expected",
    [
        (["3", "3.0", "4"], "3"),
        (["18.0", "18", "7"], "18"),  # the canonical number, not the first surface form
        (["\u22124", "-4", "4"], "-4"),
        (["1,000", "1000", "7", "7"], "1000"),  # 1,000 and 1000 are one answer; tie goes to the first seen
        ([None, "5", None], "5"),
        ([None, None], None),
        (["B", "b", "C"], "B"),
    ],
)
def test_majority(given, expected):
    assert answers.majority(given) == expected


# --- the grade in records: debate.graded_call, answers.vote, metrics.summarize_calls --------------

def _call(q: Question, text: str) -> dict:
    return graded_call(q, Generation(text, 10, 5, 0.5))


def test_graded_call_stores_the_extractor_and_the_strict_grade():
    call = _call(_rg("basic_arithmetic", "18"), "so 18")
    assert {k: call[k] for k in ("answer", "status", "extractor", "strict_status")} == {
        "answer": "18", "status": "correct", "extractor": "last_number", "strict_status": "unparsed"}


@pytest.mark.parametrize(
    "texts, expected",
    [
        # basic_arithmetic's scorer matches strings exactly: the vote must hand it '18', not '18.0'.
        (["Final Answer: 18.0", "Final Answer: 18.0", "Final Answer: 7"],
         {"answer": "18", "status": "correct", "strict_status": "correct"}),
        # The strict vote counts only strictly stated answers: here the lone 7.
        (["so 18", "so 18", "Final Answer: 7"], {"answer": "18", "status": "correct", "strict_status": "wrong"}),
        (["so 18", "no idea"], {"answer": "18", "status": "correct", "strict_status": "unparsed"}),
    ],
)
def test_vote_grades_the_canonical_answer_flexibly_and_strictly(texts, expected):
    q = _rg("basic_arithmetic", "18")
    assert vote(q, [_call(q, t) for t in texts]) == expected


def test_summarize_calls_reports_strict_accuracy_and_which_extractor_fired():
    q = _rg("chain_sum", "18")
    calls = [_call(q, t) for t in ("Final Answer: 18", "\\boxed{18}", "so 18", "The answer is 7", "no idea")]
    summary = metrics.summarize_calls(calls, [[c] for c in calls])
    assert summary["accuracy"] == pytest.approx(3 / 5)
    assert summary["strict_accuracy"] == pytest.approx(2 / 5)
    assert {k: v for k, v in summary.items() if k.startswith("extractor_")} == {
        "extractor_boxed": 1, "extractor_final_answer": 1, "extractor_answer_is": 1, "extractor_last_number": 1,
        "extractor_last_line": 0, "extractor_none": 1}


def test_evaluate_grid_results_carry_strict_accuracy(monkeypatch):
    from agentark_utils import evaluation

    texts = ["Final Answer: 18.0", "so 18"]  # one strictly stated, one read from the last number
    monkeypatch.setattr(evaluation, "greedy_answers",
                        lambda models, prompts, *args, **kwargs: {"m": [Generation(t, 10, 5, 0.5) for t in texts]})
    sets = {"in": [_rg("basic_arithmetic", "18"), _rg("chain_sum", "18")]}
    predictions, (result,) = evaluation.evaluate_grid({"m": "unused"}, sets, None, max_new_tokens=4)
    assert [p["extractor"] for p in predictions] == ["final_answer", "last_number"]
    assert (result["accuracy"], result["strict_accuracy"]) == (1.0, 0.5)
    assert (result["extractor_final_answer"], result["extractor_last_number"]) == (1, 1)
