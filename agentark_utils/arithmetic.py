"""Arithmetic read from text: parsed with `ast`, never executed.

One evaluator for every module that needs a number's value: extraction checks that a trace's last
equation holds, robustness recomputes the gold answer of a renumbered expression, and perplexity
writes gold step-by-step reasoning. Only numbers, + - * / and brackets are read; anything else
(names, calls, powers) is refused.
"""

from __future__ import annotations

import ast
import operator
import re

_OPERATORS = {ast.Add: operator.add, ast.Sub: operator.sub, ast.Mult: operator.mul, ast.Div: operator.truediv}
# How models write the operators that Python spells otherwise.
_OPERATOR_SIGNS = str.maketrans({"\u00d7": "*", "\u00f7": "/", "\u2212": "-", "\u2013": "-"})


def _evaluate(node: ast.AST) -> int | float:
    if isinstance(node, ast.Constant) and type(node.value) in (int, float):
        return node.value
    if isinstance(node, ast.UnaryOp) and isinstance(node.op, (ast.USub, ast.UAdd)):
        value = _evaluate(node.operand)
        return -value if isinstance(node.op, ast.USub) else value
    if isinstance(node, ast.BinOp) and type(node.op) in _OPERATORS:
        return _OPERATORS[type(node.op)](_evaluate(node.left), _evaluate(node.right))
    raise ValueError("not arithmetic")


def evaluate(text: str) -> int | float | None:
    """The value of a plain arithmetic expression ('7 - 0 + 8', '6 × 8', '(3 + 4) / 2'), else None.
    Integers stay integers under + - * (so '3 * (2 - 7)' is -15, not -15.0); division gives a float."""
    text = text.translate(_OPERATOR_SIGNS).strip().strip("$").rstrip(".").strip()
    if not text or len(text) > 200 or not re.fullmatch(r"[\d\s.+\-*/()]+", text):
        return None
    try:
        return _evaluate(ast.parse(text, mode="eval").body)
    except (SyntaxError, ValueError, ZeroDivisionError, RecursionError):
        return None
