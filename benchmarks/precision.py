"""fp32 or bf16 for generation on this machine: matrix products and the single agent's batched generation.

    python benchmarks/precision.py [--questions 64] [--repeats 2] [--device cpu]

These shared machines are not all the same CPU: with AMX (`amx_bf16` in /proc/cpuinfo) bf16 matrix
products run several times faster than fp32, without it slower (README "Precision on this CPU").
This measures both precisions in one process, alternating so that other load hits both alike:
- the best rate of a 4096x576x1536 matrix product (the default model's MLP shape), in GFLOP/s;
- greedy generation (`HFBackend.generate`, batched as the pipeline batches) of the single agent's
  answers to the first questions of the pipeline's test split, with the teacher loaded in each
  precision: wall time (best of `--repeats`), generated tokens/s, and the share of answers whose
  text is the same in both (bf16 rounds differently, so greedy text may diverge).
Training steps are in benchmarks/training_step.py. Writes results/benchmarks/precision.json.
"""

from __future__ import annotations

import argparse
import time

from common import at_least_one, machine, matmul_peak_gflops, setup, write

from agentark_utils.backends import HFBackend
from agentark_utils.prompts import question_prompt, user_turn
from agentark_utils.training import torch_device

DTYPES = ("float32", "bfloat16")
MLP_SHAPE = (4096, 576, 1536)  # tokens x hidden x intermediate


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--questions", type=int, default=64)
    parser.add_argument("--repeats", type=at_least_one, default=2, help="timings per precision; the best is kept")
    parser.add_argument("--device", default=None, help="default: model.device of params.yaml")
    args = parser.parse_args()
    params, questions = setup(args.questions)
    device = torch_device(args.device or params.model.device)

    gflops = {dtype: 0.0 for dtype in DTYPES}
    for _ in range(args.repeats):
        for dtype in DTYPES:
            gflops[dtype] = max(gflops[dtype], matmul_peak_gflops(dtype, MLP_SHAPE, repeats=10))

    backends = {dtype: HFBackend(params.model.teacher, dtype=dtype, device=device, batch_size=params.model.batch_size)
                for dtype in DTYPES}
    conversations = [[user_turn(question_prompt(q))] for q in questions]
    gen = dict(temperature=0.0, max_new_tokens=params.debate.max_new_tokens, seed=0)
    for backend in backends.values():
        backend.generate(conversations[:2], **gen)  # warm-up: first-call allocations
    wall = {dtype: float("inf") for dtype in DTYPES}
    outputs = {}
    for _ in range(args.repeats):
        for dtype, backend in backends.items():
            began = time.perf_counter()
            outputs[dtype] = backend.generate(conversations, desc=f"single agent, {dtype}", **gen)
            wall[dtype] = min(wall[dtype], time.perf_counter() - began)

    rows = {}
    for dtype in DTYPES:
        generated = sum(g.completion_tokens for g in outputs[dtype])
        rows[dtype] = {"matmul_gflops": round(gflops[dtype], 1), "generation_wall_s": round(wall[dtype], 2),
                       "generated_tokens": generated, "generated_tokens_per_s": round(generated / wall[dtype], 1)}
    same = sum(a.text == b.text for a, b in zip(outputs["float32"], outputs["bfloat16"])) / len(questions)
    result = {
        "machine": machine(device), "model": params.model.teacher, "questions": len(questions),
        "batch_size": params.model.batch_size, "max_new_tokens": params.debate.max_new_tokens,
        "matmul_shape": MLP_SHAPE, **rows,
        "bf16_over_fp32": {"matmul": round(gflops["bfloat16"] / gflops["float32"], 2),
                           "generation": round(wall["float32"] / wall["bfloat16"], 2)},
        "same_greedy_text": round(same, 4),
    }
    print(f"{'':10}{'matmul GFLOP/s':>16}{'generation s':>14}{'gen tok/s':>11}")
    for dtype, row in rows.items():
        print(f"{dtype:10}{row['matmul_gflops']:>16}{row['generation_wall_s']:>14}{row['generated_tokens_per_s']:>11}")
    print(f"bf16 / fp32: {result['bf16_over_fp32']} (speed); same greedy text on {same:.0%} of "
          f"{len(questions)} questions; CPU flags {result['machine']['cpu_flags']}")
    write("precision.json", result)


if __name__ == "__main__":
    main()
