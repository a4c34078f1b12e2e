"""Run a stage's notebook with Papermill, after validating the whole params.yaml.

    python -m agentark_utils.stages debate            # what `dvc repro` calls
    python -m agentark_utils.stages sft --strategy da
    python -m agentark_utils.stages debate --params my_params.yaml --out-dir /tmp/debate

Every section of params.yaml is checked before anything runs (a typo in a later stage's section
fails now, not an hour later); the notebook then receives only the sections it reads.

`dvc.yaml` is the one place a stage's notebook and params sections are written: `STAGES` reads
them from it (the notebook is the stage's `.ipynb` dep, the sections the heads of its `params`
entries), and adds only what DVC does not know, the notebook's path parameters. Each notebook's
parameters cell holds the defaults of its sections for JupyterLab users, written from params.yaml:

    python -m agentark_utils.stages sync-notebooks     # after changing a default in params.yaml
"""

from __future__ import annotations

import argparse
import ast
import json
import os
import pprint
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from agentark_utils.config import ParamsError, load_params
from agentark_utils.store import write_json

KERNEL = os.environ.get("AGENTARK_KERNEL", "agentark")
# Kernels that declare CurveZMQ support (ipykernel >= 7.4 does) get keys from the kernel manager;
# unencrypted, the kernel warns "running over TCP without encryption" at every stage start.
KERNEL_CONFIG = {"KernelManager": {"transport_encryption": "auto"}}
REPO = Path(__file__).resolve().parents[1]


@dataclass(frozen=True)
class Stage:
    notebook: str  # from dvc.yaml: the stage's .ipynb dep
    sections: tuple[str, ...]  # from dvc.yaml: the params.yaml sections the notebook receives
    out_dir: str  # may contain {strategy}
    paths: dict = field(default_factory=dict)  # other path parameters (inputs, model dir)


# The students every analysis compares with the base, by name; dvc.yaml lists their directories as
# deps of each stage that reads them (tests/test_pipeline.py checks it).
STUDENTS = {"rsft": "models/rsft", "da": "models/da", "pad": "models/pad", "answer_only": "models/answer_only",
            "cot": "models/cot"}

# What dvc.yaml does not say: where each notebook writes, and its other path parameters.
PATHS = {
    "debate": ("results/debate", {}),
    "extract": ("results/extract", {"debate_dir": "results/debate"}),
    "sft": ("results/sft/{strategy}", {"extract_dir": "results/extract", "model_dir": "models/{strategy}"}),
    "pad": ("results/pad", {"debate_dir": "results/debate", "extract_dir": "results/extract", "prm_dir": "models/prm", "model_dir": "models/pad"}),
    "pad_validation": ("results/pad_validation", {"pad_dir": "models/pad"}),
    "evaluate": ("results/eval", {"debate_dir": "results/debate", "figures_dir": "results/figures",
                                  "students": STUDENTS}),
    "robustness": ("results/robustness", {"debate_dir": "results/debate", "eval_dir": "results/eval",
                                          "figures_dir": "results/figures", "students": STUDENTS}),
    "reasoning": ("results/reasoning", {"debate_dir": "results/debate", "figures_dir": "results/figures",
                                        "students": STUDENTS}),
    "scaling": ("results/scaling", {"debate_dir": "results/debate", "extract_dir": "results/extract",
                                    "eval_dir": "results/eval", "work_dir": "models/scaling",
                                    "figures_dir": "results/figures"}),
    "open_ended": ("results/open_ended", {"figures_dir": "results/figures", "students": STUDENTS}),
    "figures": ("results/figures", {"eval_dir": "results/eval", "figures_dir": "results/figures"}),
    "calibration": ("results/calibration", {"exp_json": "results/calibration/experiments.json"}),
}


def read_stages(dvc_yaml: Path = REPO / "dvc.yaml") -> dict[str, Stage]:
    """The notebook stages of `dvc_yaml` (those whose command is this module), with `PATHS`."""
    stages = {}
    for name, spec in yaml.safe_load(dvc_yaml.read_text())["stages"].items():
        spec = spec.get("do", spec)  # a foreach stage (sft): its template
        if not spec["cmd"].startswith(f"python -m agentark_utils.stages {name}"):
            continue
        (notebook,) = [dep for dep in spec["deps"] if dep.endswith(".ipynb")]
        sections = tuple(dict.fromkeys(entry.split(".")[0] for entry in spec.get("params", [])))
        out_dir, paths = PATHS[name]
        stages[name] = Stage(notebook, sections, out_dir, paths)
    return stages


STAGES = read_stages()


def sync_notebooks(params_path: str | Path = "params.yaml", root: Path = REPO) -> list[str]:
    """Write each stage notebook's parameters cell (under `root`) from params.yaml: every section
    the stage receives, as a dict literal in params.yaml's key order, and `students` where the stage
    takes them; other lines of the cell stay. Returns the notebooks that changed."""
    defaults = {**yaml.safe_load(Path(params_path).read_text()), "students": STUDENTS}
    changed = []
    for stage in STAGES.values():
        written = set(stage.sections) | ({"students"} & set(stage.paths))
        path = root / stage.notebook
        notebook = json.loads(path.read_text())
        cell = next(c for c in notebook["cells"] if "parameters" in c["metadata"].get("tags", []))
        source = "".join(cell["source"])
        lines = source.splitlines(keepends=True)
        out = []
        for node in ast.parse(source).body:
            text = "".join(lines[node.lineno - 1:node.end_lineno])
            name = node.targets[0].id if isinstance(node, ast.Assign) and isinstance(node.targets[0], ast.Name) else None
            if name in written:
                text = f"{name} = {pprint.pformat(defaults[name], sort_dicts=False)}" + "\n" * text.endswith("\n")
            out.append(text)
        if "".join(out) != source:
            cell["source"] = "".join(out).splitlines(keepends=True)
            path.write_text(json.dumps(notebook, indent=1, ensure_ascii=False) + "\n")
            changed.append(stage.notebook)
    return changed


# The packages whose versions shape results; recorded with every run (README "Reproducibility").
RECORDED_PACKAGES = ("torch", "transformers", "trl", "peft", "accelerate", "datasets", "reasoning-gym", "math-verify",
                     "papermill", "numpy", "pandas", "vllm")


def environment() -> dict:
    """The resolved environment of a run: Python, platform, accelerator and package versions.

    No timestamps or host names: the file only changes when the environment does, so DVC does not
    see a new output on every identical re-run.
    """
    import importlib.metadata
    import platform

    import torch

    packages = {}
    for name in RECORDED_PACKAGES:
        try:
            packages[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            packages[name] = None
    return {"python": platform.python_version(), "platform": platform.system().lower(), "machine": platform.machine(),
            "cuda": torch.version.cuda if torch.cuda.is_available() else None, "packages": packages}


def execute_notebook(notebook: str | Path, executed: str | Path, parameters: dict, kernel: str = KERNEL) -> Path:
    """Run a notebook with Papermill (its log to stdout, the kernel's transport encrypted)."""
    import papermill
    from traitlets.config import Config

    Path(executed).parent.mkdir(parents=True, exist_ok=True)
    papermill.execute_notebook(str(notebook), str(executed), parameters=parameters, kernel_name=kernel,
                               progress_bar=False, log_output=True, config=Config(KERNEL_CONFIG))
    return Path(executed)


def run_stage(name: str, params_path: str | Path = "params.yaml", out_dir: str | None = None,
              kernel: str = KERNEL, strategy: str | None = None, paths: dict | None = None) -> Path:
    """Execute one stage's notebook; return the path of the executed copy.

    `paths` overrides the stage's input/output path parameters (tests point them at temp dirs).
    """
    from agentark_utils.extraction import STRATEGIES

    if name not in STAGES:
        raise SystemExit(f"unknown stage {name!r}; stages: {', '.join(STAGES)}")
    stage = STAGES[name]
    needs_strategy = "{strategy}" in stage.out_dir
    if needs_strategy and strategy not in STRATEGIES:
        raise SystemExit(f"stage {name!r} needs --strategy, one of {', '.join(STRATEGIES)} (got {strategy!r})")
    params = load_params(params_path)
    out_dir = out_dir or stage.out_dir.format(strategy=strategy)
    parameters = {section: getattr(params, section).model_dump() for section in stage.sections}
    parameters.update({key: value.format(strategy=strategy) if isinstance(value, str) else value
                       for key, value in stage.paths.items()})
    parameters.update(paths or {})
    parameters["out_dir"] = out_dir
    if needs_strategy:
        parameters["strategy"] = strategy
    executed = execute_notebook(REPO / stage.notebook, Path(out_dir) / Path(stage.notebook).name, parameters, kernel)
    write_json(Path(out_dir) / "environment.json", environment())
    return executed


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Run a stage notebook with Papermill.")
    parser.add_argument("stage", choices=sorted(STAGES) + ["sync-notebooks"],
                        help="a stage, or sync-notebooks: rewrite the notebooks' parameters cells from --params")
    parser.add_argument("--params", default="params.yaml")
    parser.add_argument("--out-dir", default=None)
    parser.add_argument("--kernel", default=KERNEL)
    parser.add_argument("--strategy", default=None, help="for the sft stage: rsft, da, answer_only or cot")
    args = parser.parse_args(argv)
    try:
        if args.stage == "sync-notebooks":
            load_params(args.params, check_machine=False)  # only valid defaults go into the notebooks
            print("\n".join(f"rewrote {nb}" for nb in sync_notebooks(args.params)) or "notebooks already match")
        else:
            print(f"executed {run_stage(args.stage, args.params, args.out_dir, args.kernel, args.strategy)}")
    except ParamsError as error:  # it names the file, the key and what is wrong: no traceback needed
        raise SystemExit(str(error)) from None


if __name__ == "__main__":
    main()
