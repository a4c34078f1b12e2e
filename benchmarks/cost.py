"""What one student generation costs against the debate it replaces, on the same questions.

    python benchmarks/cost.py [--questions 32] [--student models/da] [--device cpu]

Runs the default debate (params.yaml `debate`, with its single-agent and self-consistency
baselines) and the student (one greedy generation) on the same questions, the first of the pipeline's
test split (never a training question of the student), in one process,
batched the same way. Per question: calls, generated tokens and generation wall time (each batch's
wall time shared among its sequences). Writes results/benchmarks/cost.json.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from common import machine, setup, write

from agentark_utils import metrics
from agentark_utils.backends import HFBackend
from agentark_utils.debate import debate_chunk
from agentark_utils.evaluation import evaluate_grid
from agentark_utils.training import torch_device

KEYS = ("calls_per_question", "generated_tokens_per_question", "tokens_per_question", "latency_s_per_question",
        "accuracy")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--questions", type=int, default=32)
    parser.add_argument("--student", default=None, help="default: models/da if trained, else model.student")
    parser.add_argument("--device", default=None, help="default: model.device of params.yaml")
    args = parser.parse_args()
    params, questions = setup(args.questions)
    device = torch_device(args.device or params.model.device)
    student = args.student or ("models/da" if Path("models/da/config.json").exists() else params.model.student)
    model_params = params.model.model_copy(update={"device": device})

    backend = HFBackend(params.model.teacher, dtype=params.model.dtype, device=device,
                        batch_size=params.model.batch_size)
    began = time.perf_counter()
    records = debate_chunk(questions, backend, params.debate, seed=params.debate.seed)
    debate_wall = time.perf_counter() - began
    systems = {s: {k: metrics.summarize(records, s)[k] for k in KEYS} for s in metrics.SYSTEMS}

    began = time.perf_counter()
    (summary,) = evaluate_grid({"student": student}, {"test": questions}, model_params,
                               params.evaluation.max_new_tokens)[1]
    student_wall = time.perf_counter() - began
    systems["student"] = {k: summary[k] for k in KEYS}

    debate, one = systems["debate"], systems["student"]
    result = {
        "machine": machine(device), "teacher": params.model.teacher, "student": student,
        "questions": len(questions), "debate": {"n_agents": params.debate.n_agents, "rounds": params.debate.rounds,
                                                "summarizer": params.debate.summarizer},
        "per_question": systems,
        "ratios_debate_over_student": {
            "calls": round(debate["calls_per_question"] / one["calls_per_question"], 2),
            "generated_tokens": round(debate["generated_tokens_per_question"] / one["generated_tokens_per_question"], 2),
            "wall_time": round(debate["latency_s_per_question"] / one["latency_s_per_question"], 2),
        },
        "stage_wall_s": {"debate_with_baselines": round(debate_wall, 1), "student_incl_load": round(student_wall, 1)},
        "targets": {"generated_tokens": 10.0, "wall_time": 8.0},
    }
    print(f"{'system':<18}" + "".join(f"{k.replace('_per_question', ''):>24}" for k in KEYS))
    for name, row in systems.items():
        print(f"{name:<18}" + "".join(f"{row[k]:>24.3f}" for k in KEYS))
    print("debate / student:", result["ratios_debate_over_student"], "(targets: tokens >= 10x, wall >= 8x)")
    write("cost.json", result)


if __name__ == "__main__":
    main()
