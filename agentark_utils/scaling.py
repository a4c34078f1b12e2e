"""Data scaling (the paper's Fig. 5): the same strategy trained on nested fractions of its questions.

The paper varies the amount of distillation data and finds R-SFT and DA non-monotonic while PAD
stays stable. Here a fraction keeps that share of the *questions* (with all of their rows, so DA
keeps its k traces and 1/k weights), chosen by a seeded shuffle; a smaller fraction's questions
are always a subset of a larger one's, so a curve shows the effect of adding data, not of
swapping it.

Each finished point is stored with a fingerprint of everything that made it (`point_fingerprint`):
a re-run reuses a point only if that is unchanged (`runs.resume_jsonl`).
"""

from __future__ import annotations

import math
import random

from agentark_utils.extraction import Example
from agentark_utils.runs import fingerprint, path_digest


def question_order(examples: list[Example], seed: int) -> list[str]:
    """The question ids of `examples` in one seeded order; fractions take prefixes of it."""
    ids = sorted({e.question_id for e in examples})
    random.Random(seed).shuffle(ids)
    return ids


def data_subset(examples: list[Example], fraction: float, seed: int) -> list[Example]:
    """The rows of the first `fraction` of the questions (at least one question), in their original order."""
    if not 0 < fraction <= 1:
        raise ValueError(f"fraction must be in (0, 1], got {fraction}")
    order = question_order(examples, seed)
    keep = set(order[: max(1, math.ceil(fraction * len(order)))])
    return [e for e in examples if e.question_id in keep]


def point_key(point: dict) -> tuple:
    return point["axis"], point["strategy"], point["x"]


def point_fingerprint(axis: str, strategy: str, x: int, inputs, student: str, settings: list) -> str:
    """What one sweep point depends on: its axis and position, its training inputs (the rows of a
    data point; for an agents point the settings and questions of its debate), the base model's
    content, and the settings of training and evaluation (pydantic sections or plain values)."""
    dumped = [s.model_dump() if hasattr(s, "model_dump") else s for s in settings]
    return fingerprint(axis, strategy, x, inputs, path_digest(student), dumped)
