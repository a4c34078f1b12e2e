"""Shared by the benchmark scripts: the default model settings, questions, memory and the output."""

from __future__ import annotations

import argparse
import json
import os
import platform
import time
from pathlib import Path

from agentark_utils.config import load_params
from agentark_utils.tasks import load_task


def setup(n_questions: int):
    """(params, questions): the validated params.yaml and the first `n_questions` of the pipeline's
    own test split, so a benchmark never scores a student on a question it was trained on."""
    params = load_params("params.yaml")
    data = params.data
    _, test = load_task(data.task, data.n_train, data.n_test, seed=data.seed, path=data.path)
    if n_questions > len(test):
        raise SystemExit(f"--questions {n_questions}: the pipeline's test split has {len(test)} (data.n_test)")
    return params, test[:n_questions]


def at_least_one(text: str) -> int:
    """argparse type for counts such as --repeats: an integer of at least 1."""
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, not {value}")
    return value


def matmul_peak_gflops(dtype: str, shape: tuple[int, int, int] = (1024, 1024, 1024), repeats: int = 20) -> float:
    """Best rate of (m x k) @ (k x n) matrix products on this machine, shape = (m, k, n): the
    roofline's ceiling with square ones, a layer's rate with the model's own shape."""
    import torch

    m, k, n = shape
    a = torch.randn(m, k, dtype=getattr(torch, dtype))
    b = torch.randn(k, n, dtype=getattr(torch, dtype))
    a @ b  # warm-up
    best = float("inf")
    for _ in range(repeats):
        began = time.perf_counter()
        a @ b
        best = min(best, time.perf_counter() - began)
    return 2 * m * k * n / best / 1e9


class TokenCounter:
    """Wraps the model: counts the input tokens (padding included) of every forward pass and times
    them, the forwards of a prefill (`timing_prefill` wraps `backends.prefill`) apart from decoding
    steps (`steps`: each step's rows and seconds). A forward's shape does not tell them apart: when
    every prompt of a prefill is the same, its forward after the shared prefix is one token wide."""

    def __init__(self, model):
        self.model, self.tokens, self.steps, self.prefilling = model, 0, [], False
        self.prefill_tokens, self.prefill_s = 0, 0.0
        # KV-cache slots the decoding steps' attention reads (rows x cache width), how many of them
        # hold a token (the rest are padding, which attention reads and masks out), and how many lie
        # in columns no row uses (the only padding a narrower cache could drop without ragged rows).
        self.kv_slots, self.kv_tokens, self.kv_unused_column_slots = 0, 0, 0

    def timing_prefill(self, prefill):
        """`prefill`, with the forwards it makes counted as prefill."""
        def wrapped(*args, **kwargs):
            self.prefilling = True
            try:
                return prefill(*args, **kwargs)
            finally:
                self.prefilling = False
        return wrapped

    def __getattr__(self, name):
        return getattr(self.model, name)

    def __call__(self, *, input_ids, **kwargs):
        self.tokens += input_ids.numel()
        began = time.perf_counter()
        out = self.model(input_ids=input_ids, **kwargs)
        if out.logits.device.type == "cuda":  # kernels run asynchronously there
            import torch

            torch.cuda.synchronize()
        seconds = time.perf_counter() - began
        if self.prefilling:
            self.prefill_tokens += input_ids.numel()
            self.prefill_s += seconds
        else:
            self.steps.append((input_ids.shape[0], seconds))
            mask = kwargs.get("attention_mask")
            if mask is not None:
                self.kv_slots += mask.numel()
                self.kv_tokens += int(mask.sum())
                self.kv_unused_column_slots += mask.shape[0] * int((~mask.bool().any(0)).sum())
        return out

    def kv_padding_share(self) -> float | None:
        """The share of the KV-cache slots read by decoding steps that are padding."""
        return round(1 - self.kv_tokens / self.kv_slots, 3) if self.kv_slots else None

    def kv_unused_column_share(self) -> float | None:
        """The share of those slots in columns that no row of the step uses."""
        return round(self.kv_unused_column_slots / self.kv_slots, 3) if self.kv_slots else None

    def decoding(self, bands: tuple[int, ...] = (4, 16, 64)) -> dict:
        """Decoding steps by rows in the step: up to each band's bound, and above the last."""
        edges = [0, *bands, float("inf")]
        out = {}
        for low, high in zip(edges, edges[1:]):
            steps = [(rows, s) for rows, s in self.steps if low < rows <= high]
            seconds, rows = sum(s for _, s in steps), sum(r for r, _ in steps)
            name = f"{low + 1}-{high} rows" if high != float("inf") else f"over {low} rows"
            out[name] = {"steps": len(steps), "s": round(seconds, 1),
                         "ms_per_step": round(1000 * seconds / len(steps), 1) if steps else None,
                         "ms_per_row": round(1000 * seconds / rows, 2) if rows else None}
        return out


def reset_peak_rss() -> None:
    """Start a new high-water mark for this process's resident memory (Linux)."""
    Path("/proc/self/clear_refs").write_text("5")


def peak_rss_gib() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 2**20
    return float("nan")


# CPU features that decide which precision is faster here: these shared machines differ, and bf16
# matrix products run several times faster than fp32 with AMX, slower without it (README "Precision").
CPU_FLAGS = ("avx512_bf16", "amx_bf16")


def cpu_flags(info: Path = Path("/proc/cpuinfo")) -> list[str]:
    """The CPU_FLAGS this machine has (Linux: /proc/cpuinfo; elsewhere none are reported)."""
    present = set(info.read_text().split()) if info.exists() else set()
    return [flag for flag in CPU_FLAGS if flag in present]


def machine(device: str) -> dict:
    info = {"cpus": os.cpu_count(), "processor": platform.processor() or platform.machine(),
            "cpu_flags": cpu_flags(), "device": device}
    if device.startswith("cuda"):
        import torch

        info["gpu"] = torch.cuda.get_device_name(0)
    return info


def read_earlier(name: str) -> dict:
    """The result a benchmark wrote last time (empty if none)."""
    path = Path("results/benchmarks") / name
    return json.loads(path.read_text()) if path.exists() else {}


def write(name: str, result: dict) -> Path:
    path = Path("results/benchmarks") / name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {path}")
    return path
