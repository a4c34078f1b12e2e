"""One decoding step of the hf engine, with transformers' concatenating KV cache and with ours.

    python benchmarks/decode_step.py [--batch 64] [--lengths 64 128 256 512] [--new-tokens 32]

For each prompt length: `backends.decode_batch` on `--batch` copies of one random prompt (prefix
sharing prefills it once, so the time is the decoding's), no stop token, once for 1 new token and
once for 1 + `--new-tokens`; the difference over `--new-tokens` is the time of one step with the
whole batch and a cache of about that length. The two caches alternate, `--repeats` times each, and
the best time of each counts (the least disturbed by other work on shared cores). Reported: ms per
step with each cache, the ratio, and whether both gave the same tokens. Writes
results/benchmarks/decode_step.json.
"""

from __future__ import annotations

import argparse
import time

from common import machine, write

from agentark_utils.backends import HFBackend, decode_batch
from agentark_utils.config import load_params
from agentark_utils.training import torch_device


def timed_decode(backend: HFBackend, prompts, new_tokens: int, in_place: bool) -> tuple[float, list[list[int]]]:
    began = time.perf_counter()
    out = decode_batch(backend.model, prompts, pad_id=backend.tokenizer.pad_token_id, max_new_tokens=new_tokens,
                       stop_ids=[-1], temperature=0.0, cache_in_place=in_place)  # -1: no row ever stops
    return time.perf_counter() - began, out


def main() -> None:
    import torch

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--lengths", type=int, nargs="+", default=[64, 128, 256, 512])
    parser.add_argument("--new-tokens", type=int, default=32)
    parser.add_argument("--repeats", type=int, default=2)
    args = parser.parse_args()
    params = load_params("params.yaml")
    device = torch_device(params.model.device)
    backend = HFBackend(params.model.teacher, dtype=params.model.dtype, device=device)
    vocab = len(backend.tokenizer)
    generator = torch.Generator().manual_seed(0)
    rows = []
    print(f"{'prompt tokens':>13} {'concat ms/step':>15} {'in place ms/step':>17} {'speed-up':>9} {'same tokens':>12}")
    for length in args.lengths:
        prompt = torch.randint(100, vocab, (length,), generator=generator).tolist()
        prompts = [prompt] * args.batch
        best = {False: float("inf"), True: float("inf")}
        tokens = {}
        for _ in range(args.repeats):
            for in_place in (False, True):
                prefill_s, _ = timed_decode(backend, prompts, 1, in_place)
                total_s, tokens[in_place] = timed_decode(backend, prompts, 1 + args.new_tokens, in_place)
                best[in_place] = min(best[in_place], (total_s - prefill_s) / args.new_tokens)
        row = {"prompt_tokens": length, "concat_ms_per_step": round(1000 * best[False], 1),
               "in_place_ms_per_step": round(1000 * best[True], 1),
               "speedup": round(best[False] / best[True], 2), "same_tokens": tokens[False] == tokens[True]}
        rows.append(row)
        print(f"{length:>13} {row['concat_ms_per_step']:>15} {row['in_place_ms_per_step']:>17} {row['speedup']:>9} "
              f"{str(row['same_tokens']):>12}", flush=True)
    write("decode_step.json", {"machine": machine(device), "model": params.model.teacher, "dtype": params.model.dtype,
                               "batch": args.batch, "new_tokens": args.new_tokens, "repeats": args.repeats,
                               "steps": rows})


if __name__ == "__main__":
    main()
