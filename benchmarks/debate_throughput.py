"""Debate generation throughput: the batched hf backend against one call per agent per question.

    python benchmarks/debate_throughput.py [--questions 8] [--batch-sizes 8 16 32 64] [--device cpu]

The workload is a debate round of the default config: every agent of every question answers the
same prompt (greedy, so both paths generate the same tokens and the comparison is like for like).
Prints generated tokens/s per batch size, the best batch size, the ratio to the sequential path
and peak resident memory; writes results/benchmarks/debate_throughput.json.
"""

from __future__ import annotations

import argparse
import time

from common import machine, peak_rss_gib, reset_peak_rss, setup, write

from agentark_utils.backends import HFBackend
from agentark_utils.debate import question_prompt
from agentark_utils.models import torch_device


def run(backend: HFBackend, conversations, batch_size: int, max_new_tokens: int) -> tuple[dict, list[str]]:
    backend.batch_size = batch_size
    reset_peak_rss()
    began = time.perf_counter()
    gens = backend.generate(conversations, temperature=0.0, max_new_tokens=max_new_tokens, seed=0,
                            desc=f"batch {batch_size}")
    wall = time.perf_counter() - began
    tokens = sum(g.completion_tokens for g in gens)
    return {"batch_size": batch_size, "generations": len(gens), "generated_tokens": tokens, "wall_s": round(wall, 2),
            "tokens_per_s": round(tokens / wall, 1), "peak_rss_gib": round(peak_rss_gib(), 2)}, [g.text for g in gens]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--questions", type=int, default=8)
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=[8, 16, 32, 64])
    parser.add_argument("--device", default=None, help="default: model.device of params.yaml")
    args = parser.parse_args()
    params, questions = setup(args.questions)
    device = torch_device(args.device or params.model.device)
    n_agents, max_new_tokens = params.debate.n_agents, params.debate.max_new_tokens
    conversations = [[{"role": "user", "content": question_prompt(q)}] for q in questions for _ in range(n_agents)]
    backend = HFBackend(params.model.teacher, dtype=params.model.dtype, device=device, batch_size=1)
    run(backend, conversations[:2], 2, 8)  # warm-up: first-call allocations and kernel selection

    sequential, reference = run(backend, conversations, 1, max_new_tokens)
    sweep = []
    for batch_size in args.batch_sizes:
        row, texts = run(backend, conversations, batch_size, max_new_tokens)
        row["same_text_as_sequential"] = round(sum(a == b for a, b in zip(texts, reference)) / len(texts), 3)
        sweep.append(row)
    best = max(sweep, key=lambda r: r["tokens_per_s"])
    result = {
        "machine": machine(device), "model": params.model.teacher, "dtype": params.model.dtype,
        "workload": {"questions": len(questions), "agents": n_agents, "max_new_tokens": max_new_tokens,
                     "decoding": "greedy"},
        "sequential": sequential, "batched": sweep,
        "sequential_tokens_per_s": sequential["tokens_per_s"], "batched_tokens_per_s": best["tokens_per_s"],
        "best_batch_size": best["batch_size"], "ratio": round(best["tokens_per_s"] / sequential["tokens_per_s"], 2),
        "target_ratio": 5.0,
    }
    print(f"{'batch':>6} {'tokens':>7} {'wall s':>8} {'tok/s':>8} {'peak GiB':>9} {'same text':>9}")
    for row in [sequential, *sweep]:
        print(f"{row['batch_size']:>6} {row['generated_tokens']:>7} {row['wall_s']:>8} {row['tokens_per_s']:>8} "
              f"{row['peak_rss_gib']:>9} {row.get('same_text_as_sequential', 1.0):>9}")
    print(f"batched (batch {best['batch_size']}) / sequential = {result['ratio']}x (target >= 5x)")
    write("debate_throughput.json", result)


if __name__ == "__main__":
    main()
