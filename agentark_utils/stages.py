"""Run a stage's notebook with Papermill, after validating the whole params.yaml.

    python -m agentark_utils.stages debate            # what `dvc repro` calls
    python -m agentark_utils.stages debate --params my_params.yaml --out-dir /tmp/debate

Every section of params.yaml is checked before anything runs (a typo in a later stage's section
fails now, not an hour later); the notebook then receives only the sections it reads.
"""

from __future__ import annotations

import argparse
import os
from dataclasses import dataclass
from pathlib import Path

from agentark_utils.config import load_params

KERNEL = os.environ.get("AGENTARK_KERNEL", "agentark")
REPO = Path(__file__).resolve().parents[1]


@dataclass(frozen=True)
class Stage:
    notebook: str
    sections: tuple[str, ...]
    out_dir: str


STAGES = {
    "debate": Stage("notebooks/01_debate.ipynb", ("model", "data", "debate"), "results/debate"),
}


def run_stage(name: str, params_path: str | Path = "params.yaml", out_dir: str | None = None,
              kernel: str = KERNEL) -> Path:
    """Execute one stage's notebook; return the path of the executed copy."""
    import papermill

    if name not in STAGES:
        raise SystemExit(f"unknown stage {name!r}; stages: {', '.join(STAGES)}")
    params = load_params(params_path)
    stage = STAGES[name]
    out_dir = out_dir or stage.out_dir
    parameters = {section: getattr(params, section).model_dump() for section in stage.sections}
    parameters["out_dir"] = out_dir
    executed = Path(out_dir) / Path(stage.notebook).name
    executed.parent.mkdir(parents=True, exist_ok=True)
    papermill.execute_notebook(str(REPO / stage.notebook), str(executed), parameters=parameters, kernel_name=kernel,
                               progress_bar=False, log_output=True)
    return executed


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Run a stage notebook with Papermill.")
    parser.add_argument("stage", choices=sorted(STAGES))
    parser.add_argument("--params", default="params.yaml")
    parser.add_argument("--out-dir", default=None)
    parser.add_argument("--kernel", default=KERNEL)
    args = parser.parse_args(argv)
    print(f"executed {run_stage(args.stage, args.params, args.out_dir, args.kernel)}")


if __name__ == "__main__":
    main()
