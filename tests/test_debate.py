"""The debate protocol, with a scripted model: what each agent sees, when it stops, what is saved."""

import pytest

from agentark_utils import metrics
from agentark_utils.backends import Generation
from agentark_utils.config import DebateParams
from agentark_utils.debate import debate_chunk, fingerprint, record_fingerprint, run_debate
from agentark_utils.store import read_jsonl
from agentark_utils.tasks import Question

Q1 = Question("q1", "t", "What is 2 + 3?", "5", "math")
Q2 = Question("q2", "t", "What is 4 + 4?", "8", "math")


class ScriptedBackend:
    """Answers from a script(conversation, position_in_call, temperature) -> text; logs every call."""

    name = "scripted"

    def __init__(self, script):
        self.script = script
        self.calls: list[dict] = []

    def generate(self, conversations, *, temperature, max_new_tokens, seed, desc="generate"):
        self.calls.append({"desc": desc, "conversations": conversations, "temperature": temperature, "seed": seed,
                           "max_new_tokens": max_new_tokens})
        return [Generation(self.script(c, i, temperature), 10 * len(c), 5, 0.01) for i, c in enumerate(conversations)]


def cfg(**overrides) -> DebateParams:
    base = dict(n_agents=3, rounds=3, temperature=0.7, max_new_tokens=32, chunk_size=8, seed=0)
    return DebateParams(**{**base, **overrides})


def round_of(conversation) -> int:
    return sum(m["role"] == "user" for m in conversation)


def test_agents_that_agree_in_round_one_stop_early():
    backend = ScriptedBackend(lambda c, i, t: "2 + 3 = 5\nFinal Answer: 5")
    (record,) = debate_chunk([Q1], backend, cfg(), seed=0)
    debate = record["debate"]
    assert debate["consensus_round"] == 1
    assert len(debate["rounds"]) == 1 and len(debate["rounds"][0]) == 3
    # a consensus stands: no summarizer is asked
    assert debate["final"] == {"answer": "5", "status": "correct", "strict_status": "correct", "source": "consensus"}
    assert debate["summarizer"] is None
    assert [c["desc"] for c in backend.calls] == ["single", "single (sampled)", "self-consistency", "debate round 1"]
    assert len(metrics.system_calls(record, "debate")) == 3


def test_peers_answers_reach_each_agent_and_a_wrong_agent_can_correct_itself():
    def script(conversation, position, temperature):
        r = round_of(conversation)
        if r == 1 and position % 3 == 0:  # agent 1 starts wrong
            return "I think it is 6.\nFinal Answer: 6"
        if r == 1:
            return f"Agent says 5 (variant {position % 3}).\nFinal Answer: 5"
        return "After reading the others: Final Answer: 5"

    backend = ScriptedBackend(script)
    (record,) = debate_chunk([Q1], backend, cfg(), seed=0)
    rounds = record["debate"]["rounds"]
    assert [c["status"] for c in rounds[0]] == ["wrong", "correct", "correct"]
    assert [c["status"] for c in rounds[1]] == ["correct"] * 3
    assert record["debate"]["consensus_round"] == 2
    assert metrics.wrong_to_right(record)

    round2 = next(c for c in backend.calls if c["desc"] == "debate round 2")["conversations"]
    agent1 = round2[0]
    # its own round-1 answer is in its context as the assistant turn, the peers' in the new user turn
    assert agent1[1] == {"role": "assistant", "content": "I think it is 6.\nFinal Answer: 6"}
    assert "variant 1" in agent1[2]["content"] and "variant 2" in agent1[2]["content"]
    assert "I think it is 6" not in agent1[2]["content"]
    assert Q1.question in agent1[2]["content"]  # the original problem is restated


def test_without_early_stop_every_round_runs_and_unparsed_is_not_consensus():
    backend = ScriptedBackend(lambda c, i, t: "no idea")
    (record,) = debate_chunk([Q1], backend, cfg(rounds=2, early_stop=True), seed=0)
    assert len(record["debate"]["rounds"]) == 2 and record["debate"]["consensus_round"] is None
    assert record["debate"]["final"]["status"] == "unparsed"

    backend = ScriptedBackend(lambda c, i, t: "Final Answer: 5")
    (record,) = debate_chunk([Q1], backend, cfg(rounds=3, early_stop=False), seed=0)
    assert len(record["debate"]["rounds"]) == 3


def test_baselines_single_is_greedy_and_self_consistency_matches_the_call_budget():
    backend = ScriptedBackend(lambda c, i, t: "Final Answer: 5" if i % 2 else "Final Answer: 4")
    records = debate_chunk([Q1, Q2], backend, cfg(n_agents=2, rounds=2), seed=0)
    single, sampled, sc = backend.calls[:3]
    assert single["temperature"] == 0.0 and len(single["conversations"]) == 2
    assert sampled["temperature"] == 0.7 and records[0]["single_sampled"]["status"] in {"correct", "wrong"}
    assert sc["temperature"] == 0.7 and len(sc["conversations"]) == 2 * (2 * 2 + 1)
    assert len(records[0]["self_consistency"]["samples"]) == 5
    # the sample list alternates 4, 5, 4, 5, 4 for q1 -> majority 4 (wrong)
    assert records[0]["self_consistency"]["answer"] == "4"


def test_without_summarizer_the_final_answer_is_the_majority_vote():
    script = lambda c, i, t: "Final Answer: 5" if i % 3 else "Final Answer: 7"  # noqa: E731
    (record,) = debate_chunk([Q1], ScriptedBackend(script), cfg(summarizer=False, early_stop=False, rounds=1), seed=0)
    assert record["debate"]["summarizer"] is None
    assert record["debate"]["majority"] == {"answer": "5", "status": "correct", "strict_status": "correct"}
    assert record["debate"]["final"] == {**record["debate"]["majority"], "source": "majority"}


def disputed(c, i, t):
    """Agents that disagree in every round (2 say 5, 1 says 7) and echo the revision prompt."""
    if "Which of their answers is correct" in c[-1]["content"]:
        return SUMMARY
    echo = "Use them as additional advice: look for mistakes in their reasoning and in yours.\n"
    return echo + ("Final Answer: 5" if i % 3 else "Final Answer: 7")


SUMMARY = "Solution 2 is right.\nFinal Answer: 5"


@pytest.mark.parametrize("summary, final", [
    ("Solution 2 is right.\nFinal Answer: 5", {"answer": "5", "status": "correct", "source": "summarizer"}),
    ("Solution 1 is right.\nFinal Answer: 7", {"answer": "7", "status": "wrong", "source": "summarizer"}),
    ("I'm ready to help. What's your next question?",  # states nothing: the majority stands
     {"answer": "5", "status": "correct", "source": "majority (summarizer stated no answer)"}),
])
def test_the_summarizer_chooses_only_where_agents_disagree(monkeypatch, summary, final):
    monkeypatch.setattr(__import__(__name__), "SUMMARY", summary)
    backend = ScriptedBackend(disputed)
    (record,) = debate_chunk([Q1], backend, cfg(rounds=2, summarizer_max_new_tokens=7), seed=0)
    assert {k: record["debate"]["final"][k] for k in final} == final
    assert record["debate"]["majority"]["answer"] == "5"
    (call,) = [c for c in backend.calls if c["desc"] == "summarizer"]
    assert call["max_new_tokens"] == 7  # its own budget, not the agents'
    prompt = call["conversations"][0][-1]["content"]
    assert "additional advice" not in prompt  # the agents' echoes of the revision prompt are stripped
    assert "Final Answer: 7" in prompt and Q1.question in prompt


def test_peer_view_final_line_shows_only_the_peers_answers():
    backend = ScriptedBackend(lambda c, i, t: f"long reasoning {i}\nFinal Answer: {5 if i % 3 else 7}")
    debate_chunk([Q1], backend, cfg(rounds=2, peer_view="final_line"), seed=0)
    round2 = next(c for c in backend.calls if c["desc"] == "debate round 2")["conversations"]
    peers = round2[0][2]["content"]  # the revision turn of agent 1
    assert "Final Answer: 5" in peers and "long reasoning" not in peers


def test_consensus_is_recorded_without_early_stop():
    (record,) = debate_chunk([Q1], ScriptedBackend(lambda c, i, t: "Final Answer: 5"),
                             cfg(rounds=2, early_stop=False), seed=0)
    assert len(record["debate"]["rounds"]) == 2 and record["debate"]["consensus_round"] == 1


def test_all_questions_of_a_round_go_through_one_batched_call():
    backend = ScriptedBackend(lambda c, i, t: f"Final Answer: {i}")
    debate_chunk([Q1, Q2], backend, cfg(n_agents=3, rounds=2, early_stop=False), seed=0)
    rounds = [c for c in backend.calls if c["desc"].startswith("debate round")]
    assert [len(c["conversations"]) for c in rounds] == [6, 6]


def test_run_debate_resumes_skips_finished_ids_and_drops_other_settings(tmp_path):
    path = tmp_path / "records.jsonl"
    backend = ScriptedBackend(lambda c, i, t: "Final Answer: 5")
    params = cfg(chunk_size=1)
    key = fingerprint(params)
    first = run_debate({"test": [Q1]}, backend, params, path, key)
    assert [r["id"] for r in first] == ["q1"] and first[0]["split"] == "test"

    n_calls = len(backend.calls)
    both = run_debate({"train": [Q2], "test": [Q1]}, backend, params, path, key)
    assert [r["id"] for r in both] == ["q2", "q1"]
    # only q2 was debated, a training question: single, sampled single, round 1 (consensus); no
    # self-consistency on training questions and no summarizer after a consensus
    assert [c["desc"] for c in backend.calls[n_calls:]] == ["single", "single (sampled)", "debate round 1"]
    assert both[0]["self_consistency"] is None and both[1]["self_consistency"] is not None
    assert [r["id"] for r in read_jsonl(path)] == ["q1", "q2"]

    # a torn last line (killed mid-write) is cut off, not parsed
    with path.open("a") as f:
        f.write('{"id": "q3", "trunc')
    again = run_debate({"train": [Q2], "test": [Q1]}, backend, params, path, key)
    assert [r["id"] for r in again] == ["q2", "q1"]
    assert [r["id"] for r in read_jsonl(path)] == ["q1", "q2"]

    other = cfg(chunk_size=1, temperature=0.1)
    run_debate({"test": [Q1]}, backend, other, path, fingerprint(other))
    assert [r["fingerprint"] for r in read_jsonl(path)] == [record_fingerprint(fingerprint(other), Q1)]


def test_run_debate_redebates_a_question_whose_content_changed(tmp_path):
    """Same id, new question (an edited task generator): the stored record is not reused."""
    path = tmp_path / "records.jsonl"
    backend = ScriptedBackend(lambda c, i, t: "Final Answer: 5")
    params = cfg(chunk_size=1)
    run_debate({"test": [Q1]}, backend, params, path, fingerprint(params))
    edited = Question("q1", "t", "What is 2 + 4?", "6", "math")
    n_calls = len(backend.calls)
    (record,) = run_debate({"test": [edited]}, backend, params, path, fingerprint(params))
    assert len(backend.calls) > n_calls
    assert record["question"]["question"] == "What is 2 + 4?" and record["single"]["status"] == "wrong"
    assert [r["question"]["answer"] for r in read_jsonl(path)] == ["6"]


@pytest.mark.parametrize("module", ["agentark_utils.answers", "agentark_utils.backends", "agentark_utils.kv_cache",
                                    "agentark_utils.prompts"])
def test_a_changed_grader_or_engine_changes_the_fingerprint(monkeypatch, module):
    """Stored grades and generations are not reused under a new grader or generation engine (the KV
    cache's row handling decides what a batch generates, too)."""
    from agentark_utils import runs

    params = cfg()
    before = fingerprint(params)
    real = runs.inspect.getsource
    monkeypatch.setattr(runs.inspect, "getsource", lambda m: "changed = True" if m.__name__ == module else real(m))
    assert fingerprint(params) != before


def test_samples_do_not_depend_on_the_chunk_size(tmp_path):
    """A sampled debate gives the same records whether questions are debated one or two at a time."""
    class SeedEcho(ScriptedBackend):
        """Answers with (a function of) each row's sampling seed."""

        def generate(self, conversations, *, temperature, max_new_tokens, seed, desc="generate"):
            from agentark_utils.backends import row_seeds

            return [Generation(f"Final Answer: {s % 7}", 1, 1, 0.0) for s in row_seeds(conversations, seed)]

    texts = []
    for chunk_size in (1, 2):
        params = cfg(chunk_size=chunk_size, early_stop=False)
        records = run_debate({"test": [Q1, Q2]}, SeedEcho(None), params, tmp_path / f"{chunk_size}.jsonl",
                             fingerprint(params))
        texts.append([[c["text"] for c in r["self_consistency"]["samples"]] + [c["text"] for c in r["debate"]["rounds"][0]]
                      for r in records])
    assert texts[0] == texts[1]


def test_a_changed_prompt_wording_changes_the_fingerprint(monkeypatch):
    from agentark_utils import prompts

    params = cfg()
    before = fingerprint(params)
    monkeypatch.setitem(prompts.INSTRUCTIONS, "number", "Answer quickly.")
    assert fingerprint(params) != before  # old records are not reused under a new prompt


@pytest.mark.parametrize("text", ["", "\x00\x01", "ünïcödé only", "9" * 5000, "Final Answer: \\boxed{"])
def test_odd_model_outputs_are_unparsed_or_graded_never_a_crash(text):
    (record,) = debate_chunk([Q1], ScriptedBackend(lambda c, i, t: text), cfg(rounds=1), seed=0)
    assert record["single"]["status"] in {"unparsed", "wrong"}


def test_speed_only_model_settings_keep_the_records():
    """Batch size, device and endpoints change no sample: records survive them; the teacher does not."""
    from agentark_utils.config import ModelParams

    base = ModelParams(teacher="t", student="s", batch_size=8)
    params = cfg()
    same = base.model_copy(update={"batch_size": 64, "device": "cpu", "launcher": None})
    assert fingerprint(same, params) == fingerprint(base, params)
    assert fingerprint(base.model_copy(update={"teacher": "other"}), params) != fingerprint(base, params)


def test_debate_metrics_pair_the_debate_with_the_greedy_single_agent():
    """Greedy answers 4 (wrong), sampled agents 5: the debate gains every question over the single agent."""
    backend = ScriptedBackend(lambda c, i, t: "Final Answer: 5" if t > 0 else "Final Answer: 4")
    records = [dict(r, split="test") for r in debate_chunk(
        [Q1, Question("q2", "t", "What is 1 + 4?", "5", "math")], backend, cfg(rounds=1), seed=0)]
    block = metrics.debate_metrics(records)["by_split"]["test"]
    assert block["debate_vs_single"]["gained"] == 2 and block["debate_vs_single"]["lost"] == 0
    assert block["single_sampled_vs_single"]["gained"] == 2
    assert block["final_source"] == {"consensus": 2}


def test_the_summarizer_sees_a_choice_questions_options():
    q = Question("m1", "t", "Which organ makes insulin?", "B", "choice", ("liver", "pancreas", "kidney"))
    from agentark_utils.prompts import summarizer_prompt

    prompt = summarizer_prompt(q, ["Final Answer: B", "Final Answer: A"])
    assert "B. pancreas" in prompt and "A. liver" in prompt


@pytest.mark.parametrize("text, echoes", [
    ("then write the final answer on the last line", True),  # the instruction's words include "final"
    ("Several agents solved a problem. Their final solutions", True),
    ("2 + 3 = 5, so the final answer is 5", False),
])
def test_echoes_of_instructions_that_contain_placeholder_like_words(text, echoes):
    from agentark_utils.prompts import echoes_prompt

    assert echoes_prompt(text) == echoes
