"""Step splitting and the step-labelling policy of the PRM data."""

import pytest

from agentark_utils.prompts import question_prompt
from agentark_utils.steps import STEP_SEPARATOR, join_steps, label_steps, split_steps, step_traces
from agentark_utils.tasks import Question


@pytest.mark.parametrize("text, steps", [
    ("3 + 4 = 7\n\n7 - 2 = 5\n\nFinal Answer: 5", ["3 + 4 = 7", "7 - 2 = 5", "Final Answer: 5"]),
    ("one line only", ["one line only"]),
    ("a\nb\n\nc", ["a\nb", "c"]),  # a single newline stays inside a step
    ("a\n \n\n\nb\r\n\r\nc", ["a", "b", "c"]),  # blank lines with spaces, runs of them, CRLF
    ("\n\n  \n\n", []),
    ("", []),
])
def test_split_steps(text, steps):
    assert split_steps(text) == steps
    assert split_steps(join_steps(steps)) == steps


def test_every_prompt_asks_for_the_separator_the_prm_splits_on():
    assert STEP_SEPARATOR == "\n\n"  # a blank line, which is what the instruction asks for
    for fmt, choices in (("number", []), ("math", []), ("choice", ["x", "y"])):
        q = Question("q", "t", "Q?", "A" if choices else "1", fmt, choices)
        assert "with a blank line between steps" in question_prompt(q)


@pytest.mark.parametrize("steps, correct, peers, labels", [
    (["a", "b", "F: 5"], True, [], [1, 1, 1]),
    (["a", "x", "F: 6"], False, [["a", "b", "F: 5"]], [1, 0, 0]),  # diverges at step 2
    (["A ", "b", "F: 6"], False, [["x"], ["a", "b", "F: 5"]], [1, 1, 0]),  # best peer; case and spaces ignored
    (["x", "F: 6"], False, [["a", "F: 5"]], [0, 0]),  # wrong from the start
    (["a", "b"], False, [["a", "b", "F: 5"]], [1, 0]),  # a cut-off prefix: its last step is still wrong
    (["F: 6"], False, [], [0]),  # nothing to compare against
])
def test_label_steps(steps, correct, peers, labels):
    assert label_steps(steps, correct, peers) == labels


def _call(text, status):
    return {"text": text, "status": status}


def test_step_traces_of_a_record():
    record = {"id": "q1", "debate": {"rounds": [
        [_call("2 + 3 = 5\n\nFinal Answer: 5", "correct"), _call("2 + 3 = 6\n\nFinal Answer: 6", "wrong"),
         _call("", "unparsed")],
        [_call("2 + 3 = 5\n\nso 6\n\nFinal Answer: 6", "wrong"), _call("2 + 3 = 5\n\nFinal Answer: 5", "correct"),
         _call("hmm", "unparsed")],
    ]}}
    traces = {t.trace_id: t for t in step_traces(record)}
    assert set(traces) == {"r1a1", "r1a2", "r2a1", "r2a2", "r2a3"}  # the empty trace has no steps
    assert traces["r1a1"].labels == [1, 1] and traces["r1a1"].correct
    assert traces["r1a2"].labels == [0, 0]
    assert traces["r2a1"].labels == [1, 0, 0] and not traces["r2a1"].correct
    assert traces["r2a3"].labels == [0]
    assert all(t.question_id == "q1" for t in traces.values())


@pytest.mark.parametrize("statuses", [("correct", "correct"), ("wrong", "unparsed")])
def test_no_labels_without_both_a_correct_and_a_wrong_trace(statuses):
    record = {"id": "q", "debate": {"rounds": [[_call(f"step\n\nFinal Answer: {i}", s) for i, s in enumerate(statuses)]]}}
    assert step_traces(record) == []
