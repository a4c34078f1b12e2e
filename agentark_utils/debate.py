"""Phase 1: multi-agent debate (Du et al. style), with the single-agent and self-consistency baselines.

n agents share one model but keep their own contexts. Round 1: each answers independently.
Round k > 1: each sees its peers' previous answers (their whole solutions or only their final
answers, `debate.peer_view`) and revises. A question stops early once every agent states the same
answer. The debate's answer: the agents' consensus where they agree; otherwise a summarizer, with
its own token budget, chooses among the agents' final answers, and where it states no answer the
final-round majority vote stands. The majority vote (Du et al.'s metric) is reported beside it.

Baselines on the same questions: a greedy single agent (how students are evaluated), a single
agent sampled at the debate's temperature (to separate protocol from sampling effects) and, on
held-out splits only (no analysis reads them on training questions), self-consistency.

Every round of every agent is saved (text, extracted answer, grade, tokens, latency): the
extraction stage needs the early rounds to find corrective (wrong, then right) traces.

Work is batched: all agents of all questions of one round go through one `generate` call, and the
baselines go with round 1 (`backends.generate_calls`: one continuous batch on hf). Questions
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
from agentark_utils.backends import Backend, Call, Generation, generate_calls
from agentark_utils.config import DebateParams, ModelParams
from agentark_utils.prompts import (question_prompt, rendered_prompts, revision_prompt, strip_echoes, summarizer_prompt,
                                    user_turn)
from agentark_utils.runs import fingerprint as _fingerprint
from agentark_utils.runs import path_digest, resume_jsonl, source_digest
from agentark_utils.store import append_jsonl, read_jsonl
from agentark_utils.tasks import Question

# Each call of a chunk draws from its own seed stream (row_seeds hashes the call seed with the
# conversation): self-consistency samples and round-1 agents read the same prompt and must not
# share samples.
SEED_OFFSETS = {"single": 0, "self_consistency": 1, "summarizer": 2, "single_sampled": 3, "round": 4}  # round r: 4 + r

def peer_text(call: dict, view: str) -> str:
    """What the other agents (and the summarizer) see of a call: its whole solution, echoes
    stripped, or only its final answer."""
    if view == "final_line":
        return f"Final Answer: {call['answer']}" if call["answer"] is not None else "(no answer)"
    return strip_echoes(call["text"]) or "(no answer)"


def graded_call(q: Question, gen: Generation) -> dict:
    """A generation with its extracted answer and grade: the unit every record stores.

    "status" is the flexible grade, "strict_status" counts only an answer on a final-answer line,
    and "extractor" names the filter that read the answer (None when unparsed).
    """
    grade = answers.grade(q, gen.text)
    return {**gen.to_dict(), "answer": grade.answer, "status": grade.status, "extractor": grade.extractor,
            "strict_status": grade.strict_status}


def _consensus(calls: list[dict]) -> bool:
    keys = {answers.answer_key(c["answer"]) for c in calls}
    return len(keys) == 1 and None not in keys


def debate_chunk(questions: list[Question], backend: Backend, cfg: DebateParams, seed: int,
                 self_consistency: bool = True) -> list[dict]:
    """Run the baselines and the debate on a chunk of questions; one record per question."""
    first = [[user_turn(question_prompt(q))] for q in questions]
    n = cfg.n_agents
    contexts = [[list(c) for _ in range(n)] for c in first]
    # Self-consistency: as many samples as the debate's call budget, unless set, then a majority vote.
    k = (cfg.self_consistency_samples or cfg.n_agents * cfg.rounds + int(cfg.summarizer)) if self_consistency else 0

    # The baselines and round 1 read the question alone and depend on nothing else: one
    # `generate_calls`, so the hf engine prefills each question's prompt once for all of them.
    # Single agent: greedy, the way distilled students are evaluated; and one sample at the
    # debate's temperature, which the debate's agents also draw.
    def call(conversations, temperature, offset, desc):
        return Call(conversations, temperature, cfg.max_new_tokens, seed + SEED_OFFSETS[offset], desc)

    single, sampled, sc, round_one = generate_calls(backend, [
        call(first, 0.0, "single", "single"),
        call(first, cfg.temperature, "single_sampled", "single (sampled)"),
        call([c for c in first for _ in range(k)], cfg.temperature, "self_consistency", "self-consistency"),
        call([contexts[qi][i] for qi in range(len(questions)) for i in range(n)], cfg.temperature, "round",
             "debate round 1"),
    ])
    rounds: list[list[list[dict]]] = [[] for _ in questions]
    consensus_round: list[int | None] = [None] * len(questions)
    active = list(range(len(questions)))
    for r in range(cfg.rounds):
        if r > 0:
            for qi in active:
                previous = [peer_text(c, cfg.peer_view) for c in rounds[qi][-1]]
                for i in range(n):
                    contexts[qi][i].append(user_turn(revision_prompt(questions[qi], previous[:i] + previous[i + 1:])))
        outs = round_one if r == 0 else backend.generate(
            [contexts[qi][i] for qi in active for i in range(n)], temperature=cfg.temperature,
            max_new_tokens=cfg.max_new_tokens, seed=seed + SEED_OFFSETS["round"] + r, desc=f"debate round {r + 1}")
        for pos, qi in enumerate(active):
            calls = []
            for i in range(n):
                out = outs[pos * n + i]
                contexts[qi][i].append({"role": "assistant", "content": out.text})
                calls.append(graded_call(questions[qi], out))
            rounds[qi].append(calls)
            if consensus_round[qi] is None and _consensus(calls):
                consensus_round[qi] = r + 1
        if cfg.early_stop:
            active = [qi for qi in active if consensus_round[qi] is None]
        if not active:
            break

    # The summarizer is asked only where the final round disagrees: a consensus stands.
    disputed = [qi for qi in range(len(questions)) if not _consensus(rounds[qi][-1])] if cfg.summarizer else []
    summaries: dict[int, Generation] = {}
    if disputed:
        prompts = [[user_turn(summarizer_prompt(questions[qi], [peer_text(c, "full") for c in rounds[qi][-1]]))]
                   for qi in disputed]
        outs = backend.generate(prompts, temperature=0.0, seed=seed + SEED_OFFSETS["summarizer"], desc="summarizer",
                                max_new_tokens=cfg.summarizer_max_new_tokens)
        summaries = dict(zip(disputed, outs))

    records = []
    for qi, q in enumerate(questions):
        majority_vote = answers.vote(q, rounds[qi][-1])
        summary = graded_call(q, summaries[qi]) if qi in summaries else None
        if summary is None:
            final = {**majority_vote, "source": "consensus" if _consensus(rounds[qi][-1]) else "majority"}
        elif summary["status"] == "unparsed":
            final = {**majority_vote, "source": "majority (summarizer stated no answer)"}
        else:
            final = {**{key: summary[key] for key in ("answer", "status", "strict_status")}, "source": "summarizer"}
        samples = [graded_call(q, g) for g in sc[qi * k : (qi + 1) * k]]
        records.append({
            "id": q.id,
            "question": q.to_dict(),
            "single": graded_call(q, single[qi]),
            "single_sampled": graded_call(q, sampled[qi]),
            "self_consistency": {"samples": samples, **answers.vote(q, samples)} if k else None,
            "debate": {
                "rounds": rounds[qi],
                "consensus_round": consensus_round[qi],
                "summarizer": summary,
                "majority": majority_vote,
                "final": final,
            },
        })
    return records


# The model settings that shape a generation. Batch size, device, endpoints and launcher do not
# (samples are seeded per conversation), so changing them keeps every finished record.
GENERATION_KEYS = {"teacher", "backend", "dtype", "trust_remote_code", "enable_thinking"}


def fingerprint(*sections) -> str:
    """A hash of what shapes every record of a run: the settings, the teacher's files, the prompts,
    and the generation and grading code. The questions are not in it: each record's stamp adds its
    own (`record_fingerprint`), so growing a split debates only the new questions."""
    dumped = [s.model_dump(include=GENERATION_KEYS) if isinstance(s, ModelParams)
              else s.model_dump() if hasattr(s, "model_dump") else s for s in sections]
    teachers = [path_digest(s.teacher) for s in sections if isinstance(s, ModelParams)]
    return _fingerprint(dumped, teachers, rendered_prompts(),
                        source_digest("agentark_utils.answers", "agentark_utils.backends", "agentark_utils.kv_cache",
                                      "agentark_utils.prompts"))


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

    # Chunks never mix splits: training questions skip self-consistency, which no analysis reads.
    chunks = [(split, qs[i : i + cfg.chunk_size]) for split, qs in splits.items()
              for i in range(0, len(qs), cfg.chunk_size)]
    bar = tqdm(total=len(ordered), initial=sum(q.id in done for _, q in ordered), desc="questions", unit="q")
    for split, chunk in chunks:
        todo = [q for q in chunk if q.id not in done]
        if not todo:
            continue
        made = debate_chunk(todo, backend, cfg, seed=cfg.seed, self_consistency=split != "train")
        for q, record in zip(todo, made):
            record.update(split=split, fingerprint=expected[q.id])
        append_jsonl(records_path, made)
        done.update(q.id for q in todo)
        bar.update(len(todo))
    bar.close()

    by_id = {r["id"]: r for r in read_jsonl(records_path)}
    return [by_id[q.id] for _, q in ordered]
