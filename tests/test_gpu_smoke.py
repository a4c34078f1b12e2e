"""benchmarks/gpu_smoke.py on the CPU with --tiny, so that the GPU check cannot rot between GPU runs."""

import json
import math
import os
import subprocess
import sys

import pytest

from conftest import ROOT

SCRIPT = ROOT / "benchmarks" / "gpu_smoke.py"
NUMBERS = {
    "gen": ["wall_s", "peak_gpu_mem_gib", "new_tokens", "tok_per_s_batch3", "tok_per_s_batch1",
            "greedy_batch1_vs_batch6_identical", "greedy_cached_vs_uncached_identical"],
    "sft": ["wall_s", "peak_gpu_mem_gib", "steps", "tokens", "tok_per_s", "loss_first", "loss_last"],
    "prm": ["wall_s", "peak_gpu_mem_gib", "steps", "tokens", "tok_per_s", "loss_first", "loss_last"],
    "grpo": ["wall_s", "peak_gpu_mem_gib", "steps", "rollout_tokens", "rollout_tok_per_s", "reward_mean_last",
             "loss_last"],
}


def run_script(*args, tmp_path):
    env = {**os.environ, "PYTHONPATH": str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", "")}
    return subprocess.run([sys.executable, str(SCRIPT), *map(str, args)], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=600)


@pytest.fixture(scope="module")
def prepared(tmp_path_factory):
    """What `--prepare DIR` writes: the tokenizer and a tiny random model, small enough to carry."""
    out = tmp_path_factory.mktemp("prepared") / "smoke-model"
    sys.path.insert(0, str(ROOT / "benchmarks"))
    try:
        import gpu_smoke
    finally:
        sys.path.remove(str(ROOT / "benchmarks"))
    gpu_smoke.prepare(out)
    return out


def test_prepare_writes_a_small_loadable_model(prepared):
    from agentark_utils.models import load_causal_lm

    size = sum(f.stat().st_size for f in prepared.iterdir())
    assert size < 10 * 2**20
    model, tokenizer = load_causal_lm(str(prepared), dtype="float32", device="cpu")
    assert model.config.num_hidden_layers == 2 and tokenizer.chat_template


def test_tiny_cpu_run_passes_every_part_and_reports_its_numbers(prepared, tmp_path):
    report = tmp_path / "smoke.json"
    run = run_script("--device", "cpu", "--tiny", "--tokenizer-dir", prepared, "--json", report, tmp_path=tmp_path)
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    result = json.loads(report.read_text())
    assert result["passed"] and list(result["parts"]) == list(NUMBERS)
    for name, keys in NUMBERS.items():
        part = result["parts"][name]
        assert part["passed"] and not part["failures"], (name, part)
        missing = [k for k in keys if k not in part]
        assert not missing, (name, missing)
        assert part["peak_gpu_mem_gib"] is None  # CPU: no GPU memory to report
        for key in keys:
            if isinstance(part[key], float):
                assert math.isfinite(part[key]), (name, key, part[key])
        assert f"[{name}] PASS" in run.stdout
    assert result["parts"]["gen"]["greedy_batch1_vs_batch6_identical"] == "6/6"
    assert result["parts"]["gen"]["greedy_cached_vs_uncached_identical"] == "2/2"
    assert result["parts"]["gen"]["new_tokens"] > 0 and result["parts"]["sft"]["steps"] == 2
    assert result["parts"]["prm"]["steps"] == 2 and result["parts"]["grpo"]["steps"] == 1
    assert "SUMMARY: PASS 4/4 parts passed" in run.stdout


def test_a_broken_part_fails_the_run_and_the_others_still_run(prepared, tmp_path):
    """A part that raises is reported FAIL with its error, the exit status is 1, the next part runs."""
    run = run_script("--device", "cpu", "--tiny", "--model-dir", prepared, "--parts", "sft,prm",
                     "--sft-max-length", "4", tmp_path=tmp_path)  # SFTParams rejects max_length < 16
    assert run.returncode == 1
    assert "[sft] FAIL (" in run.stdout and "[prm] PASS" in run.stdout
    assert "SUMMARY: FAIL 1/2 parts passed (failed: sft)" in run.stdout
