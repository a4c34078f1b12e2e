"""Tasks: one normalized question record, one declarative spec per task, disjoint splits.

Offline tasks come from `reasoning-gym` (seeded generators with verifiers, no downloads). The
paper's sets (GSM8K, MATH-500, MetaMathQA, MedMCQA) load with HF `datasets` when a hub is
reachable, or from a local JSONL/Parquet file in the dataset's own column format (`data.path`).
"""

from __future__ import annotations

import dataclasses
import json
import random
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Literal

AnswerFormat = Literal["number", "math", "choice"]


class DatasetError(ValueError):
    """A bad dataset row or file: the message names the file and the row."""


@dataclass(frozen=True)
class Question:
    """One question in the normalized schema every stage reads."""

    id: str
    task: str
    question: str
    answer: str  # the gold answer, as a string
    answer_format: AnswerFormat
    choices: tuple[str, ...] = ()
    reasoning: str | None = None  # a gold reasoning trace, where the dataset has one
    metadata: dict = field(default_factory=dict)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, row: dict) -> "Question":
        return cls(**{**row, "choices": tuple(row.get("choices", ()))})


@dataclass(frozen=True)
class Component:
    """One reasoning-gym generator with its difficulty settings."""

    dataset: str
    config: dict
    weight: float = 1.0


@dataclass(frozen=True)
class TaskSpec:
    name: str
    description: str
    answer_format: AnswerFormat
    components: tuple[Component, ...] = ()  # reasoning-gym tasks
    hf_path: str | None = None  # hub datasets
    hf_config: str | None = None
    train_split: str | None = None
    test_split: str | None = None
    parse_row: Callable[[dict, int], dict] | None = None


# --- the paper's datasets, each row parser reading the dataset's real columns -------------------

_ANSWER_IS = re.compile(r"The answer is:?\s*(.+?)\s*$", re.S)


def _gsm8k_row(row: dict, index: int) -> dict:
    reasoning, sep, answer = str(row.get("answer", "")).rpartition("####")
    if not sep:
        raise DatasetError(f"row {index}: GSM8K answer has no '####' final answer")
    return {"question": row.get("question"), "answer": answer.strip().replace(",", ""), "reasoning": reasoning.strip()}


def _math500_row(row: dict, index: int) -> dict:
    return {
        "id": row.get("unique_id"),
        "question": row.get("problem"),
        "answer": row.get("answer"),
        "reasoning": row.get("solution"),
        "metadata": {"subject": row.get("subject"), "level": row.get("level")},
    }


def _metamathqa_row(row: dict, index: int) -> dict:
    match = _ANSWER_IS.search(str(row.get("response", "")))
    if match is None:
        raise DatasetError(f"row {index}: MetaMathQA response has no 'The answer is:' line")
    return {
        "question": row.get("query"),
        "answer": match.group(1),
        "reasoning": row["response"][: match.start()].strip(),
        "metadata": {"type": row.get("type")},
    }


def _medmcqa_row(row: dict, index: int) -> dict:
    choices = [row.get(key) for key in ("opa", "opb", "opc", "opd")]
    cop = row.get("cop")
    if not isinstance(cop, int) or not 0 <= cop < 4:
        raise DatasetError(f"row {index}: MedMCQA 'cop' must be 0-3 (the test split hides it), got {cop!r}")
    return {
        "id": row.get("id"),
        "question": row.get("question"),
        "answer": "ABCD"[cop],
        "choices": choices,
        "reasoning": row.get("exp"),
        "metadata": {"subject": row.get("subject_name")},
    }


def _rg(dataset: str, weight: float = 1.0, **config) -> Component:
    return Component(dataset, config, weight)


# Difficulty calibrated on SmolLM2-135M-Instruct (greedy, 32 questions each, README "Calibration"):
# add/sub of 2-3 one-digit terms 14/32, chain sums of 1-2 digits 11/32, with products 12/32.
_ADD_SUB = _rg("basic_arithmetic", min_terms=2, max_terms=3, min_digits=1, max_digits=1,
               operators=("+", "-"), allow_parentheses=False, allow_negation=False)
_CHAIN = _rg("chain_sum", min_terms=2, max_terms=3, min_digits=1, max_digits=2)
_MUL = _rg("basic_arithmetic", min_terms=2, max_terms=2, min_digits=1, max_digits=2,
           operators=("+", "-", "*"), allow_parentheses=False, allow_negation=False)

# Another family, for out-of-domain tests of students trained on arithmetic. Greedy SmolLM2 solves
# 3/32 (leg counting, also tried, 0/32).
_EQUATIONS = _rg("simple_equations", min_terms=2, max_terms=2, min_value=1, max_value=9, operators=("+", "-"),
                 operators_weights=[0.5, 0.5])

TASKS: dict[str, TaskSpec] = {
    spec.name: spec
    for spec in [
        TaskSpec("arith_mix", "reasoning-gym arithmetic mix (default)", "number", (_ADD_SUB, _CHAIN, _MUL)),
        TaskSpec("add_sub", "reasoning-gym add/subtract, 2-3 one-digit terms", "number", (_ADD_SUB,)),
        TaskSpec("chain_sum", "reasoning-gym chain sums, 1-2 digits", "number", (_CHAIN,)),
        TaskSpec("mul", "reasoning-gym two-term +,-,* with 1-2 digits", "number", (_MUL,)),
        TaskSpec("equations", "reasoning-gym one-unknown linear equations, +/- with 1-9", "number", (_EQUATIONS,)),
        TaskSpec("gsm8k", "GSM8K (test: 1319)", "math", hf_path="openai/gsm8k", hf_config="main",
                 train_split="train", test_split="test", parse_row=_gsm8k_row),
        TaskSpec("math500", "MATH-500 (test only: train and test are disjoint parts of it)", "math",
                 hf_path="HuggingFaceH4/MATH-500", train_split="test", test_split="test", parse_row=_math500_row),
        TaskSpec("metamathqa", "MetaMathQA (train only: split into disjoint parts)", "math",
                 hf_path="meta-math/MetaMathQA", train_split="train", test_split="train", parse_row=_metamathqa_row),
        TaskSpec("medmcqa", "MedMCQA (test = validation split: the test split's labels are hidden)", "choice",
                 hf_path="openlifescienceai/medmcqa", train_split="train", test_split="validation",
                 parse_row=_medmcqa_row),
    ]
}


# --- building and checking records ------------------------------------------------------------

def _normalize_text(text: str) -> str:
    return " ".join(text.lower().split())


def make_questions(spec: TaskSpec, rows: list[dict], source: str, split: str = "all") -> list[Question]:
    """Parse raw rows into Questions, rejecting bad rows with the row named.

    Rows without an id get `<task>-<split>-<index>`, so ids stay unique across splits.
    """
    out: list[Question] = []
    seen: set[str] = set()
    for index, row in enumerate(rows):
        fields = spec.parse_row(row, index) if spec.parse_row else row
        question, answer = fields.get("question"), fields.get("answer")
        for key, value in (("question", question), ("answer", answer)):
            if value is None:
                raise DatasetError(f"{source}: row {index}: missing {key}")
            if not str(value).strip():
                raise DatasetError(f"{source}: row {index}: empty {key}")
        qid = str(fields.get("id") if fields.get("id") is not None else f"{spec.name}-{split}-{index}")
        if qid in seen:
            raise DatasetError(f"{source}: row {index}: duplicate id {qid!r}")
        seen.add(qid)
        choices = tuple(str(c) for c in fields.get("choices") or ())
        if spec.answer_format == "choice":
            if len(choices) < 2 or any(not c.strip() for c in choices):
                raise DatasetError(f"{source}: row {index}: a multiple-choice row needs >= 2 non-empty choices")
            letters = "ABCDEFGHIJ"[: len(choices)]
            if str(answer) not in letters:
                raise DatasetError(f"{source}: row {index}: answer {answer!r} is not one of the choices {letters}")
        out.append(Question(qid, spec.name, str(question), str(answer).strip(), spec.answer_format, choices,
                            fields.get("reasoning"), fields.get("metadata") or {}))
    return out


def read_rows(path: str | Path) -> list[dict]:
    """Rows of a local .jsonl, .json or .parquet file."""
    path = Path(path)
    if not path.is_file():
        raise DatasetError(f"{path}: no such dataset file")
    try:
        if path.suffix == ".parquet":
            import pandas as pd

            return pd.read_parquet(path).to_dict("records")
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as error:
        raise DatasetError(f"{path}: not UTF-8 text (byte {error.start})") from None
    if path.suffix == ".json":
        return json.loads(text)
    rows = []
    for number, line in enumerate(text.splitlines(), 1):
        if line.strip():
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError as error:
                raise DatasetError(f"{path}: line {number}: not valid JSON ({error.msg})") from None
    return rows


def _reasoning_gym_pool(spec: TaskSpec, size: int, seed: int) -> list[Question]:
    import reasoning_gym

    total_weight = sum(c.weight for c in spec.components)
    per_component = []
    for offset, comp in enumerate(spec.components):
        # Some extra items, since duplicate questions are dropped below.
        n = int(size * comp.weight / total_weight) + 8
        ds = reasoning_gym.create_dataset(comp.dataset, seed=seed * 1000 + offset, size=n, **comp.config)
        per_component.append([
            Question(f"{comp.dataset}-{offset}-{seed}-{i}", spec.name, e["question"], str(e["answer"]),
                     spec.answer_format, metadata={"source_dataset": comp.dataset, **_jsonable(e["metadata"])})
            for i, e in enumerate(ds)
        ])
    mixed = [q for group in zip(*per_component) for q in group]  # interleave the components
    return _dedupe(mixed)[:size]


def _jsonable(value):
    return json.loads(json.dumps(value, default=list))


def _dedupe(questions: list[Question]) -> list[Question]:
    seen, out = set(), []
    for q in questions:
        key = _normalize_text(q.question)
        if key not in seen:
            seen.add(key)
            out.append(q)
    return out


def load_task(task: str, n_train: int, n_test: int, seed: int = 0, path: str | None = None
              ) -> tuple[list[Question], list[Question]]:
    """Return disjoint (train, test) question lists for a task.

    Reasoning-gym tasks generate one seeded pool and split it; hub datasets use their official
    splits, and sets with a single split (MATH-500, MetaMathQA, or a local file) are partitioned.
    """
    spec = TASKS[task]
    rng = random.Random(seed)
    if spec.components:
        pool = _reasoning_gym_pool(spec, n_train + n_test, seed)
        if len(pool) < n_train + n_test:
            raise DatasetError(f"task {task}: only {len(pool)} distinct questions for {n_train}+{n_test}")
        rng.shuffle(pool)
        train, test = pool[:n_train], pool[n_train:]
    elif path is not None or spec.train_split == spec.test_split:
        rows = read_rows(path) if path is not None else _hub_rows(spec, spec.test_split)
        pool = _dedupe(make_questions(spec, rows, path or spec.hf_path))
        rng.shuffle(pool)
        if len(pool) < n_train + n_test:
            raise DatasetError(f"task {task}: {len(pool)} distinct questions, need {n_train}+{n_test}")
        train, test = pool[:n_train], pool[n_train:n_train + n_test]
    else:
        test = make_questions(spec, _hub_rows(spec, spec.test_split), f"{spec.hf_path}:{spec.test_split}", spec.test_split)
        train = make_questions(spec, _hub_rows(spec, spec.train_split), f"{spec.hf_path}:{spec.train_split}",
                               spec.train_split)
        rng.shuffle(train)
        rng.shuffle(test)
        test_keys = {_normalize_text(q.question) for q in test}
        train = [q for q in _dedupe(train) if _normalize_text(q.question) not in test_keys]
        train, test = train[:n_train], test[:n_test]
    check_disjoint(train, test)
    return train, test


def _hub_rows(spec: TaskSpec, split: str) -> list[dict]:
    import datasets

    return list(datasets.load_dataset(spec.hf_path, spec.hf_config, split=split))


def check_disjoint(train: list[Question], test: list[Question]) -> None:
    """Raise if a test question also appears in train (by id or by text)."""
    train_ids = {q.id for q in train}
    train_text = {_normalize_text(q.question) for q in train}
    for q in test:
        if q.id in train_ids or _normalize_text(q.question) in train_text:
            raise DatasetError(f"test question {q.id!r} also appears in the training split")
