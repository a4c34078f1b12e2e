"""Reasoning steps: how a trace is cut into steps, and which steps of a debate count as correct.

One separator serves everything: the prompts ask for a blank line between steps (`prompts.INSTRUCTIONS`),
the PRM is trained on debate traces cut at it, and GRPO rollouts are cut at it before the PRM
scores them.

Labelling policy (the paper defines no step labels; this is ours):
- every step of a trace whose final answer is verified correct is positive (1);
- a wrong or unparsed trace keeps positive labels on its longest prefix of steps shared with a
  correct trace of the same question (compared after normalising case and spaces); every step from
  the first divergence on is negative (0). Its last step is always negative: it states the wrong
  answer;
- questions where no agent, in any round, is correct give no step labels (nothing to compare
  against), nor do questions where every trace is correct (no negatives for the contrastive loss).
"""

from __future__ import annotations

import re
from dataclasses import asdict, dataclass

STEP_SEPARATOR = "\n\n"  # a blank line


def split_steps(text: str) -> list[str]:
    """The non-empty blank-line-separated steps of `text`, stripped."""
    return [step.strip() for step in re.split(r"\n\s*\n", text.replace("\r\n", "\n")) if step.strip()]


def join_steps(steps: list[str]) -> str:
    return STEP_SEPARATOR.join(steps)


def _normal(step: str) -> str:
    return " ".join(step.lower().split())


def _shared_prefix(a: list[str], b: list[str]) -> int:
    n = 0
    while n < min(len(a), len(b)) and _normal(a[n]) == _normal(b[n]):
        n += 1
    return n


@dataclass(frozen=True)
class StepTrace:
    question_id: str
    trace_id: str  # "r{round}a{agent}", both from 1
    steps: list[str]
    labels: list[int]  # one per step: 1 correct so far, 0 not

    @property
    def correct(self) -> bool:
        return all(self.labels)

    def to_dict(self) -> dict:
        return asdict(self)


def label_steps(steps: list[str], correct: bool, correct_peers: list[list[str]]) -> list[int]:
    """Step labels of one trace under the policy above."""
    if correct:
        return [1] * len(steps)
    shared = max((_shared_prefix(steps, peer) for peer in correct_peers), default=0)
    shared = min(shared, len(steps) - 1)
    return [1] * shared + [0] * (len(steps) - shared)


def step_traces(record: dict) -> list[StepTrace]:
    """Every agent trace of every debate round of one saved record, cut into labelled steps.

    Empty for a question without both a correct and a wrong trace.
    """
    calls = [(f"r{r + 1}a{a + 1}", split_steps(call["text"]), call["status"] == "correct")
             for r, round_calls in enumerate(record["debate"]["rounds"]) for a, call in enumerate(round_calls)]
    calls = [(trace_id, steps, ok) for trace_id, steps, ok in calls if steps]
    correct = [steps for _, steps, ok in calls if ok]
    if not correct or len(correct) == len(calls):
        return []
    return [StepTrace(record["id"], trace_id, steps, label_steps(steps, ok, correct)) for trace_id, steps, ok in calls]
