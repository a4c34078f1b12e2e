"""Debate engine throughput: the default debate stage's workload on the engine before and after this wave.

    python benchmarks/debate_throughput.py [--questions 64] [--batch-size 128] [--device cpu]

The workload is what the debate stage runs per chunk (`debate.debate_chunk` with params.yaml's
`debate` section: single agent, self-consistency samples, every round, the summarizer) on the
first questions of the pipeline's test split. It runs six times on one loaded model, in one
process, each engine adding one change to the one before: "before" prefills every row whole into
transformers' concatenating KV cache, samples with torch.multinomial row by row and copies the
cache in order when a row finishes (the engine of the previous release: `share_prefixes=False,
cache_in_place=False`, and this file's `multinomial_tokens` and `select_rows_in_order`); "prefix
sharing" prefills each batch's shared prefix and each distinct prompt once, in one forward
(`backends.prefill`); "in-place cache" also appends to the KV cache in place
(`kv_cache.InPlaceLayer`); "length buckets" also cuts each prefill into length buckets
(`backends.PREFILL_BUCKET_COST_TOKENS`, set here to the engine's value); "one uniform per draw"
also samples by inverting the CDF (`backends.sample_tokens`); "after" also moves running rows
into finished rows' slots (`kv_cache.drop_rows`): the engine the pipeline runs. `--questions` as
many as a debate chunk (`debate.chunk_size`) is one chunk's workload.

Reported for each: the tokens that went through the model (padding and repeats included), the
tokens that must be processed (prompt + generated), wall time, and the effective rate against a
roofline: 2 x parameters x tokens that must be processed, per second, over the matrix-product peak
measured on this machine in the same run (same dtype). Greedy answers must be the same on every
engine: the share of the single agent's answers identical to "before" is reported. Sampling is
seeded per conversation, so every engine gives the text of the one before it, except "one uniform
per draw", which draws other samples from the same distribution: the share of all generations
identical to the previous engine's is reported too.
Writes results/benchmarks/debate_throughput.json.

The peer, with `--llama-server BIN` (llama.cpp's `llama-server`, built from the vendored source of
the llama-cpp-python sdist; README "Performance" gives the commands): the same workload through the
`openai` backend against llama-server on loopback, on the GGUF the default model was dequantized
from (Q4_1), with `--parallel` slots and continuous batching. Its greedy single-agent answers are
compared with the hf engine's: same weights, but llama.cpp multiplies Q4_1 weights with 8-bit
activations, so greedy text may diverge (sampled calls draw from other generators: not compared).
"""

from __future__ import annotations

import argparse
import socket
import subprocess
import tempfile
import time
import urllib.request
from contextlib import contextmanager

from common import (TokenCounter, machine, matmul_peak_gflops, peak_rss_gib, read_earlier, reset_peak_rss, setup,
                    write)

from agentark_utils import backends, kv_cache
from agentark_utils.backends import HFBackend, OpenAIBackend
from agentark_utils.debate import debate_chunk
from agentark_utils.metrics import system_calls
from agentark_utils.models import find_gguf
from agentark_utils.training import torch_device


def greedy_texts(records) -> list[str]:
    """The greedy single agent's answer to each question: the calls two engines must agree on."""
    return [call["text"] for r in records for call in system_calls(r, "single")]


def multinomial_tokens(logits, temperature: float, generators=None):
    """The sampler of the engine before: torch.multinomial, one row at a time."""
    import torch

    if temperature == 0:
        return logits.argmax(-1)
    probs = torch.softmax(logits / temperature, dim=-1)
    return torch.stack([torch.multinomial(p, 1, generator=g).squeeze(-1) for p, g in zip(probs, generators)])


def select_rows_in_order(cache, running):
    """The row dropping of the engine before: every layer's whole cache copied, rows kept in order."""
    keep = running.nonzero().squeeze(-1)
    cache.batch_select_indices(keep)
    return keep


ONE_FORWARD = 10**9  # a prefill bucket costing more than any padding: one forward per batch
BUCKETS = backends.PREFILL_BUCKET_COST_TOKENS
FAST = (backends.sample_tokens, kv_cache.drop_rows)
OLD = (multinomial_tokens, select_rows_in_order)
ENGINES = {  # key: (what it is, share_prefixes, cache_in_place, prefill bucket cost in tokens, sampler, row dropping)
    "before": ("every row prefilled whole", False, False, ONE_FORWARD, *OLD),
    "prefix_sharing": ("prefix sharing", True, False, ONE_FORWARD, *OLD),
    "in_place": ("+ in-place KV cache", True, True, ONE_FORWARD, *OLD),
    "buckets": ("+ prefill in length buckets", True, True, BUCKETS, *OLD),
    "sampling": ("+ one uniform per draw", True, True, BUCKETS, FAST[0], OLD[1]),
    "after": ("+ finished rows' slots refilled", True, True, BUCKETS, *FAST),
}


def run(backend: HFBackend, questions, params, engine: str, n_params: int, peak: float
        ) -> tuple[dict, list[str], list[str]]:
    (label, backend.share_prefixes, backend.cache_in_place, backends.PREFILL_BUCKET_COST_TOKENS,
     backends.sample_tokens, kv_cache.drop_rows) = ENGINES[engine]
    counter = TokenCounter(backend.model)
    model, backend.model = backend.model, counter
    reset_peak_rss()
    began = time.perf_counter()
    records = debate_chunk(questions, backend, params.debate, seed=params.debate.seed)
    wall = time.perf_counter() - began
    backend.model = model
    calls = [c for r in records for system in ("single", "self_consistency", "debate") for c in system_calls(r, system)]
    prompt = sum(c["prompt_tokens"] for c in calls)
    generated = sum(c["completion_tokens"] for c in calls)
    gflops = 2 * n_params * (prompt + generated) / wall / 1e9  # useful work only: no padding, no repeats
    row = {"engine": label, "calls": len(calls),
           "prompt_tokens": prompt, "generated_tokens": generated, "tokens_through_model": counter.tokens,
           "wall_s": round(wall, 1), "generated_tokens_per_s": round(generated / wall, 1),
           "effective_gflops": round(gflops, 1), "roofline_fraction": round(gflops / peak, 3),
           "peak_rss_gib": round(peak_rss_gib(), 2),
           # Where the time goes: the model's prefill and decoding forwards, and everything else
           # (sampling, cache bookkeeping, tokenizing, grading).
           "prefill_s": round(counter.prefill_s, 1), "decode_s": round(sum(s for _, s in counter.steps), 1),
           "outside_model_s": round(wall - counter.prefill_s - sum(s for _, s in counter.steps), 1),
           "decoding": counter.decoding()}
    return row, [c["text"] for c in calls], greedy_texts(records)


@contextmanager
def llama_server(binary: str, gguf, parallel: int, threads: int, context_per_slot: int = 2048):
    """llama-server on loopback with `parallel` slots; yields its OpenAI base URL once healthy."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    command = [binary, "-m", str(gguf), "--host", "127.0.0.1", "--port", str(port), "--parallel", str(parallel),
               "--threads", str(threads), "--ctx-size", str(parallel * context_per_slot), "--jinja"]
    log = tempfile.TemporaryFile()  # it logs every request: a pipe nobody reads would fill and block it
    proc = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=log)
    try:
        deadline = time.monotonic() + 120
        while True:
            if proc.poll() is not None:
                log.seek(0)
                raise SystemExit(f"llama-server exited: {log.read().decode(errors='replace')[-2000:]}")
            try:
                urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=1)
                break
            except OSError:
                if time.monotonic() > deadline:
                    raise SystemExit("llama-server was not healthy within 120 s") from None
                time.sleep(0.5)
        yield f"http://127.0.0.1:{port}/v1"
    finally:
        proc.terminate()
        proc.wait(timeout=30)
        log.close()


def run_llama_cpp(binary: str, questions, params, parallel: int, threads: int, n_params: int, peak: float
                  ) -> tuple[dict, list[str]]:
    with llama_server(binary, find_gguf(), parallel, threads) as url:
        backend = OpenAIBackend("smollm2", base_url=url, concurrency=parallel,
                                enable_thinking=params.model.enable_thinking)
        debate_chunk(questions[:2], backend, params.debate, seed=0)  # warm-up
        began = time.perf_counter()
        records = debate_chunk(questions, backend, params.debate, seed=params.debate.seed)
        wall = time.perf_counter() - began
    calls = [c for r in records for system in ("single", "self_consistency", "debate") for c in system_calls(r, system)]
    prompt = sum(c["prompt_tokens"] for c in calls)
    generated = sum(c["completion_tokens"] for c in calls)
    gflops = 2 * n_params * (prompt + generated) / wall / 1e9
    row = {"engine": f"llama.cpp llama-server, Q4_1 GGUF, {parallel} slots, {threads} threads", "calls": len(calls),
           "prompt_tokens": prompt, "generated_tokens": generated, "wall_s": round(wall, 1),
           "generated_tokens_per_s": round(generated / wall, 1), "effective_gflops": round(gflops, 1),
           "roofline_fraction": round(gflops / peak, 3)}
    return row, greedy_texts(records)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--questions", type=int, default=64)
    parser.add_argument("--batch-size", type=int, default=None, help="default: model.batch_size of params.yaml")
    parser.add_argument("--device", default=None, help="default: model.device of params.yaml")
    parser.add_argument("--llama-server", default=None, metavar="BIN", help="also run llama.cpp's llama-server")
    parser.add_argument("--llama-parallel", type=int, default=16, help="llama-server slots (requests in flight)")
    parser.add_argument("--llama-threads", type=int, default=2)
    args = parser.parse_args()
    params, questions = setup(args.questions)
    device = torch_device(args.device or params.model.device)
    dtype = params.model.dtype
    backend = HFBackend(params.model.teacher, dtype=dtype, device=device,
                        batch_size=args.batch_size or params.model.batch_size)
    n_params = sum(p.numel() for p in backend.model.parameters())
    peak = matmul_peak_gflops(dtype if dtype != "auto" else "float32")
    debate_chunk(questions[:2], backend, params.debate, seed=0)  # warm-up: first-call allocations
    rows, texts, greedy = {}, {}, {}
    for engine in ENGINES:
        rows[engine], texts[engine], greedy[engine] = run(backend, questions, params, engine, n_params, peak)
    before, after = rows["before"], rows["after"]
    after_greedy = greedy["after"]

    def share_same(a: list[str], b: list[str]) -> float:
        return round(sum(x == y for x, y in zip(a, b)) / len(a), 4)

    same = {engine: share_same(greedy["before"], greedy[engine]) for engine in ENGINES if engine != "before"}
    engines = list(ENGINES)
    same_as_previous = {engine: share_same(texts[previous], texts[engine]) for previous, engine in zip(engines, engines[1:])}
    must = after["prompt_tokens"] + after["generated_tokens"]
    result = {
        "machine": machine(device), "model": params.model.teacher, "dtype": dtype,
        "workload": {"questions": len(questions), "debate": params.debate.model_dump(), "batch_size": backend.batch_size},
        "matmul_peak_gflops": round(peak, 1), "model_parameters": n_params,
        **rows,
        "speedup": round(before["wall_s"] / after["wall_s"], 2),
        "speedup_by_engine": {engine: round(before["wall_s"] / rows[engine]["wall_s"], 2) for engine in same},
        "tokens_must_process": must,
        "tokens_through_model_over_must_process": {  # each engine's own: sampled text differs between them
            key: round(rows[key]["tokens_through_model"] / (rows[key]["prompt_tokens"] + rows[key]["generated_tokens"]), 2)
            for key in ("before", "after")},
        "roofline_fraction": after["roofline_fraction"],
        "same_greedy_text": same["after"],
        "same_greedy_text_by_engine": same,
        "same_text_as_previous_engine": same_as_previous,
    }
    print(f"{'engine':>34} {'calls':>6} {'through model':>14} {'wall s':>8} {'gen tok/s':>10} {'GFLOP/s':>8} "
          f"{'roofline':>9}")
    for row in rows.values():
        print(f"{row['engine']:>34} {row['calls']:>6} {row['tokens_through_model']:>14} {row['wall_s']:>8} "
              f"{row['generated_tokens_per_s']:>10} {row['effective_gflops']:>8} {row['roofline_fraction']:>9}")
    print(f"tokens that must be processed (prompt + generated): {must}; matmul peak {peak:.0f} GFLOP/s ({dtype})")
    print(f"{'engine':>34} {'prefill s':>10} {'decode s':>9} {'outside s':>10}  decoding steps of up to 16 rows")
    for row in rows.values():
        small = [band for name, band in row["decoding"].items() if name in ("1-4 rows", "5-16 rows")]
        print(f"{row['engine']:>34} {row['prefill_s']:>10} {row['decode_s']:>9} {row['outside_model_s']:>10}  "
              f"{sum(b['steps'] for b in small)} steps, {sum(b['s'] for b in small):.1f} s")
    print(f"speed-up over before: {result['speedup_by_engine']}")
    print(f"identical greedy answers to before's ({len(greedy['after'])}): {same}")
    print(f"identical generations to the previous engine's ({len(texts['after'])}): {same_as_previous}")
    if args.llama_server:
        del backend  # its memory back before the server loads
        row, texts = run_llama_cpp(args.llama_server, questions, params, args.llama_parallel, args.llama_threads,
                                   n_params, peak)
        row["same_greedy_text_as_hf"] = round(sum(a == b for a, b in zip(texts, after_greedy)) / len(texts), 4)
        row["speedup_over_hf"] = round(after["wall_s"] / row["wall_s"], 2)  # hf as the pipeline runs it
        result["llama_cpp"] = row
        print(f"llama.cpp: {row['wall_s']} s, {row['generated_tokens_per_s']} generated tok/s (hf after: "
              f"{after['wall_s']} s); identical greedy answers {row['same_greedy_text_as_hf']:.1%}")
    elif "llama_cpp" in (earlier := read_earlier("debate_throughput.json")):
        # Building llama-server takes 10-16 min here: without it, the last measurement is kept, marked as
        # such, with the hf engine's wall time of its own run (its speed-up was measured against that).
        result["llama_cpp"] = {"hf_after_wall_s_in_that_run": earlier["after"]["wall_s"], **earlier["llama_cpp"],
                               "earlier_run": True}
    write("debate_throughput.json", result)


if __name__ == "__main__":
    main()
