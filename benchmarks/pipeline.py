"""End-to-end timing of the default pipeline: each `dvc repro` stage, then a no-op re-run.

    make bench-pipeline          # on a fresh clone: every stage runs
    python benchmarks/pipeline.py --out results/benchmarks/stages.json

Stages run one at a time in dvc.yaml order (`dvc repro --single-item`), so each wall time is that
stage's alone. A stage that is already up to date takes about a second: run this on a fresh clone
to time real work. The times are written after every stage; `--resume` continues an interrupted
timing, keeping the times it wrote for stages that are still up to date.
"""

from __future__ import annotations

import argparse
import json
import platform
import subprocess
import time
from pathlib import Path

import yaml
from common import machine

from agentark_utils.training import torch_device


def stage_names(dvc_yaml: Path) -> list[str]:
    """Stages in file order, `foreach` stages expanded to name@item (dvc.yaml lists them in order)."""
    names = []
    for name, stage in yaml.safe_load(dvc_yaml.read_text())["stages"].items():
        names += [f"{name}@{item}" for item in stage["foreach"]] if "foreach" in stage else [name]
    return names


def timed(command: list[str]) -> float:
    began = time.perf_counter()
    subprocess.run(command, check=True)
    return time.perf_counter() - began


def up_to_date(stage: str) -> bool:
    """Whether `dvc status` finds the stage and everything upstream of it up to date."""
    return "up to date" in subprocess.run(["dvc", "status", stage], capture_output=True, text=True, check=True).stdout


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="results/benchmarks/stages.json")
    parser.add_argument("--resume", action="store_true",
                        help="keep the times --out holds for stages still up to date (an interrupted timing)")
    args = parser.parse_args()
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    timed_before = json.loads(out.read_text())["stages_s"] if args.resume and out.exists() else {}
    result = {
        "machine": {**machine(torch_device("auto")), "python": platform.python_version()},
        "commit": subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True).stdout.strip(),
        "stages_s": {}, "total_s": None, "noop_s": None, "targets": {"total_s": 2700, "noop_s": 15},
        "resumed": bool(timed_before),
    }
    stages = result["stages_s"]
    for name in stage_names(Path("dvc.yaml")):
        if name in timed_before and up_to_date(name):
            stages[name] = timed_before[name]
            print(f"{name}: up to date, kept its time from the interrupted run ({stages[name]} s)")
        else:
            stages[name] = round(timed(["dvc", "repro", "--single-item", name]), 1)
        out.write_text(json.dumps(result, indent=2) + "\n")  # an interrupted run keeps the stages it timed
    noop = result["noop_s"] = round(timed(["dvc", "repro"]), 1)
    result["total_s"] = round(sum(stages.values()), 1)
    out.write_text(json.dumps(result, indent=2) + "\n")
    width = max(map(len, stages))
    for name, seconds in stages.items():
        print(f"{name:<{width}}  {seconds:8.1f} s")
    print(f"{'total':<{width}}  {result['total_s']:8.1f} s   (target <= 2700 s, 45 min)")
    print(f"{'no-op re-run':<{width}}  {noop:8.1f} s   (target <= 15 s)")


if __name__ == "__main__":
    main()
