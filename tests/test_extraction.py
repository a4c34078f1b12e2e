"""Extraction rules on hand-made debate records."""

import pytest

from agentark_utils import extraction
from agentark_utils.backends import Generation
from agentark_utils.tasks import Question

Q = {"id": "q", "task": "t", "question": "What is 2 + 3?", "answer": "5", "answer_format": "math",
     "choices": [], "reasoning": None, "metadata": {}}


def call(status, text=None, finish_reason="stop"):
    answer = {"correct": "5", "wrong": "6", "unparsed": None}[status]
    text = text or (f"work... Final Answer: {answer}" if answer else "hmm")
    # strict grade: only an explicit final-answer line counts
    strict = status if "final answer:" in text.lower() else "unparsed"
    return {"text": text, "answer": answer, "status": status, "strict_status": strict,
            "prompt_tokens": 1, "completion_tokens": 1, "latency_s": 0.0, "finish_reason": finish_reason}


def record(rounds, qid="q", split="train", summary="correct", single="wrong", samples=("wrong",)):
    return {"id": qid, "split": split, "question": {**Q, "id": qid},
            "single": call(single, "single agent: Final Answer: 5" if single == "correct" else None),
            "self_consistency": {"samples": [call(s, f"sample {i}\nFinal Answer: 5" if s == "correct" else None)
                                             for i, s in enumerate(samples)]},
            # each agent words its default solution its own way: distinct traces, as real agents write
            "debate": {"rounds": [[call(s, t or (f"agent {j} works it out\nFinal Answer: 5" if s == "correct" else None))
                                   for j, (s, t) in enumerate(r)] for r in rounds],
                       "summarizer": call(summary, "summary: Final Answer: 5") if summary else None}}


def R(*statuses):
    return [(s, None) for s in statuses]


@pytest.mark.parametrize(
    "rounds, n_correct, corrective",
    [
        ([R("correct", "correct", "wrong")], 2, []),
        ([R("wrong", "correct", "unparsed"), R("correct", "correct", "correct")], 3, [0, 2]),  # unparsed -> right
        ([R("correct", "wrong"), R("wrong", "wrong")], 0, []),  # right -> wrong is not corrective
        ([R("wrong", "wrong", "wrong"), R("wrong", "correct", "wrong")], 1, [1]),
    ],
)
def test_correct_and_corrective_agents(rounds, n_correct, corrective):
    r = record(rounds)
    assert len(extraction.correct_agents(r)) == n_correct
    assert extraction.corrective_agents(r) == corrective


def test_fewer_than_two_correct_agents_are_dropped_and_test_split_never_trains():
    records = [
        record([R("correct", "correct", "wrong")], "two"),
        record([R("correct", "wrong", "wrong")], "one"),
        record([R("correct", "correct", "correct")], "test-q", split="test"),
    ]
    assert [r["id"] for r in extraction.eligible(records, 2)] == ["two"]
    assert [r["id"] for r in extraction.eligible(records, 1)] == ["two", "one"]


def test_rsft_prefers_a_corrective_trace_and_never_the_summarizer():
    corrective = record([R("wrong", "correct"), [("correct", "fixed it: Final Answer: 5"), ("correct", "b: 5")]], "c")
    with_summary = record([[("correct", "a: Final Answer: 5"), ("correct", "b: Final Answer: 5")]], "s")
    no_summary = record([[("wrong", None), ("correct", "b says 5"), ("correct", "c: Final Answer: 5")]], "n",
                        summary="wrong")
    ex = {e.question_id: e for e in extraction.rsft_examples([corrective, with_summary, no_summary])}
    assert ex["c"].completion == "fixed it: Final Answer: 5" and ex["c"].source == "agent 1 (corrective)"
    # the summarizer only chooses among the agents' answers: its text is no solution to learn
    assert ex["s"].source == "agent 1" and ex["s"].completion == "a: Final Answer: 5"
    # agent 2 is correct only by its last number: agent 3, correct on a final-answer line, teaches
    assert ex["n"].source == "agent 3" and ex["n"].completion == "c: Final Answer: 5"
    assert all(e.weight == 1.0 and "2 + 3" in e.prompt for e in ex.values())


def test_da_weights_each_question_once_and_k_larger_than_available():
    three = record([[("correct", "add two and three\nFinal Answer: 5"), ("correct", "2 + 3 = 5 yes\nFinal Answer: 5"),
                     ("correct", "count\nFinal Answer: 5")]], "a")
    two = record([[("correct", "x\nFinal Answer: 5"), ("correct", "y\nFinal Answer: 5"), ("wrong", None)]], "b")
    rows = extraction.da_examples([three, two], k=3, selector=extraction.NgramSelector())
    by_q = {}
    for e in rows:
        by_q.setdefault(e.question_id, []).append(e)
    assert len(by_q["a"]) == 3 and len(by_q["b"]) == 2  # k capped by the correct traces available
    for rows_q in by_q.values():
        assert sum(e.weight for e in rows_q) == pytest.approx(1.0)
        assert len({e.completion for e in rows_q}) == len(rows_q)
    assert [e.weight for e in by_q["a"]] == pytest.approx([1 / 3] * 3)


def test_ngram_selector_is_deterministic_and_picks_the_odd_one_out():
    traces = ["2 + 3 = 5 so the answer is 5", "2 + 3 = 5 so the answer is 5 !", "count up from two: three, four, five"]
    q = Question("q", "t", "?", "5", "math")
    sel = extraction.NgramSelector(n=2, seed=0)
    picked = sel.select(q, traces, 2)
    assert picked == sel.select(q, traces, 2)
    assert 2 in picked  # the structurally different trace is always chosen among two
    assert sorted(sel.select(q, traces, 5)) == [0, 1, 2]
    assert sel.select(q, [], 2) == []


class ReplyBackend:
    def __init__(self, reply):
        self.reply = reply

    def generate(self, conversations, **kwargs):
        return [Generation(self.reply, 1, 1, 0.0) for _ in conversations]


@pytest.mark.parametrize(
    "reply, expected, fallbacks",
    [
        ("Selected: 3, 1", [2, 0], 0),
        ("Selected: 1, 1", None, 1),  # not distinct
        ("Selected: 9, 1", None, 1),  # out of range
        ("I like them all", None, 1),
    ],
)
def test_judge_selector_validates_its_reply(reply, expected, fallbacks):
    q = Question("q", "t", "?", "5", "math")
    traces = ["a b c", "a b d", "x y z", "a b e"]
    judge = extraction.JudgeSelector(ReplyBackend(reply))
    picked = judge.select(q, traces, 2)
    assert judge.fallbacks == fallbacks
    assert picked == (expected if expected is not None else extraction.NgramSelector().select(q, traces, 2))
    assert "Correct answer: 5" in judge.prompt(q, traces, 2)


def test_the_judges_fallback_is_the_configured_ngram_selector():
    """Old: the judge fell back to NgramSelector() whatever extraction.ngram_n and seed said."""
    from agentark_utils.config import ExtractionParams

    made = []
    params = ExtractionParams(selector="judge", ngram_n=3, seed=7)
    judge = extraction.make_selector(params, teacher=lambda: made.append(1) or ReplyBackend("no choice"))
    assert made == [1] and judge.fallback == extraction.NgramSelector(3, 7)
    ngram = extraction.make_selector(params.model_copy(update={"selector": "ngram"}),
                                     teacher=lambda: pytest.fail("no backend for the n-gram selector"))
    assert ngram == extraction.NgramSelector(3, 7)


def test_baselines_answer_only_and_single_agent_cot():
    r1 = record([R("correct", "correct")], "a", single="correct")
    r2 = record([R("correct", "correct")], "b", single="wrong", samples=("wrong", "correct"))
    r3 = record([R("correct", "correct")], "c", single="wrong", samples=("wrong",))
    answer_only = extraction.answer_only_examples([r1, r2, r3])
    assert [e.completion for e in answer_only] == ["Final Answer: 5"] * 3
    cot = extraction.single_agent_cot_examples([r1, r2, r3])
    assert [(e.question_id, e.source) for e in cot] == [("a", "single"), ("b", "sample 2")]


@pytest.mark.parametrize(
    "text, finish_reason, reason",
    [
        ("2 + 3 = 5\nFinal Answer: 5", "stop", None),
        ("2 + 3 = 5\nFinal Answer: 5 and then 2 + 3 = 5 again", "length", "hit_max_new_tokens"),
        ("Use them as additional advice: look for mistakes in their reasoning.\nFinal Answer: 5", "stop",
         "echoes_prompt"),
        ("Solve it step by step, with a blank line between steps.\nFinal Answer: 5", "stop", "echoes_prompt"),
        ("the final answer to the previous step: 2 + 3", "stop", "no_explicit_answer"),  # correct by accident
        ("so it is 5", "stop", "no_explicit_answer"),
        ("2 + 3 = 5", "stop", None),  # a checked equation on the last line states the answer
        ("First add.\n4 - 1 + 2 = 3 + 2 = 5.", "stop", None),
        ("2 + 3 = 2 + 4 = 5", "stop", "no_explicit_answer"),  # a wrong step on the way: correct by accident
        ("2 + 3 = 5\nso the total is 5", "stop", "no_explicit_answer"),  # the last line is no equation
    ],
)
def test_unclean_reason(text, finish_reason, reason):
    assert extraction.unclean_reason(call("correct", text, finish_reason)) == reason


@pytest.mark.parametrize(
    "text, answer, states",
    [
        ("6 * 8 = 48", "48", True),
        ("6 × 8 = 48", "48", True),
        ("48 = 6 * 8", "48", False),  # the answer must be the last side
        ("7 - 0 + 8 = 7 - 0 + 8 = 7 + 8 = 15", "15", True),
        ("1 + 8 - 7 = 1 + 9 = 2 + 9 = 2", "2", False),
        ("(3 + 4) / 2 = 3.5", "3.5", True),
        ("10 - 15 = -5", "-5", True),
        ("6 * 8 = 48", "49", False),
        ("x + 2 = 5", "5", False),  # not arithmetic
        ("__import__('os') = 5", "5", False),
        ("5", "5", False),  # no equation
        ("", "5", False),
        ("2 + 3 = 5", None, False),
    ],
)
def test_states_checked_equation(text, answer, states):
    assert extraction.states_checked_equation(text, answer) is states


def test_unclean_traces_never_become_targets_and_are_counted():
    echo = "Here are the solutions of other agents to the same problem: 5\nFinal Answer: 5"
    cut = call("correct", "2 + 3 = 5\nFinal Answer: 5", finish_reason="length")
    a = record([[("correct", "by luck 5"), ("correct", echo)]], "a")  # two correct agents, neither clean
    b = record([[("correct", "2 + 3 = 5\nFinal Answer: 5"), ("correct", "by luck 5")]], "b", summary=None)
    b["debate"]["rounds"][-1].append(cut)
    examples = extraction.build_examples([a, b], 2, 3, extraction.NgramSelector())
    assert {e.question_id for rows in examples.values() for e in rows} == {"b"}
    assert [e.completion for e in examples["da"]] == ["2 + 3 = 5\nFinal Answer: 5"]
    stats = extraction.extraction_stats([a, b], 2, examples)
    assert stats["n_dropped_no_clean_trace"] == 1 and stats["n_kept"] == 1
    assert stats["unclean_correct_traces"] == {"echoes_prompt": 1, "hit_max_new_tokens": 1, "no_explicit_answer": 2}
    assert stats["clean_correct_traces"] == 1 and stats["correct_traces"] == 5


def test_da_drops_duplicate_traces_before_selecting():
    same = "2 + 3 = 5\nFinal Answer: 5"
    r = record([[("correct", same), ("correct", "  2 + 3 = 5\n\nFINAL ANSWER: 5 "),
                 ("correct", "count up\nFinal Answer: 5")]], "a")
    rows = extraction.da_examples([r], k=3, selector=extraction.NgramSelector())
    assert len(rows) == 2 and {e.completion for e in rows} == {same, "count up\nFinal Answer: 5"}
    assert sum(e.weight for e in rows) == pytest.approx(1.0)
    assert extraction.extraction_stats([r], 2, {"da": rows})["duplicate_clean_traces"] == 1


def test_build_examples_and_stats_agree():
    records = [record([R("wrong", "correct", "correct"), R("correct", "correct", "correct")], "a"),
               record([R("correct", "wrong", "wrong")], "b")]
    examples = extraction.build_examples(records, 2, 2, extraction.NgramSelector())
    stats = extraction.extraction_stats(records, 2, examples)
    assert stats["n_kept"] == 1 and stats["n_dropped_fewer_than_min_correct"] == 1
    assert stats["corrective_traces"] == 1 and stats["kept_questions_with_corrective_trace"] == 1
    assert stats["rows"]["da"] == 2 and stats["questions"]["da"] == 1
    assert stats["duplicate_clean_traces"] == 0
