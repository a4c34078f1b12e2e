"""Data scaling (the paper's Fig. 5): the same strategy trained on nested fractions of its questions.

The paper varies the amount of distillation data and finds R-SFT and DA non-monotonic while PAD
stays stable. Here a fraction keeps that share of the *questions* (with all of their rows, so DA
keeps its k traces and 1/k weights), chosen by a seeded shuffle; a smaller fraction's questions
are always a subset of a larger one's, so a curve shows the effect of adding data, not of
swapping it.

The agents axis (the paper's Fig. 4) debates the training questions again with fewer agents,
extracts with the same settings and trains the same strategies on the result.

`run_sweep` trains and evaluates every point of both axes. Each finished point is appended to
`points.jsonl` at once, with a fingerprint of everything that made it (`point_fingerprint`), and its
model deleted; a re-run reuses a point only if that fingerprint is unchanged (`runs.resume_jsonl`),
and the sweep's debates resume like the main one. An interrupted sweep loses at most one training.

Each point keeps the test questions it got right, so that `versus_main` can pair it with its
strategy's main student on the same questions: a point's Wilson interval alone cannot say whether
less data or fewer agents changed anything.
"""

from __future__ import annotations

import math
import random
import shutil
from pathlib import Path

import pandas as pd

from agentark_utils import debate, launch
from agentark_utils.backends import make_backend
from agentark_utils.config import Params
from agentark_utils.distill import train_sft
from agentark_utils.evaluation import evaluate_grid
from agentark_utils.extraction import Example, build_examples, make_selector
from agentark_utils.metrics import paired_with_power
from agentark_utils.runs import fingerprint, path_digest, resume_jsonl, source_digest
from agentark_utils.store import append_jsonl, read_jsonl
from agentark_utils.tasks import Question


def question_order(examples: list[Example], seed: int) -> list[str]:
    """The question ids of `examples` in one seeded order; fractions take prefixes of it."""
    ids = sorted({e.question_id for e in examples})
    random.Random(seed).shuffle(ids)
    return ids


def data_subset(examples: list[Example], fraction: float, seed: int) -> list[Example]:
    """The rows of the first `fraction` of the questions (at least one question), in their original order."""
    if not 0 < fraction <= 1:
        raise ValueError(f"fraction must be in (0, 1], got {fraction}")
    order = question_order(examples, seed)
    keep = set(order[: max(1, math.ceil(fraction * len(order)))])
    return [e for e in examples if e.question_id in keep]


def point_key(point: dict) -> tuple:
    return point["axis"], point["strategy"], point["x"]


def point_fingerprint(axis: str, strategy: str, x: int, inputs, student: str, settings: list) -> str:
    """What one sweep point depends on: its axis and position, its training inputs (the rows of a
    data point; for an agents point the settings and questions of its debate), the base model's
    content, and the settings of training and evaluation (pydantic sections or plain values)."""
    dumped = [s.model_dump() if hasattr(s, "model_dump") else s for s in settings]
    return fingerprint(axis, strategy, x, inputs, path_digest(student), dumped)


def run_sweep(cfg: Params, train: list[Question], test: list[Question], examples: dict[str, list[Example]],
              test_name: str, out_dir: str | Path, work_dir: str | Path) -> list[dict]:
    """Every point of both axes, answering `test` (named `test_name`): the points already in
    `out_dir/points.jsonl` with a matching fingerprint are kept, the others trained and evaluated.
    Returns all points; the agents axis's debates go to `out_dir/debates/`. `cfg` holds the scaling
    stage's sections of `Params` (config.validate_sections)."""
    out_dir, work_dir = Path(out_dir), Path(work_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    points_file = out_dir / "points.jsonl"
    # What every point is evaluated and trained with; the batch size changes no answer.
    settings = [cfg.model.model_dump(exclude={"batch_size"}), cfg.sft, cfg.evaluation, [q.to_dict() for q in test],
                source_digest("agentark_utils.answers")]  # the grader behind each point's accuracy
    subsets = {(strategy, fraction): data_subset(examples[strategy], fraction, cfg.scaling.seed)
               for strategy in cfg.scaling.strategies for fraction in cfg.scaling.fractions}
    # A share that rounds up to all of a strategy's questions, or the main run's agent count, is the
    # main run's own point (the curve's end, from `evaluate`): not trained again.
    subsets = {key: subset for key, subset in subsets.items()
               if len({r.question_id for r in subset}) < len({e.question_id for e in examples[key[0]]})}
    agent_counts = [n for n in cfg.scaling.agents if n != cfg.debate.n_agents]
    plan = {}
    for (strategy, _), subset in subsets.items():
        x = len({row.question_id for row in subset})
        plan[("data", strategy, x)] = point_fingerprint("data", strategy, x, [e.to_dict() for e in subset],
                                                        cfg.model.student, settings)
    sweeps = {n: cfg.debate.model_copy(update={"n_agents": n, "self_consistency_samples": 1}) for n in agent_counts}
    sweep_ids = {n: debate.fingerprint(cfg.model, sweep) for n, sweep in sweeps.items()}
    for n_agents in agent_counts:
        for strategy in cfg.scaling.strategies:
            plan[("agents", strategy, n_agents)] = point_fingerprint(
                "agents", strategy, n_agents,
                [sweep_ids[n_agents], cfg.extraction.model_dump(), [q.to_dict() for q in train]],
                cfg.model.student, settings)
    # A point recorded before points kept their right answers cannot be paired: train it again.
    done = {point_key(p) for p in resume_jsonl(points_file,
                                               lambda p: plan.get(point_key(p)) if {"n_answered", "correct_ids"} <= p.keys() else None)}

    def train_and_evaluate(axis: str, x: int, strategy: str, rows: list[Example]) -> None:
        model_dir = work_dir / f"{axis}-{x}-{strategy}"
        launch.train(train_sft, cfg.model.launcher, examples=rows, base_model=cfg.model.student, out_dir=model_dir,
                     params=cfg.sft, device=cfg.model.device, trust_remote_code=cfg.model.trust_remote_code)
        e = cfg.evaluation
        predictions, (result,) = evaluate_grid({strategy: str(model_dir)}, {test_name: test}, cfg.model,
                                               e.max_new_tokens, e.seed)
        append_jsonl(points_file, [{"axis": axis, "strategy": strategy, "x": x, "fingerprint": plan[(axis, strategy, x)],
                                    "n_questions": len({row.question_id for row in rows}), "n_rows": len(rows),
                                    "accuracy": result["accuracy"], "ci_low": result["ci95"][0],
                                    "ci_high": result["ci95"][1], "n_answered": len(predictions),
                                    "correct_ids": sorted(p["id"] for p in predictions if p["status"] == "correct")}])
        shutil.rmtree(model_dir)

    for (strategy, _), subset in subsets.items():
        x = len({row.question_id for row in subset})
        if ("data", strategy, x) not in done:
            train_and_evaluate("data", x, strategy, subset)
            done.add(("data", strategy, x))  # two fractions can round to the same questions

    for n_agents in agent_counts:
        missing = [s for s in cfg.scaling.strategies if ("agents", s, n_agents) not in done]
        if not missing:
            continue
        # The teacher is closed before any student trains or is evaluated: a vLLM engine holds its
        # GPU memory until shut down, and a student would not fit beside it.
        with make_backend(cfg.model, role="teacher") as backend:
            debated = debate.run_debate({"train": train}, backend, sweeps[n_agents],
                                        out_dir / "debates" / f"{n_agents}-agents.jsonl", sweep_ids[n_agents])
            selector = make_selector(cfg.extraction, teacher=lambda: backend)
            sweep_examples = build_examples(debated, cfg.extraction.min_correct, cfg.extraction.k, selector)
        for strategy in missing:
            if sweep_examples[strategy]:
                train_and_evaluate("agents", n_agents, strategy, sweep_examples[strategy])
            else:
                print(f"{n_agents} agents: no question kept for {strategy}; no point")
    points = read_jsonl(points_file) if points_file.exists() else []
    return list({point_key(p): p for p in points}.values())  # one per point (older runs could record one twice)


def curve_points(points: list[dict], main_run: pd.DataFrame, examples: dict[str, list[Example]],
                 cfg: Params, test_name: str) -> pd.DataFrame:
    """The sweep's points plus each curve's end from the main run (all questions, `debate.n_agents`
    agents; `main_run` is the evaluate stage's accuracy table), sorted by axis, strategy and x."""
    main = main_run[main_run["test_set"] == test_name].set_index("model")
    ends = []
    for strategy in cfg.scaling.strategies:
        accuracy = main.loc[strategy, ["accuracy", "ci_low", "ci_high"]].to_dict()
        n = len({e.question_id for e in examples[strategy]})
        end = {"strategy": strategy, "n_questions": n, "n_rows": len(examples[strategy]), **accuracy}
        ends += [{"axis": "data", "x": n, **end}]
        if cfg.scaling.agents:
            ends += [{"axis": "agents", "x": cfg.debate.n_agents, **end}]
    sweep = pd.DataFrame(points).drop(columns="fingerprint", errors="ignore")
    columns = ["axis", "strategy", "x", "n_questions", "n_rows", "accuracy", "ci_low", "ci_high"]
    return pd.concat([pd.DataFrame(ends), sweep])[columns].sort_values(["axis", "strategy", "x"])


def versus_main(points: list[dict], main_predictions: list[dict], test_name: str) -> dict[str, dict]:
    """Each sweep point against its strategy's main student (all kept questions, `debate.n_agents`
    agents), paired on the test questions `test_name`: the difference, its Newcombe CI, gained,
    lost, McNemar's p and `mde`, the smallest difference the test detects with 80 % power at the
    observed discordance (NaN where so few answers differ that no difference could be detected:
    then the CI is the bound). Keyed "axis | strategy | x"; `main_predictions` are the evaluate
    stage's prediction rows. A point must have answered exactly the main run's questions."""
    main: dict[str, dict[str, bool]] = {}
    for row in main_predictions:
        if row["test_set"] == test_name:
            main.setdefault(row["model"], {})[row["id"]] = row["status"] == "correct"
    out = {}
    for point in points:
        if point["strategy"] not in main:
            raise ValueError(f"the main run has no {point['strategy']!r} answers on {test_name!r} to pair with")
        answers = main[point["strategy"]]
        right = set(point["correct_ids"])
        if point["n_answered"] != len(answers) or not right <= answers.keys():
            raise ValueError(f"{point['axis']} | {point['strategy']} | {point['x']}: answered other questions "
                             f"than the main run ({point['n_answered']} against {len(answers)})")
        ids = sorted(answers)
        out[f"{point['axis']} | {point['strategy']} | {point['x']}"] = paired_with_power(
            [i in right for i in ids], [answers[i] for i in ids])
    return out
