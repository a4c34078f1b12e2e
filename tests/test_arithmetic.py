"""The one arithmetic evaluator: what it reads, what it refuses (table-driven)."""

import pytest

from agentark_utils.arithmetic import evaluate


@pytest.mark.parametrize("text, value", [
    ("1 + 5", 6),
    ("0 - 4 - 8", -12),
    ("3 * (2 - 7)", -15),
    ("-4 + 2", -2),
    ("+3", 3),
    ("6 \u00d7 8", 48),           # models write x as the multiplication sign
    ("9 \u2212 4", 5),            # and minus as a typographic minus
    ("(3 + 4) / 2", 3.5),
    (" $12$ ", 12),
    ("7 + 8.", 15),
    ("2.5 + 0.5", 3.0),
])
def test_evaluate_reads_plain_arithmetic(text, value):
    assert evaluate(text) == value


def test_integers_stay_integers_under_add_sub_mul():
    # robustness writes the renumbered gold answer with str(): '-15', never '-15.0'
    assert type(evaluate("3 * (2 - 7)")) is int and type(evaluate("4 / 2")) is float


@pytest.mark.parametrize("text", [
    "__import__('os')", "2 ** 8", "x + 1", "1 / 0", "", "()", "1 +", "9" * 201, "5 = 5",
])
def test_evaluate_refuses_anything_else(text):
    assert evaluate(text) is None
