"""Training step time of the default student: fp32 against bf16 autocast, on the SFT batch shape.

    python benchmarks/training_step.py [--steps 5] [--batch-size 8] [--length 192]

One optimizer step = forward, backward and AdamW update on random token ids (the cost does not
depend on the tokens). Prints seconds per step for each precision and their ratio; writes
results/benchmarks/training_step.json. The `bf16` keys of the sft, prm and grpo sections choose the
precision the training stages use.
"""

from __future__ import annotations

import argparse
import time

from common import machine, peak_rss_gib, reset_peak_rss, write

from agentark_utils.config import load_params
from agentark_utils.models import load_causal_lm, torch_device


def seconds_per_step(model, batch_size: int, length: int, steps: int, bf16: bool, device: str) -> float:
    import torch

    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-6)
    ids = torch.randint(0, model.config.vocab_size, (batch_size, length), generator=torch.Generator().manual_seed(0))
    ids = ids.to(model.device)
    times = []
    for _ in range(steps + 1):  # the first step (allocations, kernel choice) is not counted
        began = time.perf_counter()
        with torch.autocast(device.split(":")[0], dtype=torch.bfloat16, enabled=bf16):
            loss = model(input_ids=ids, labels=ids).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
        times.append(time.perf_counter() - began)
    return sum(times[1:]) / steps


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--batch-size", type=int, default=None, help="default: sft.batch_size of params.yaml")
    parser.add_argument("--length", type=int, default=192, help="tokens per row (the SFT rows are ~100-250)")
    parser.add_argument("--device", default=None, help="default: model.device of params.yaml")
    args = parser.parse_args()
    params = load_params("params.yaml")
    device = torch_device(args.device or params.model.device)
    batch_size = args.batch_size or params.sft.batch_size
    rows = {}
    for name, bf16 in (("float32", False), ("bf16 autocast", True)):
        model, _ = load_causal_lm(params.model.student, dtype="float32", device=device)  # fp32 master weights
        model.train()
        reset_peak_rss()
        rows[name] = {"s_per_step": round(seconds_per_step(model, batch_size, args.length, args.steps, bf16, device), 3),
                      "peak_rss_gib": round(peak_rss_gib(), 2)}
        print(f"{name:>14}: {rows[name]['s_per_step']} s/step, peak {rows[name]['peak_rss_gib']} GiB")
    ratio = round(rows["float32"]["s_per_step"] / rows["bf16 autocast"]["s_per_step"], 2)
    print(f"bf16 autocast is {ratio}x the speed of float32 (batch {batch_size} x {args.length} tokens)")
    write("training_step.json", {"machine": machine(device), "model": params.model.student, "batch_size": batch_size,
                                 "length": args.length, "steps": args.steps, **rows, "bf16_speedup": ratio})


if __name__ == "__main__":
    main()
