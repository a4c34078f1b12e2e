"""Debate generation throughput: the batched hf backend against one call per agent per question.

    python benchmarks/debate_throughput.py [--questions 32] [--batch-sizes 16 32 64 96] [--dtypes bfloat16 float32]

The workload is a debate round of the default config: every agent of every question answers the
same prompt (greedy, so both paths generate the same tokens and the comparison is like for like).
For each dtype: generated tokens/s of the sequential path and of each batch size, the best batch
size and its ratio to the sequential path, peak resident memory, and transformers' own `generate`
at the best batch size (the engine before `backends.decode_batch`, which drops finished rows).
The headline ratio is the one for params.yaml's model.dtype. Writes
results/benchmarks/debate_throughput.json.
"""

from __future__ import annotations

import argparse
import time

from common import machine, peak_rss_gib, reset_peak_rss, setup, write

from agentark_utils.backends import HFBackend
from agentark_utils.debate import question_prompt
from agentark_utils.models import torch_device


def transformers_generate(backend: HFBackend, conversations, max_new_tokens: int) -> tuple[list[str], int]:
    """The same batches through `model.generate`, which decodes every row until the longest ends.

    Returns the texts and the generated tokens counted as the backend counts them (up to and
    including the first stop token).
    """
    import torch

    prompts = [backend._prompt_ids(c) for c in conversations]
    order = sorted(range(len(prompts)), key=lambda i: -len(prompts[i]))
    texts, tokens = [""] * len(prompts), 0
    for start in range(0, len(order), backend.batch_size):
        idx = order[start : start + backend.batch_size]
        batch = backend.tokenizer.pad({"input_ids": [prompts[i] for i in idx]}, return_tensors="pt")
        with torch.inference_mode():
            out = backend.model.generate(**batch.to(backend.model.device), max_new_tokens=max_new_tokens,
                                         do_sample=False, pad_token_id=backend.tokenizer.pad_token_id)
        for row, i in zip(out[:, batch["input_ids"].shape[1] :].tolist(), idx):
            n = next((k + 1 for k, t in enumerate(row) if t in backend.stop_ids), len(row))
            texts[i] = backend.tokenizer.decode(row[:n], skip_special_tokens=True)
            tokens += n
    return texts, tokens


def run(backend: HFBackend, conversations, batch_size: int, max_new_tokens: int, engine: str = "decode_batch"):
    backend.batch_size = batch_size
    reset_peak_rss()
    began = time.perf_counter()
    if engine == "decode_batch":
        gens = backend.generate(conversations, temperature=0.0, max_new_tokens=max_new_tokens, seed=0,
                                desc=f"batch {batch_size}")
        texts, tokens = [g.text for g in gens], sum(g.completion_tokens for g in gens)
    else:
        texts, tokens = transformers_generate(backend, conversations, max_new_tokens)
    wall = time.perf_counter() - began
    return {"engine": engine, "batch_size": batch_size, "generations": len(texts), "generated_tokens": tokens,
            "wall_s": round(wall, 2), "tokens_per_s": round(tokens / wall, 1),
            "peak_rss_gib": round(peak_rss_gib(), 2)}, texts


def measure(model: str, dtype: str, device: str, conversations, batch_sizes: list[int], max_new_tokens: int) -> dict:
    backend = HFBackend(model, dtype=dtype, device=device, batch_size=1)
    run(backend, conversations[:2], 2, 8)  # warm-up: first-call allocations and kernel selection
    sequential, reference = run(backend, conversations, 1, max_new_tokens)
    sweep = []
    for batch_size in batch_sizes:
        row, texts = run(backend, conversations, batch_size, max_new_tokens)
        row["same_text_as_sequential"] = round(sum(a == b for a, b in zip(texts, reference)) / len(texts), 3)
        sweep.append(row)
    best = max(sweep, key=lambda r: r["tokens_per_s"])
    before, _ = run(backend, conversations, best["batch_size"], max_new_tokens, engine="transformers_generate")
    return {"dtype": dtype, "sequential": sequential, "batched": sweep, "transformers_generate": before,
            "sequential_tokens_per_s": sequential["tokens_per_s"], "batched_tokens_per_s": best["tokens_per_s"],
            "best_batch_size": best["batch_size"], "peak_rss_gib": best["peak_rss_gib"],
            "ratio": round(best["tokens_per_s"] / sequential["tokens_per_s"], 2),
            "gain_over_transformers_generate": round(best["tokens_per_s"] / before["tokens_per_s"], 2)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--questions", type=int, default=32)
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=[16, 32, 64, 96])
    parser.add_argument("--dtypes", nargs="+", default=None, help="default: model.dtype of params.yaml")
    parser.add_argument("--device", default=None, help="default: model.device of params.yaml")
    args = parser.parse_args()
    params, questions = setup(args.questions)
    device = torch_device(args.device or params.model.device)
    dtypes = args.dtypes or [params.model.dtype]
    n_agents, max_new_tokens = params.debate.n_agents, params.debate.max_new_tokens
    conversations = [[{"role": "user", "content": question_prompt(q)}] for q in questions for _ in range(n_agents)]
    by_dtype = [measure(params.model.teacher, dtype, device, conversations, args.batch_sizes, max_new_tokens)
                for dtype in dtypes]
    headline = next((r for r in by_dtype if r["dtype"] == params.model.dtype), by_dtype[0])
    result = {
        "machine": machine(device), "model": params.model.teacher,
        "workload": {"questions": len(questions), "agents": n_agents, "max_new_tokens": max_new_tokens,
                     "decoding": "greedy"},
        "dtype": headline["dtype"], "sequential_tokens_per_s": headline["sequential_tokens_per_s"],
        "batched_tokens_per_s": headline["batched_tokens_per_s"], "best_batch_size": headline["best_batch_size"],
        "ratio": headline["ratio"], "target_ratio": 5.0, "by_dtype": by_dtype,
    }
    print(f"{'dtype':>9} {'engine':>21} {'batch':>6} {'tokens':>7} {'wall s':>8} {'tok/s':>8} {'peak GiB':>9} "
          f"{'same text':>9}")
    for r in by_dtype:
        for row in [r["sequential"], *r["batched"], r["transformers_generate"]]:
            print(f"{r['dtype']:>9} {row['engine']:>21} {row['batch_size']:>6} {row['generated_tokens']:>7} "
                  f"{row['wall_s']:>8} {row['tokens_per_s']:>8} {row['peak_rss_gib']:>9} "
                  f"{row.get('same_text_as_sequential', ''):>9}")
        print(f"{r['dtype']}: batched (batch {r['best_batch_size']}) / sequential = {r['ratio']}x (target >= 5x); "
              f"/ transformers generate at that batch = {r['gain_over_transformers_generate']}x")
    write("debate_throughput.json", result)


if __name__ == "__main__":
    main()
