"""Phase 2: turn saved debates into training examples.

- A_correct: the agents whose final-round answer is verified correct. Questions with fewer than
  `min_correct` of them (the paper: 2) are dropped, for every strategy, so that all students train
  on the same questions.
- Clean traces only: a trace becomes a training target only if it ended on its own (did not hit
  `max_new_tokens`), does not echo the prompts' instructions, and states its answer explicitly:
  on a final-answer line (strict grade), or as the result of a checked equation on its last line
  ("6 * 8 = 48": every side evaluates to the same number, the last is the answer). Nothing graded
  correct by accident teaches anything: "the final answer to the previous step: 8 + 0" with gold 8
  states nothing, and "1 + 8 - 7 = 1 + 9 = 2" fails the check. A kept question needs at least one
  clean correct agent trace; `extraction_stats` counts what each filter dropped.
- Corrective trace: an agent wrong (or unparsed) in round 1 and correct in its final round. Its
  target is that agent's final-round completion, trained under the question's own prompt (the
  student learns to produce the revised solution directly, without the debate's context).
- Diverse selection of k correct traces per question, after dropping duplicates (same text up to
  case and whitespace), behind one interface: the offline default (greedy max-min distance over
  word n-grams) or an LLM judge (any backend).

Each strategy's examples are prompt -> completion pairs with a weight; a question's weights sum to 1.
"""

from __future__ import annotations

import random
import re
from collections import Counter
from dataclasses import asdict, dataclass
from typing import Protocol

from agentark_utils import arithmetic
from agentark_utils.answers import canonical_number
from agentark_utils.prompts import echoes_prompt, question_prompt
from agentark_utils.tasks import Question, normalize_text


@dataclass(frozen=True)
class Example:
    question_id: str
    prompt: str
    completion: str
    weight: float
    source: str  # where the completion came from: "agent 2 (corrective)", "summarizer", "gold", ...

    def to_dict(self) -> dict:
        return asdict(self)


def final_round(record: dict) -> list[dict]:
    return record["debate"]["rounds"][-1]


def correct_agents(record: dict) -> list[int]:
    """A_correct: indices of the agents whose final answer is correct."""
    return [i for i, call in enumerate(final_round(record)) if call["status"] == "correct"]


def corrective_agents(record: dict) -> list[int]:
    """Agents that were wrong or unparsed in round 1 and correct in their final round."""
    first = record["debate"]["rounds"][0]
    return [i for i in correct_agents(record) if first[i]["status"] != "correct"]


# --- clean traces -----------------------------------------------------------------------------

def states_checked_equation(text: str, answer: str | None) -> bool:
    """True if the text's last line is an equation whose sides all evaluate to one number and whose
    last side is `answer`: '7 - 0 + 8 = 7 + 8 = 15' states 15; '1 + 8 - 7 = 1 + 9 = 2' states nothing."""
    lines = [line for line in text.strip().splitlines() if line.strip()]
    sides = lines[-1].split("=") if lines else []
    if len(sides) < 2 or answer is None or canonical_number(sides[-1].rstrip(". ")) != canonical_number(answer):
        return False
    values = [arithmetic.evaluate(side) for side in sides]
    return None not in values and all(abs(v - values[0]) <= 1e-9 * max(1.0, abs(values[0])) for v in values)


def unclean_reason(call: dict) -> str | None:
    """Why a correct call's text must not become a training target, or None if it is clean."""
    if call.get("finish_reason") == "length":
        return "hit_max_new_tokens"
    if echoes_prompt(call["text"]):
        return "echoes_prompt"
    if call.get("strict_status") != "correct" and not states_checked_equation(call["text"], call.get("answer")):
        return "no_explicit_answer"
    return None


def clean_correct_agents(record: dict) -> list[int]:
    """The agents of A_correct whose final-round trace is clean."""
    return [i for i in correct_agents(record) if unclean_reason(final_round(record)[i]) is None]


def distinct(indices: list[int], texts: list[str]) -> list[int]:
    """`indices` without those whose text repeats an earlier one (up to case and whitespace)."""
    seen, out = set(), []
    for i in indices:
        key = normalize_text(texts[i])
        if key not in seen:
            seen.add(key)
            out.append(i)
    return out


# --- diverse selection ------------------------------------------------------------------------

class Selector(Protocol):
    def select(self, question: Question, traces: list[str], k: int) -> list[int]: ...


def _ngrams(text: str, n: int) -> set[tuple[str, ...]]:
    words = re.findall(r"\w+|[^\w\s]", text.lower())
    return {tuple(words[i : i + n]) for i in range(max(len(words) - n + 1, 1))}


def jaccard_distance(a: set, b: set) -> float:
    union = a | b
    return 1.0 - len(a & b) / len(union) if union else 0.0


@dataclass
class NgramSelector:
    """Greedy max-min selection: start from a seeded random trace, then repeatedly add the trace
    farthest (Jaccard distance over word n-grams) from those already chosen."""

    n: int = 2
    seed: int = 0

    def select(self, question: Question, traces: list[str], k: int) -> list[int]:
        k = min(k, len(traces))
        if k == 0:
            return []
        grams = [_ngrams(t, self.n) for t in traces]
        rng = random.Random(f"{self.seed}-{question.id}")
        chosen = [rng.randrange(len(traces))]
        while len(chosen) < k:
            rest = [i for i in range(len(traces)) if i not in chosen]
            # farthest from its nearest chosen trace; ties go to the lower index
            chosen.append(max(rest, key=lambda i: (min(jaccard_distance(grams[i], grams[j]) for j in chosen), -i)))
        return chosen


class JudgeSelector:
    """An LLM judge picks k structurally different traces (any backend). Its reply must name k
    distinct valid indices; otherwise the offline selector decides and the fallback is counted."""

    def __init__(self, backend, max_new_tokens: int = 64, fallback: Selector | None = None):
        self.backend = backend
        self.max_new_tokens = max_new_tokens
        self.fallback = fallback or NgramSelector()
        self.fallbacks = 0

    @staticmethod
    def prompt(question: Question, traces: list[str], k: int) -> str:
        listed = "\n\n".join(f"[{i + 1}]\n{t.strip()}" for i, t in enumerate(traces))
        return (
            f"Problem:\n{question.question}\nCorrect answer: {question.answer}\n\n"
            f"Candidate solutions, all reaching the correct answer:\n\n{listed}\n\n"
            f"Pick the {k} solutions that differ most in their approach (decomposition order, "
            f"intermediate steps, method). Reply with their numbers only, e.g. 'Selected: 1, 3'."
        )

    @staticmethod
    def parse(reply: str, n_traces: int, k: int) -> list[int] | None:
        numbers = [int(x) - 1 for x in re.findall(r"\d+", reply.split("Selected:")[-1])]
        picked = list(dict.fromkeys(numbers))[:k]
        if len(picked) == k and all(0 <= i < n_traces for i in picked):
            return picked
        return None

    def select(self, question: Question, traces: list[str], k: int) -> list[int]:
        k = min(k, len(traces))
        if k == len(traces):
            return list(range(k))
        conversation = [{"role": "user", "content": self.prompt(question, traces, k)}]
        (reply,) = self.backend.generate([conversation], temperature=0.0, max_new_tokens=self.max_new_tokens,
                                         seed=0, desc="judge")
        picked = self.parse(reply.text, len(traces), k)
        if picked is None:
            self.fallbacks += 1
            return self.fallback.select(question, traces, k)
        return picked


def make_selector(params, teacher=None) -> Selector:
    """The selector `params.selector` names (an `ExtractionParams`). The judge generates with
    `teacher()`, a backend made only when it is chosen, and falls back to the n-gram selector of the
    same `ngram_n` and `seed`."""
    ngram = NgramSelector(params.ngram_n, params.seed)
    return ngram if params.selector == "ngram" else JudgeSelector(teacher(), fallback=ngram)


# --- examples per strategy --------------------------------------------------------------------

def eligible(records: list[dict], min_correct: int = 2) -> list[dict]:
    """Training-split records with at least `min_correct` correct agents (the paper's filter) and at
    least one clean correct trace to learn from."""
    return [r for r in records if r["split"] == "train" and len(correct_agents(r)) >= min_correct
            and clean_correct_agents(r)]


def rsft_examples(records: list[dict]) -> list[Example]:
    """One clean correct trace per question: a corrective one first, else the first clean correct
    agent's. (Not the summarizer's: it chooses among the agents' answers, it does not solve.)"""
    out = []
    for r in records:
        q = Question.from_dict(r["question"])
        clean = clean_correct_agents(r)
        corrective = [i for i in corrective_agents(r) if i in clean]
        i = corrective[0] if corrective else clean[0]
        source = f"agent {i + 1} (corrective)" if corrective else f"agent {i + 1}"
        out.append(Example(q.id, question_prompt(q), final_round(r)[i]["text"].strip(), 1.0, source))
    return out


def da_examples(records: list[dict], k: int, selector: Selector) -> list[Example]:
    """k diverse clean correct traces per question (duplicates dropped first), each its own
    example, weighted 1/k (the paper's Eq. 2)."""
    out = []
    for r in records:
        q = Question.from_dict(r["question"])
        texts = [call["text"] for call in final_round(r)]
        agents = distinct(clean_correct_agents(r), texts)
        picked = selector.select(q, [texts[i] for i in agents], k)
        for j in picked:
            out.append(Example(q.id, question_prompt(q), texts[agents[j]].strip(), 1.0 / len(picked),
                               f"agent {agents[j] + 1}"))
    return out


def answer_only_examples(records: list[dict]) -> list[Example]:
    """Baseline: the gold answer alone, no reasoning (the paper's Table 8)."""
    out = []
    for r in records:
        q = Question.from_dict(r["question"])
        out.append(Example(q.id, question_prompt(q), f"Final Answer: {q.answer}", 1.0, "gold"))
    return out


def single_agent_cot_examples(records: list[dict]) -> list[Example]:
    """Baseline: the single agent's own clean correct trace (its greedy answer, else its sample at
    the debate's temperature, else a self-consistency sample where the split has them):
    self-training with no debate. Questions without one are skipped."""
    out = []
    for r in records:
        q = Question.from_dict(r["question"])
        samples = (r.get("self_consistency") or {}).get("samples", [])
        sampled = [("single sampled", r["single_sampled"])] if "single_sampled" in r else []
        candidates = [("single", r["single"])] + sampled + [(f"sample {i + 1}", s) for i, s in enumerate(samples)]
        found = next(((name, c) for name, c in candidates if c["status"] == "correct" and unclean_reason(c) is None),
                     None)
        if found:
            out.append(Example(q.id, question_prompt(q), found[1]["text"].strip(), 1.0, found[0]))
    return out


STRATEGIES = ("rsft", "da", "answer_only", "cot")


def build_examples(records: list[dict], min_correct: int, k: int, selector: Selector) -> dict[str, list[Example]]:
    """Every SFT strategy's examples, from the same eligible training questions."""
    kept = eligible(records, min_correct)
    return {
        "rsft": rsft_examples(kept),
        "da": da_examples(kept, k, selector),
        "answer_only": answer_only_examples(kept),
        "cot": single_agent_cot_examples(kept),
    }


def extraction_stats(records: list[dict], min_correct: int, examples: dict[str, list[Example]]) -> dict:
    """Counts for the report: what was kept, dropped and found."""
    train = [r for r in records if r["split"] == "train"]
    enough = [r for r in train if len(correct_agents(r)) >= min_correct]
    kept = eligible(records, min_correct)
    # Every correct final-round agent trace of the training questions, by why it is unusable.
    reasons = Counter(unclean_reason(final_round(r)[i]) for r in train for i in correct_agents(r))
    return {
        "n_train_questions": len(train),
        "n_kept": len(kept),
        "n_dropped_fewer_than_min_correct": len(train) - len(enough),
        "n_dropped_no_clean_trace": len(enough) - len(kept),
        "correct_traces": sum(reasons.values()),
        "clean_correct_traces": reasons.pop(None, 0),
        "unclean_correct_traces": dict(sorted(reasons.items())),
        "duplicate_clean_traces": sum(len(clean_correct_agents(r)) - len(distinct(clean_correct_agents(r),
                                                                                  [c["text"] for c in final_round(r)]))
                                      for r in kept),
        "corrective_traces": sum(len(corrective_agents(r)) for r in train),
        "kept_questions_with_corrective_trace": sum(bool(corrective_agents(r)) for r in kept),
        "rows": {name: len(rows) for name, rows in examples.items()},
        "questions": {name: len({e.question_id for e in rows}) for name, rows in examples.items()},
    }
