"""Phase 1: multi-agent debate (Du et al. style), with the single-agent and self-consistency baselines.

n agents share one model but keep their own contexts. Round 1: each answers independently.
Round k > 1: each sees its peers' previous answers and revises. A question stops early once every
agent states the same answer; a summarizer then reads the final solutions and gives the answer.

Every round of every agent is saved (text, extracted answer, grade, tokens, latency): the
extraction stage needs the early rounds to find corrective (wrong, then right) traces.

Work is batched: all agents of all questions of one round go through one `generate` call. Questions
are processed in chunks and each finished question is appended to a JSONL file, so a killed run
loses at most the chunk in flight. Each record is stamped with a fingerprint of the settings, the
prompts, the grading code and the question itself; a re-run keeps only records whose stamp still
matches (`runs.resume_jsonl`). Samples are seeded per conversation (`backends.row_seeds`), so they
do not depend on the chunk or batch a question lands in.
"""

from __future__ import annotations

from pathlib import Path

from tqdm import tqdm

from agentark_utils import answers
from agentark_utils.backends import Backend, Generation
from agentark_utils.config import DebateParams
from agentark_utils.runs import fingerprint as _fingerprint
from agentark_utils.runs import resume_jsonl, source_digest
from agentark_utils.store import append_jsonl, read_jsonl
from agentark_utils.tasks import Question

# Each call of a chunk draws from its own seed stream (row_seeds hashes the call seed with the
# conversation): self-consistency samples and round-1 agents read the same prompt and must not
# share samples.
SEED_OFFSETS = {"single": 0, "self_consistency": 1, "summarizer": 2, "round": 3}  # round r: 3 + r

# "a blank line between steps" is steps.STEP_SEPARATOR: the PRM and GRPO cut traces there.
INSTRUCTIONS = {
    "number": "Solve it step by step, with a blank line between steps, then write the final answer on the last "
              "line as 'Final Answer: <number>'.",
    "math": "Solve it step by step, with a blank line between steps, then write the final answer on the last "
            "line as 'Final Answer: <answer>'.",
    "choice": "Think step by step, with a blank line between steps, then write the final answer on the last "
              "line as 'Final Answer: <letter>'.",
}


def question_prompt(q: Question) -> str:
    body = q.question
    if q.choices:
        body += "\n" + "\n".join(f"{'ABCDEFGHIJ'[i]}. {c}" for i, c in enumerate(q.choices))
    return f"{body}\n{INSTRUCTIONS[q.answer_format]}"


def _solutions(texts: list[str], label: str) -> str:
    return "\n\n".join(f"{label} {j + 1}:\n{text.strip()}" for j, text in enumerate(texts))


def revision_prompt(q: Question, peer_texts: list[str]) -> str:
    """Round k > 1: the peers' previous answers, then the original problem again."""
    if not peer_texts:  # a lone agent reviews its own answer
        return f"Check your solution above for mistakes and give an updated solution.\n{question_prompt(q)}"
    return (
        f"Here are the solutions of other agents to the same problem:\n\n{_solutions(peer_texts, 'Agent')}\n\n"
        "Use them as additional advice: look for mistakes in their reasoning and in yours, "
        f"then give an updated solution.\n{question_prompt(q)}"
    )


def summarizer_prompt(q: Question, final_texts: list[str]) -> str:
    """The summarizer reads every agent's final solution, then the problem (last, as small models need)."""
    return (
        f"Here are the final solutions of several agents to a problem:\n\n{_solutions(final_texts, 'Solution')}\n\n"
        f"Reason over them carefully and decide the correct final answer.\n{question_prompt(q)}"
    )


def _user(text: str) -> dict:
    return {"role": "user", "content": text}


def graded_call(q: Question, gen: Generation) -> dict:
    """A generation with its extracted answer and grade: the unit every record stores.

    "status" is the flexible grade, "strict_status" counts only an answer on a final-answer line,
    and "extractor" names the filter that read the answer (None when unparsed).
    """
    grade = answers.grade(q, gen.text)
    return {**gen.to_dict(), "answer": grade.answer, "status": grade.status, "extractor": grade.extractor,
            "strict_status": grade.strict_status}


def vote(q: Question, calls: list[dict]) -> dict:
    """Majority vote over calls (of canonical answers), graded against the gold answer.

    The strict vote counts only the strictly stated answers. Calls graded before strict grading
    existed have no strict status, so neither has their vote (None).
    """
    answer = answers.majority([c["answer"] for c in calls])
    strict = None
    if all("strict_status" in c for c in calls):
        strict = answers.judge(q, answers.majority([c["answer"] for c in calls if c["strict_status"] != "unparsed"]))
    return {"answer": answer, "status": answers.judge(q, answer), "strict_status": strict}


def _consensus(calls: list[dict]) -> bool:
    keys = {answers.answer_key(c["answer"]) for c in calls}
    return len(keys) == 1 and None not in keys


def debate_chunk(questions: list[Question], backend: Backend, cfg: DebateParams, seed: int) -> list[dict]:
    """Run the baselines and the debate on a chunk of questions; one record per question."""
    gen = dict(max_new_tokens=cfg.max_new_tokens)
    first = [[_user(question_prompt(q))] for q in questions]

    # Single agent: one greedy call, the way distilled students are evaluated.
    single = backend.generate(first, temperature=0.0, seed=seed + SEED_OFFSETS["single"], desc="single", **gen)

    # Self-consistency: as many samples as the debate's call budget, then a majority vote.
    k = cfg.sc_samples
    sc = backend.generate([c for c in first for _ in range(k)], temperature=cfg.temperature,
                          seed=seed + SEED_OFFSETS["self_consistency"], desc="self-consistency", **gen)

    n = cfg.n_agents
    contexts = [[list(c) for _ in range(n)] for c in first]
    rounds: list[list[list[dict]]] = [[] for _ in questions]
    consensus_round: list[int | None] = [None] * len(questions)
    active = list(range(len(questions)))
    for r in range(cfg.rounds):
        if r > 0:
            for qi in active:
                previous = [c["text"] for c in rounds[qi][-1]]
                for i in range(n):
                    contexts[qi][i].append(_user(revision_prompt(questions[qi], previous[:i] + previous[i + 1:])))
        outs = backend.generate([contexts[qi][i] for qi in active for i in range(n)], temperature=cfg.temperature,
                                seed=seed + SEED_OFFSETS["round"] + r, desc=f"debate round {r + 1}", **gen)
        for pos, qi in enumerate(active):
            calls = []
            for i in range(n):
                out = outs[pos * n + i]
                contexts[qi][i].append({"role": "assistant", "content": out.text})
                calls.append(graded_call(questions[qi], out))
            rounds[qi].append(calls)
        if cfg.early_stop:
            for qi in active:
                if consensus_round[qi] is None and _consensus(rounds[qi][-1]):
                    consensus_round[qi] = r + 1
            active = [qi for qi in active if consensus_round[qi] is None]
        if not active:
            break

    summaries: list[Generation | None] = [None] * len(questions)
    if cfg.summarizer:
        prompts = [[_user(summarizer_prompt(q, [c["text"] for c in rounds[qi][-1]]))] for qi, q in enumerate(questions)]
        summaries = backend.generate(prompts, temperature=0.0, seed=seed + SEED_OFFSETS["summarizer"],
                                     desc="summarizer", **gen)

    records = []
    for qi, q in enumerate(questions):
        finals = rounds[qi][-1]
        summary = graded_call(q, summaries[qi]) if summaries[qi] is not None else None
        majority_vote = vote(q, finals)
        samples = [graded_call(q, g) for g in sc[qi * k : (qi + 1) * k]]
        records.append({
            "id": q.id,
            "question": q.to_dict(),
            "single": graded_call(q, single[qi]),
            "self_consistency": {"samples": samples, **vote(q, samples)},
            "debate": {
                "rounds": rounds[qi],
                "consensus_round": consensus_round[qi],
                "summarizer": summary,
                "majority": majority_vote,
                "final": {k: summary[k] for k in ("answer", "status", "strict_status")} if summary else majority_vote,
            },
        })
    return records


def rendered_prompts() -> list[str]:
    """Every prompt rendered on a probe question (placeholders PROBLEM, PEER, FINAL): any change in
    their wording changes the fingerprint, and extraction spots outputs that echo them."""
    probe = Question("probe", "probe", "PROBLEM", "0", "number")
    choice = Question("probe", "probe", "PROBLEM", "A", "choice", ["x", "y"])
    return [question_prompt(probe), question_prompt(choice), revision_prompt(probe, ["PEER"]),
            revision_prompt(probe, []), summarizer_prompt(probe, ["FINAL"])]


def fingerprint(*sections) -> str:
    """A hash of the settings, prompts and grading code that shape every record of a run."""
    return _fingerprint([s.model_dump() if hasattr(s, "model_dump") else s for s in sections], rendered_prompts(),
                        source_digest("agentark_utils.answers"))


def record_fingerprint(run_fingerprint: str, question: Question) -> str:
    """One record's stamp: its run's, and the question itself (a changed generator changes it)."""
    return _fingerprint(run_fingerprint, question.to_dict())


def run_debate(splits: dict[str, list[Question]], backend: Backend, cfg: DebateParams, records_path: str | Path,
               run_fingerprint: str) -> list[dict]:
    """Debate every question of every split, resuming from `records_path`; return all records in order.

    A record already in the file is kept only if its stamp matches this run and its question
    (`record_fingerprint`); any other record is removed, so a changed parameter, prompt, grader or
    question never mixes two runs.
    """
    records_path = Path(records_path)
    ordered = [(split, q) for split, qs in splits.items() for q in qs]
    expected = {q.id: record_fingerprint(run_fingerprint, q) for _, q in ordered}
    done = {r["id"] for r in resume_jsonl(records_path, lambda r: expected.get(r["id"]))}
    if not ordered:
        return []

    chunks = [ordered[i : i + cfg.chunk_size] for i in range(0, len(ordered), cfg.chunk_size)]
    bar = tqdm(total=len(ordered), initial=sum(q.id in done for _, q in ordered), desc="questions", unit="q")
    for chunk in chunks:
        todo = [(split, q) for split, q in chunk if q.id not in done]
        if not todo:
            continue
        made = debate_chunk([q for _, q in todo], backend, cfg, seed=cfg.seed)
        for (split, q), record in zip(todo, made):
            record.update(split=split, fingerprint=expected[q.id])
        append_jsonl(records_path, made)
        done.update(q.id for _, q in todo)
        bar.update(len(todo))
    bar.close()

    by_id = {r["id"]: r for r in read_jsonl(records_path)}
    return [by_id[q.id] for _, q in ordered]
