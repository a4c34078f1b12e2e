"""Tasks: one normalized question record, one declarative spec per task, disjoint splits.

Offline tasks come from `reasoning-gym` (seeded generators with verifiers, no downloads). The
paper's sets (GSM8K, MATH-500, MetaMathQA, MedMCQA) load with HF `datasets` when a hub is
reachable, or from a local JSONL/Parquet file in the dataset's own column format (`data.path`).

A reasoning-gym task's splits come from one seeded pool of `pool_size` distinct questions
(distinct by `expression_key`, so one sum under two generators' templates counts once), drawn
from each component in proportion to its weight. Every question carries its difficulty stratum
(component, terms, digits, sign of the answer). Test and train are dealt from the pool stratum
by stratum in a fixed order that keeps each stratum at the floor or ceiling of its pool share,
so the test list depends only on (task, n_test, seed) and grows by appending, train has the same
stratum mix, and a request the pool cannot serve at that mix fails before any compute.

Why a fixed pool size: the small strata hold few distinct expressions (arith_mix's 2-term
one-digit +/- sums are 242 expressions, shared by all three components), so a distinct pool
holds fewer of them than the generators' raw mix does, and the larger the pool the fewer.
Fixing the pool fixes the mix, the same for every n_train and n_test.
"""

from __future__ import annotations

import dataclasses
import json
import random
import re
from collections import Counter
from dataclasses import dataclass, field
from fractions import Fraction
from pathlib import Path
from typing import Callable, Iterator, Literal

AnswerFormat = Literal["number", "math", "choice"]
OPTION_LETTERS = "ABCDEFGHIJ"  # multiple-choice options, in order: the answer of a choice question is one


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


def split_questions(records: list[dict], split: str) -> list[Question]:
    """The questions of one split ("train", "test", "ood:<task>") of records that carry their question
    (the debate stage's), in record order."""
    return [Question.from_dict(r["question"]) for r in records if r["split"] == split]


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
    # reasoning-gym tasks: distinct questions in the seeded pool both splits are dealt from (train
    # and test together at most, a little less where strata round up). It fixes the stratum mix.
    pool_size: int = 1200


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
        "answer": OPTION_LETTERS[cop],
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

def normalize_text(text: str) -> str:
    """Lower case, whitespace runs as one space: two texts equal up to case and spacing compare equal."""
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
            letters = OPTION_LETTERS[: len(choices)]
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


# --- de-duplication key ---------------------------------------------------------------------

def expression_key(question: Question) -> str:
    """What makes two questions the same question, templates and whitespace aside.

    reasoning-gym keeps the bare problem in its metadata: `expression` (basic_arithmetic,
    chain_sum: "Calculate 6 + 9." and "... arithmetic problem: 6 + 9 =" are both "6+9") or
    `equation` with its `variable` (simple_equations: "Solve for q: q + 5 = 12" and "Find the
    value of x in the equation: x + 5 = 12" are both "x+5=12"). Other questions (the hub
    datasets) are keyed by their normalized text.
    """
    meta = question.metadata
    if meta.get("expression"):
        return "".join(str(meta["expression"]).split())
    if meta.get("equation") and meta.get("variable"):
        renamed = re.sub(rf"\b{re.escape(meta['variable'])}\b", "x", str(meta["equation"]))
        return "".join(renamed.split())
    return normalize_text(question.question)


def _dedupe(questions: list[Question]) -> list[Question]:
    seen, out = set(), []
    for q in questions:
        key = expression_key(q)
        if key not in seen:
            seen.add(key)
            out.append(q)
    return out


# --- reasoning-gym pools and stratified splits ------------------------------------------------

def _stratum(dataset: str, offset: int, meta: dict, answer: str) -> str:
    """What decides difficulty: the component, number of terms and digits, sign of the answer."""
    parts = [f"{dataset}#{offset}"]
    if "num_terms" in meta:
        parts.append(f"{meta['num_terms']} terms")
    if "num_digits" in meta:
        parts.append(f"{meta['num_digits']} digit{'s' if meta['num_digits'] != 1 else ''}")
    parts.append("answer<0" if answer.strip().startswith("-") else "answer>=0")
    return " ".join(parts)


def _quota_order(shares: dict[str, Fraction | int]) -> Iterator[str]:
    """The keys of `shares`, one per seat, in the order they get their next seat.

    The Balinski-Young quota method: the first n seats give every key the floor or the ceiling of
    its share of n (as largest remainder would), and, unlike largest remainder, the first n seats
    are always part of the first n+1, so a longer split extends a shorter one.
    """
    total = sum(shares.values())
    seats = dict.fromkeys(shares, 0)
    house = 0
    while True:
        house += 1
        # A key may take a seat while it stays within the ceiling of its share of `house`.
        eligible = [k for k in shares if seats[k] * total < shares[k] * house]
        key = max(eligible, key=lambda k: Fraction(shares[k]) / (seats[k] + 1))
        seats[key] += 1
        yield key


def _apportion(shares: dict[str, Fraction | int], n: int) -> Counter:
    order = _quota_order(shares)
    return Counter(next(order) for _ in range(n))


def _stream_seed(seed: int, offset: int) -> int:
    # reasoning-gym seeds item i with `seed + i`: streams 2**24 apart never overlap.
    return (seed * 64 + offset) * 2**24


def _component_questions(spec: TaskSpec, offset: int, seed: int, wanted: int, taken: set[str]) -> list[Question]:
    """Up to `wanted` questions of one component whose keys are not in `taken` (which grows).

    Draws in rounds until it has enough or a round adds nothing new: then the component has
    no more distinct questions at its difficulty settings.
    """
    import reasoning_gym

    comp = spec.components[offset]
    stream = reasoning_gym.create_dataset(comp.dataset, seed=_stream_seed(seed, offset), size=2**24, **comp.config)
    round_size = max(wanted, 1024)
    out: list[Question] = []
    start = 0
    while len(out) < wanted:
        found_before = len(out)
        for index in range(start, start + round_size):
            item = stream[index]
            answer, meta = str(item["answer"]), _jsonable(item["metadata"])
            q = Question(f"{spec.name}-{comp.dataset}-{offset}-{seed}-{index}", spec.name, item["question"], answer,
                         spec.answer_format, metadata={"source_dataset": comp.dataset, **meta,
                                                       "stratum": _stratum(comp.dataset, offset, meta, answer)})
            key = expression_key(q)
            if key not in taken:
                taken.add(key)
                out.append(q)
                if len(out) == wanted:
                    break
        if len(out) == found_before:
            break
        start += round_size
    return out


def reasoning_gym_pool(spec: TaskSpec, seed: int) -> list[Question]:
    """The task's pool: `spec.pool_size` distinct questions, components in proportion to their weights.

    Components draw in order, each skipping expressions an earlier one drew. Where a component
    has fewer distinct questions than its share, the pool shrinks until the weights hold.
    """
    weights = {offset: Fraction(c.weight) for offset, c in enumerate(spec.components)}
    wanted = _apportion(weights, spec.pool_size)
    taken: set[str] = set()
    drawn = [_component_questions(spec, offset, seed, wanted[offset], taken) for offset in weights]
    total = sum(weights.values())
    size = min(spec.pool_size, *(int(len(drawn[o]) * total / w) for o, w in weights.items()))
    while any(count > len(drawn[offset]) for offset, count in _apportion(weights, size).items()):
        size -= 1  # the apportionment may round a component's share up past what it drew
    counts = _apportion(weights, size)
    return [q for offset, questions in enumerate(drawn) for q in questions[:counts[offset]]]


def _deal(strata: dict[str, list[Question]], shares: dict[str, int], n: int) -> list[Question]:
    """Up to n questions of `strata`, seat by seat in quota order of `shares`.

    It stops short where the next seat's stratum is used up: the length is then the most this
    mix can deal.
    """
    dealt: list[Question] = []
    used = dict.fromkeys(strata, 0)
    order = _quota_order(shares)
    while len(dealt) < n:
        stratum = next(order)
        if used[stratum] == len(strata[stratum]):
            break
        dealt.append(strata[stratum][used[stratum]])
        used[stratum] += 1
    return dealt


def _split_reasoning_gym(spec: TaskSpec, n_train: int, n_test: int, seed: int) -> tuple[list[Question], list[Question]]:
    pool = reasoning_gym_pool(spec, seed)
    strata: dict[str, list[Question]] = {}
    for q in pool:
        strata.setdefault(q.metadata["stratum"], []).append(q)
    # Both splits take the pool's stratum shares, so they have the same mix.
    shares = {stratum: len(questions) for stratum, questions in strata.items()}
    pool_words = f"its pool holds {len(pool)} distinct questions"
    if len(pool) < spec.pool_size:
        pool_words += f" (all its components have at their weights; pool_size {spec.pool_size})"
    test = _deal(strata, shares, n_test)
    if len(test) < n_test:
        raise DatasetError(f"task {spec.name}: capacity {len(test)} test questions, asked for n_test={n_test}: "
                           f"{pool_words}")
    test_ids = {q.id for q in test}
    rest = {stratum: [q for q in questions if q.id not in test_ids] for stratum, questions in strata.items()}
    train = _deal(rest, shares, n_train)
    if len(train) < n_train:
        raise DatasetError(f"task {spec.name}: capacity {len(train)} training questions with n_test={n_test}, "
                           f"asked for n_train={n_train}: {pool_words}, and both splits keep its stratum mix")
    return train, test


def _jsonable(value):
    return json.loads(json.dumps(value, default=list))


def load_task(task: str, n_train: int, n_test: int, seed: int = 0, path: str | None = None
              ) -> tuple[list[Question], list[Question]]:
    """Return disjoint (train, test) question lists for a task.

    Reasoning-gym tasks are dealt from one seeded pool (module docstring): the test list does not
    depend on n_train, and a larger n_test or n_train extends the list. Hub datasets use their
    official splits, and sets with a single split (MATH-500, MetaMathQA, or a local file) are
    partitioned.
    """
    spec = TASKS[task]
    rng = random.Random(seed)
    if spec.components and path is not None:
        raise DatasetError(f"task {task} is generated (reasoning-gym): it reads no file ({path})")
    if spec.components:
        train, test = _split_reasoning_gym(spec, n_train, n_test, seed)
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
        test_keys = {expression_key(q) for q in test}
        train = [q for q in _dedupe(train) if expression_key(q) not in test_keys]
        train, test = train[:n_train], test[:n_test]
    check_disjoint(train, test)
    return train, test


def load_validation(task: str, n_train: int, n_test: int, n: int, seed: int = 0, path: str | None = None
                    ) -> list[Question]:
    """`n` held-out questions for choosing a setting, disjoint from `load_task`'s train and test.

    They are the questions `load_task` would deal next: the training list's continuation (it grows
    by appending), or for a single-pool set, the pool after train and test. No stage debates or
    tests them, so a setting chosen on them is not chosen on the questions that then judge it.
    """
    spec = TASKS[task]
    short = f"task {task}: too few questions for {n} validation questions beside n_train={n_train}, n_test={n_test}"
    try:
        if spec.components or (path is None and spec.train_split != spec.test_split):
            validation = load_task(task, n_train + n, n_test, seed, path)[0][n_train:]
        else:  # one shuffled pool: train, test, then these
            validation = load_task(task, n_train, n_test + n, seed, path)[1][n_test:]
    except DatasetError as error:
        raise DatasetError(f"{short} ({error})") from None
    if len(validation) < n:
        raise DatasetError(f"{short} ({len(validation)} left)")
    train, test = load_task(task, n_train, n_test, seed, path)
    check_disjoint(train + test, validation)
    return validation


OOD_PREFIX = "ood:"  # split names of the out-of-domain families: "ood:equations"


def load_splits(data) -> dict[str, list[Question]]:
    """Every split a run debates, from the `data` section: "train", the in-domain "test" split and
    one held-out split per out-of-domain family (`data.ood_tasks`, `data.n_ood` questions each, from
    the hub or `data.ood_paths`)."""
    train, test = load_task(data.task, data.n_train, data.n_test, data.seed, data.path)
    splits = {"train": train, "test": test}
    for task in data.ood_tasks:
        splits[OOD_PREFIX + task] = load_task(task, 0, data.n_ood, seed=data.seed, path=data.ood_paths.get(task))[1]
    ids = [q.id for questions in splits.values() for q in questions]
    if len(set(ids)) != len(ids):  # records are keyed by id: two questions under one id would merge
        raise DatasetError(f"question ids repeat across the splits {list(splits)}; give each task its own ids")
    return splits


def _hub_rows(spec: TaskSpec, split: str) -> list[dict]:
    import datasets

    return list(datasets.load_dataset(spec.hf_path, spec.hf_config, split=split))


def check_disjoint(train: list[Question], test: list[Question]) -> None:
    """Raise if a test question also appears in train (by id or by `expression_key`)."""
    train_ids = {q.id for q in train}
    train_keys = {expression_key(q) for q in train}
    for q in test:
        if q.id in train_ids or expression_key(q) in train_keys:
            raise DatasetError(f"test question {q.id!r} also appears in the training split")
