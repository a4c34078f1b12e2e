import pytest

from agentark_utils import answers
from agentark_utils.tasks import Question, load_task


@pytest.mark.parametrize(
    "text, expected",
    [
        ("\\boxed{1,234}", "1234"),
        ("so the result is \\boxed{\\frac{3}{4}}.", "3/4"),
        ("Final Answer: 42", "42"),
        ("final answer is -7.", "-7"),
        ("Final Answer: 58 + 26 = 84", "84"),  # weak models restate the sum
        ("Step 1: 3+4=7\nFinal Answer: $1,000$ apples", "1000"),
        ("The answer is 12. Hope this helps! 99 bottles", "12"),  # trailing text after the answer
        ("First 3, then 5, so 8", "8"),  # no marker: last number
        ("Final Answer: 3.5", "3.5"),
        ("Final Answer: <number>\nThe correct answer is 54.", "54"),  # echoed placeholder skipped
        ("Final answer: 1\nFinal answer: 2", "2"),  # the last statement wins
        ("", None),
        ("I don't know.", None),
        ("答案是 七", None),  # non-ASCII, no number
    ],
)
def test_extract_number(text, expected):
    assert answers.extract(text, "number") == expected


@pytest.mark.parametrize(
    "text, expected",
    [
        ("Thus $x = \\boxed{\\frac{1}{2}}$", "\\frac{1}{2}"),
        ("\\boxed{\\sqrt{2}}", "\\sqrt{2}"),
        ("Final Answer: 58 + 26 = 84", "84"),
        ("Final Answer: <answer>", None),
        ("The answer is: 15", "15"),
        ("nothing here", None),
    ],
)
def test_extract_math(text, expected):
    assert answers.extract(text, "math") == expected


@pytest.mark.parametrize(
    "text, expected",
    [
        ("Final Answer: C", "C"),
        ("Final Answer: (A)", "A"),
        ("so the answer is (B) 1 year", "B"),
        ("\\boxed{D}", "D"),
        ("Answer: B. 1 year", "B"),
        ("the correct option is D", "D"),
        ("reasoning...\nD", "D"),
        ("I think so", None),  # a pronoun is not option I
        ("A patient presents with fever", None),
        ("", None),
    ],
)
def test_extract_choice(text, expected):
    assert answers.extract(text, "choice") == expected


def _math(gold: str) -> Question:
    return Question("q", "gsm8k", "?", gold, "math")


@pytest.mark.parametrize(
    "question, text, status",
    [
        (_math("1800"), "Final Answer: 1,800", "correct"),
        (_math("0.5"), "\\boxed{\\frac{1}{2}}", "correct"),
        (_math("-5"), "Final Answer: -5", "correct"),
        (_math("-5"), "Final Answer: 5", "wrong"),
        (_math("\\frac{3}{4}"), "The answer is 0.75", "correct"),
        (_math("29"), "no idea", "unparsed"),
        (Question("q", "medmcqa", "?", "C", "choice", ("a", "b", "c", "d")), "Final Answer: c", "correct"),
        (Question("q", "medmcqa", "?", "C", "choice", ("a", "b", "c", "d")), "Final Answer: B", "wrong"),
        (Question("q", "medmcqa", "?", "C", "choice", ("a", "b", "c", "d")), "maybe", "unparsed"),
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
    "given, expected",
    [
        (["3", "3.0", "4"], "3"),
        (["1,000", "1000", "7", "7"], "1,000"),  # 1,000 and 1000 are one answer; tie goes to the first seen
        ([None, "5", None], "5"),
        ([None, None], None),
        (["B", "b", "C"], "B"),
    ],
)
def test_majority(given, expected):
    assert answers.majority(given) == expected
