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

Work is batched: all agents of all questions of one round go through one `generate` call. Questions
are processed in chunks and each finished question is appended to a JSONL file, so a killed run
loses at most the chunk in flight. Each record is stamped with a fingerprint of the settings, the
prompts, the grading code and the question itself; a re-run keeps only records whose stamp still
matches (`runs.resume_jsonl`). Samples are seeded per conversation (`backends.row_seeds`), so they
do not depend on the chunk or batch a question lands in.
"""

from __future__ import annotations

import re
from functools import lru_cache
from pathlib import Path

from tqdm import tqdm

from agentark_utils import answers
from agentark_utils.backends import Backend, Generation
from agentark_utils.config import DebateParams, ModelParams
from agentark_utils.runs import fingerprint as _fingerprint
from agentark_utils.runs import path_digest, resume_jsonl, source_digest
from agentark_utils.store import append_jsonl, read_jsonl
from agentark_utils.tasks import Question

# Each call of a chunk draws from its own seed stream (row_seeds hashes the call seed with the
# conversation): self-consistency samples and round-1 agents read the same prompt and must not
# share samples.
SEED_OFFSETS = {"single": 0, "self_consistency": 1, "summarizer": 2, "single_sampled": 3, "round": 4}  # round r: 4 + r

# "a blank line between steps" is steps.STEP_SEPARATOR: the PRM and GRPO cut traces there.
INSTRUCTIONS = {
    "number": "Solve it step by step, with a blank line between steps, then write the final answer on the last "
              "line as 'Final Answer: <number>'.",
    "math": "Solve it step by step, with a blank line between steps, then write the final answer on the last "
            "line as 'Final Answer: <answer>'.",
    "choice": "Think step by step, with a blank line between steps, then write the final answer on the last "
              "line as 'Final Answer: <letter>'.",
}


def question_body(q: Question) -> str:
    """The question with its options, if it has any."""
    if not q.choices:
        return q.question
    return q.question + "\n" + "\n".join(f"{'ABCDEFGHIJ'[i]}. {c}" for i, c in enumerate(q.choices))


def question_prompt(q: Question) -> str:
    return f"{question_body(q)}\n{INSTRUCTIONS[q.answer_format]}"


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
    """The summarizer is asked to choose among the agents' answers, not to solve the problem again;
    the problem comes last, as small models need."""
    return (
        f"Several agents solved a problem. Their final solutions:\n\n{_solutions(final_texts, 'Solution')}\n\n"
        f"Problem: {question_body(q)}\n"
        "Which of their answers is correct? Check their steps, choose one of the agents' answers, and write it "
        "on the last line as 'Final Answer: <answer>'."
    )


# Stand-ins for what a rendered prompt holds besides its own instructions: words no prompt uses.
PLACEHOLDERS = ("zzproblem", "zzoption", "zzpeer", "zzfinal")


def rendered_prompts() -> list[str]:
    """Every prompt rendered on a probe question (`PLACEHOLDERS` for its content): any change in
    their wording changes the fingerprint, and `echoes_prompt` spots outputs that repeat them."""
    problem, option, peer, final = PLACEHOLDERS
    probe = Question("probe", "probe", problem, "0", "number")
    choice = Question("probe", "probe", problem, "A", "choice", (option, option))
    return [question_prompt(probe), question_prompt(choice), revision_prompt(probe, [peer]),
            revision_prompt(probe, []), summarizer_prompt(probe, [final]), summarizer_prompt(choice, [final])]


ECHO_NGRAM = 6  # six consecutive words of an instruction: long enough that no real solution says them


def _words(text: str) -> list[str]:
    return re.findall(r"[a-z0-9]+", text.lower())


@lru_cache(maxsize=1)
def _prompt_ngrams() -> frozenset[tuple[str, ...]]:
    grams = set()
    for prompt in rendered_prompts():
        words = [w for w in _words(prompt) if w not in PLACEHOLDERS]
        grams.update(tuple(words[i : i + ECHO_NGRAM]) for i in range(len(words) - ECHO_NGRAM + 1))
    return frozenset(grams)


def echoes_prompt(text: str) -> bool:
    """True if the text repeats a run of the prompts' instructions (a small model often copies the
    revision prompt into its answer)."""
    words = _words(text)
    return any(tuple(words[i : i + ECHO_NGRAM]) in _prompt_ngrams() for i in range(len(words) - ECHO_NGRAM + 1))


def strip_echoes(text: str) -> str:
    """The text without the lines that echo the prompts: what peers and the summarizer read."""
    return "\n".join(line for line in text.splitlines() if not echoes_prompt(line)).strip()


def peer_text(call: dict, view: str) -> str:
    """What the other agents (and the summarizer) see of a call: its whole solution, echoes
    stripped, or only its final answer."""
    if view == "final_line":
        return f"Final Answer: {call['answer']}" if call["answer"] is not None else "(no answer)"
    return strip_echoes(call["text"]) or "(no answer)"


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


def debate_chunk(questions: list[Question], backend: Backend, cfg: DebateParams, seed: int,
                 self_consistency: bool = True) -> list[dict]:
    """Run the baselines and the debate on a chunk of questions; one record per question."""
    gen = dict(max_new_tokens=cfg.max_new_tokens)
    first = [[_user(question_prompt(q))] for q in questions]

    # Single agent: one greedy call, the way distilled students are evaluated; and one sample at the
    # debate's temperature, which the debate's agents also draw.
    single = backend.generate(first, temperature=0.0, seed=seed + SEED_OFFSETS["single"], desc="single", **gen)
    sampled = backend.generate(first, temperature=cfg.temperature, seed=seed + SEED_OFFSETS["single_sampled"],
                               desc="single (sampled)", **gen)

    # Self-consistency: as many samples as the debate's call budget, then a majority vote.
    # as many samples as the debate's call budget, unless set
    budget = cfg.n_agents * cfg.rounds + int(cfg.summarizer)
    k = (cfg.self_consistency_samples or budget) if self_consistency else 0
    sc = backend.generate([c for c in first for _ in range(k)], temperature=cfg.temperature,
                          seed=seed + SEED_OFFSETS["self_consistency"], desc="self-consistency", **gen) if k else []

    n = cfg.n_agents
    contexts = [[list(c) for _ in range(n)] for c in first]
    rounds: list[list[list[dict]]] = [[] for _ in questions]
    consensus_round: list[int | None] = [None] * len(questions)
    active = list(range(len(questions)))
    for r in range(cfg.rounds):
        if r > 0:
            for qi in active:
                previous = [peer_text(c, cfg.peer_view) for c in rounds[qi][-1]]
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
        prompts = [[_user(summarizer_prompt(questions[qi], [peer_text(c, "full") for c in rounds[qi][-1]]))]
                   for qi in disputed]
        outs = backend.generate(prompts, temperature=0.0, seed=seed + SEED_OFFSETS["summarizer"], desc="summarizer",
                                max_new_tokens=cfg.summarizer_max_new_tokens)
        summaries = dict(zip(disputed, outs))

    records = []
    for qi, q in enumerate(questions):
        majority_vote = vote(q, rounds[qi][-1])
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
            "self_consistency": {"samples": samples, **vote(q, samples)} if k else None,
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
                        source_digest("agentark_utils.answers", "agentark_utils.backends"))


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
