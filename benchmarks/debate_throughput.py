"""Debate engine throughput: the default debate stage's workload on the engine before and after this wave.

    python benchmarks/debate_throughput.py [--questions 64] [--batch-size 128] [--device cpu] [--profile]

The workload is what the debate stage runs per chunk (`debate.debate_chunk` with params.yaml's
`debate` section: single agent, self-consistency samples, every round, the summarizer) on the
first questions of the pipeline's test split. It runs once per engine on one loaded model, in one
process, each engine adding one change to the one before (`engines()`): "before" is the engine of
the previous release (every row prefilled whole into transformers' concatenating KV cache, samples
drawn with torch.multinomial row by row, the cache copied in order whenever a row finishes, fixed
batches, each call of the debate on its own); then prefix sharing (`backends.prefill`), the
in-place cache (`kv_cache.InPlaceLayer`), prefill in length buckets
(`backends.PREFILL_BUCKET_COST_TOKENS`), one uniform per draw (`backends.sample_tokens`), finished
rows' slots refilled (`kv_cache.drop_rows`), continuous batching (`backends.ADMIT_FREE_SHARE`), and
"after": the baselines and round 1 in one continuous batch (`backends.generate_calls`), the engine
the pipeline runs. `--engines` runs a subset. `--questions` as many as a debate chunk
(`debate.chunk_size`) is one chunk's workload.

Reported for each: the tokens that went through the model (padding and repeats included), the
tokens that must be processed (prompt + generated), wall time, and the effective rate against a
roofline: 2 x parameters x tokens that must be processed, per second, over the matrix-product peak
measured on this machine in the same run (same dtype; the higher of a measurement before the
engines and one after); where the time went (prefill, decoding steps by rows, outside the model);
the share of the KV-cache slots the decoding steps read that are padding, and the share in columns
no row uses (`--profile`: the pipeline's engine once more under torch.profiler, by operator).
Greedy answers must be the same on every engine: the share of the single agent's answers identical to "before" is reported. Sampling is
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
from collections.abc import Callable
from contextlib import contextmanager
from dataclasses import dataclass, replace

from common import (TokenCounter, machine, matmul_peak_gflops, peak_rss_gib, read_earlier, reset_peak_rss, setup,
                    write)

from agentark_utils import backends, debate, kv_cache
from agentark_utils.backends import HFBackend, OpenAIBackend
from agentark_utils.debate import debate_chunk
from agentark_utils.metrics import system_calls
from agentark_utils.models import find_gguf
from agentark_utils.training import torch_device


def greedy_texts(records) -> list[str]:
    """The greedy single agent's answer to each question: the calls two engines must agree on."""
    return [call["text"] for r in records for call in system_calls(r, "single")]


def multinomial_tokens(logits, temperature, generators=None):
    """The sampler of the engine before: torch.multinomial, one row at a time."""
    import torch

    temperatures, generators = backends.per_row(temperature, len(logits)), backends.per_row(generators, len(logits))
    tokens = logits.argmax(-1)
    for row, t in enumerate(temperatures):
        if t > 0:
            tokens[row] = torch.multinomial(torch.softmax(logits[row] / t, dim=-1), 1, generator=generators[row])[0]
    return tokens


def select_rows_in_order(cache, running):
    """The row dropping of the engine before: every layer's whole cache copied, rows kept in order."""
    keep = running.nonzero().squeeze(-1)
    cache.batch_select_indices(keep)
    return keep


@dataclass(frozen=True)
class Engine:
    """What the benchmark sets before a run; the defaults are the engine of the previous release."""

    label: str
    share_prefixes: bool = False
    cache_in_place: bool = False
    prefill_bucket_cost: int = 10**9  # costlier than any padding: one prefill forward per batch
    sampler: Callable = multinomial_tokens
    drop_rows: Callable = select_rows_in_order
    admit_free_share: float = 1.0  # rows join a batch only once it is empty: batch after batch
    run_calls: Callable = backends.sequential_calls  # each call of the debate on its own

    def install(self, backend: HFBackend) -> None:
        backend.share_prefixes, backend.cache_in_place = self.share_prefixes, self.cache_in_place
        backends.PREFILL_BUCKET_COST_TOKENS, backends.ADMIT_FREE_SHARE = self.prefill_bucket_cost, self.admit_free_share
        backends.sample_tokens, kv_cache.drop_rows, debate.generate_calls = self.sampler, self.drop_rows, self.run_calls


def engines() -> dict[str, Engine]:
    """Each engine adds one change to the one before it; the last is the engine the pipeline runs."""
    changes = [  # key, label, change
        ("prefix_sharing", "prefix sharing", {"share_prefixes": True}),
        ("in_place", "+ in-place KV cache", {"cache_in_place": True}),
        ("buckets", "+ prefill in length buckets", {"prefill_bucket_cost": backends.PREFILL_BUCKET_COST_TOKENS}),
        ("sampling", "+ one uniform per draw", {"sampler": backends.sample_tokens}),
        ("drop", "+ finished rows' slots refilled", {"drop_rows": kv_cache.drop_rows}),
        ("continuous", "+ continuous batching", {"admit_free_share": backends.ADMIT_FREE_SHARE}),
        ("after", "+ baselines and round 1 in one batch", {"run_calls": backends.generate_calls}),
    ]
    out = {"before": Engine("every row prefilled whole")}
    for key, label, change in changes:
        out[key] = replace(list(out.values())[-1], label=label, **change)
    return out


ENGINES = engines()


def run(backend: HFBackend, questions, params, engine: str, n_params: int
        ) -> tuple[dict, list[str], list[str]]:
    ENGINES[engine].install(backend)
    label = ENGINES[engine].label
    counter = TokenCounter(backend.model)
    model, backend.model = backend.model, counter
    prefill, backends.prefill = backends.prefill, counter.timing_prefill(backends.prefill)
    reset_peak_rss()
    began = time.perf_counter()
    records = debate_chunk(questions, backend, params.debate, seed=params.debate.seed)
    wall = time.perf_counter() - began
    backend.model, backends.prefill = model, prefill
    calls = [c for r in records for system in ("single", "self_consistency", "debate") for c in system_calls(r, system)]
    prompt = sum(c["prompt_tokens"] for c in calls)
    generated = sum(c["completion_tokens"] for c in calls)
    gflops = 2 * n_params * (prompt + generated) / wall / 1e9  # useful work only: no padding, no repeats
    row = {"engine": label, "calls": len(calls),
           "prompt_tokens": prompt, "generated_tokens": generated, "tokens_through_model": counter.tokens,
           "wall_s": round(wall, 1), "generated_tokens_per_s": round(generated / wall, 1),
           "effective_gflops": round(gflops, 1), "peak_rss_gib": round(peak_rss_gib(), 2),
           # Where the time goes: the model's prefill and decoding forwards, and everything else
           # (sampling, cache bookkeeping, tokenizing, grading).
           "prefill_s": round(counter.prefill_s, 1), "decode_s": round(sum(s for _, s in counter.steps), 1),
           "outside_model_s": round(wall - counter.prefill_s - sum(s for _, s in counter.steps), 1),
           "decoding": counter.decoding(), "decode_kv_padding_share": counter.kv_padding_share(),
           "decode_kv_unused_column_share": counter.kv_unused_column_share()}
    return row, [c["text"] for c in calls], greedy_texts(records)


def profile_operators(backend: HFBackend, questions, params, top: int = 12) -> dict:
    """The pipeline's engine once more under torch.profiler: the operators that took the most time
    (self CPU time, so a matrix product inside a linear layer counts once), each with its share of
    the profiled total. The profiler slows the run down: shares, not seconds, compare with the rest."""
    import torch

    ENGINES["after"].install(backend)
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
        debate_chunk(questions, backend, params.debate, seed=params.debate.seed)
    events = sorted(prof.key_averages(), key=lambda e: e.self_cpu_time_total, reverse=True)
    total = sum(e.self_cpu_time_total for e in events)
    return {"profiled_total_s": round(total / 1e6, 1),
            "operators": {e.key: {"self_s": round(e.self_cpu_time_total / 1e6, 2),
                                  "share": round(e.self_cpu_time_total / total, 3), "calls": e.count}
                          for e in events[:top]}}


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
    parser.add_argument("--engines", nargs="+", choices=list(ENGINES), default=list(ENGINES),
                        help="engines to run, in their order (before and after always run)")
    parser.add_argument("--profile", action="store_true",
                        help="also run the after engine under torch.profiler: where its time goes, by operator")
    args = parser.parse_args()
    selected = [engine for engine in ENGINES if engine in args.engines or engine in ("before", "after")]
    params, questions = setup(args.questions)
    device = torch_device(args.device or params.model.device)
    dtype = params.model.dtype
    backend = HFBackend(params.model.teacher, dtype=dtype, device=device,
                        batch_size=args.batch_size or params.model.batch_size)
    n_params = sum(p.numel() for p in backend.model.parameters())
    peak_dtype = dtype if dtype != "auto" else "float32"
    peaks = [matmul_peak_gflops(peak_dtype)]
    debate_chunk(questions[:2], backend, params.debate, seed=0)  # warm-up: first-call allocations
    rows, texts, greedy = {}, {}, {}
    for engine in selected:
        rows[engine], texts[engine], greedy[engine] = run(backend, questions, params, engine, n_params)
    # The peak once more, after: other tenants of a shared host can depress one measurement (199 and
    # 428 GFLOP/s on two days). The higher of the two is the roofline.
    peaks.append(matmul_peak_gflops(peak_dtype))
    peak = max(peaks)
    for row in rows.values():
        row["roofline_fraction"] = round(row["effective_gflops"] / peak, 3)
    before, after = rows["before"], rows["after"]
    after_greedy = greedy["after"]

    def share_same(a: list[str], b: list[str]) -> float:
        return round(sum(x == y for x, y in zip(a, b)) / len(a), 4)

    same = {engine: share_same(greedy["before"], greedy[engine]) for engine in selected[1:]}
    same_as_previous = {engine: share_same(texts[previous], texts[engine])
                        for previous, engine in zip(selected, selected[1:])}
    must = after["prompt_tokens"] + after["generated_tokens"]
    result = {
        "machine": machine(device), "model": params.model.teacher, "dtype": dtype,
        "workload": {"questions": len(questions), "debate": params.debate.model_dump(), "batch_size": backend.batch_size},
        "matmul_peak_gflops": round(peak, 1), "matmul_peak_gflops_before_and_after": [round(p, 1) for p in peaks],
        "model_parameters": n_params,
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
    print(f"{'engine':>38} {'calls':>6} {'through model':>14} {'wall s':>8} {'gen tok/s':>10} {'GFLOP/s':>8} "
          f"{'roofline':>9}")
    for row in rows.values():
        print(f"{row['engine']:>38} {row['calls']:>6} {row['tokens_through_model']:>14} {row['wall_s']:>8} "
              f"{row['generated_tokens_per_s']:>10} {row['effective_gflops']:>8} {row['roofline_fraction']:>9}")
    print(f"tokens that must be processed (prompt + generated): {must}; matmul peak {peak:.0f} GFLOP/s ({dtype})")
    print(f"{'engine':>38} {'prefill s':>10} {'decode s':>9} {'outside s':>10}  decoding steps of up to 16 rows")
    for row in rows.values():
        small = [band for name, band in row["decoding"].items() if name in ("1-4 rows", "5-16 rows")]
        print(f"{row['engine']:>38} {row['prefill_s']:>10} {row['decode_s']:>9} {row['outside_model_s']:>10}  "
              f"{sum(b['steps'] for b in small)} steps, {sum(b['s'] for b in small):.1f} s")
    print(f"speed-up over before: {result['speedup_by_engine']}")
    print(f"identical greedy answers to before's ({len(greedy['after'])}): {same}")
    print(f"identical generations to the previous engine's ({len(texts['after'])}): {same_as_previous}")
    print(f"KV-cache slots read by decoding steps that are padding: "
          f"{ {engine: row['decode_kv_padding_share'] for engine, row in rows.items()} }; in columns no row uses: "
          f"{ {engine: row['decode_kv_unused_column_share'] for engine, row in rows.items()} }")
    if args.profile:
        result["after_profile"] = profile_operators(backend, questions, params)
        print(f"the after engine by operator (self CPU time, profiled: "
              f"{result['after_profile']['profiled_total_s']} s):")
        for name, op in result["after_profile"]["operators"].items():
            print(f"{name:>52} {op['self_s']:>8} s {op['share']:>7.1%} {op['calls']:>8} calls")
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
