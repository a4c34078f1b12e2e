"""The calibration sweep, run as DVC experiments: where the debate beats the greedy single agent.

Calibrating the default: at which task difficulty and debate protocol does the debate beat the
greedy single agent, for this teacher?

The sweep is `params.yaml`'s `calibration` section: a list of settings (overrides of the `data` and
`debate` sections). Each runs as a DVC experiment of the debate stage on held-out questions only
(`dvc exp run debate -S ...`: no training split, no out-of-domain set, one self-consistency sample,
since only the debate against the single agent is asked), drawn with `calibration.seed`, not the
main run's `data.seed`: the default is not picked on the test questions that then judge it. A
setting whose experiment already finished (same name, same params) is skipped, so an interrupted
sweep resumes. `read_experiments` turns `dvc exp show --json` into one row per experiment for
notebooks/11_calibration.ipynb.

    python -m agentark_utils.calibration run        # the sweep, as DVC experiments
    python -m agentark_utils.calibration report     # dvc exp show --json, then the notebook
                                                    # (--rev COMMIT: a sweep run before later commits)
(`make calibrate` does both.)

The second sweep chooses PAD's GRPO step size the same way: one DVC experiment of the
`pad_validation` stage per `pad_validation.learning_rates` value (it retrains the PRM and the PAD
student, then the base and PAD answer held-out questions no stage debates or tests).

    python -m agentark_utils.calibration pad-run      # make calibrate-pad does both
    python -m agentark_utils.calibration pad-report   # results/calibration/pad_sweep.csv and .png
"""

from __future__ import annotations

import argparse
import contextlib
import json
import shutil
import signal
import subprocess
import sys
import tempfile
from pathlib import Path

import pandas as pd
import yaml

from agentark_utils.config import CalibrationParams, ParamsError, load_params

# What every calibration run fixes, whatever the setting: held-out questions only.
FIXED = {"data.n_train": 0, "data.ood_tasks": [], "data.ood_paths": {}, "debate.self_consistency_samples": 1}
# The params sections an experiment of the debate stage reads: a finished experiment is reused only
# if all of them are what this sweep would run now.
SECTIONS = ("model", "data", "debate")
DEBATE_DIR = Path("results/debate")
METRICS_FILE = f"{DEBATE_DIR}/metrics.json"
# The step-size sweep: the sections the debate, pad and pad_validation stages read (and of
# `pad_validation`, only `n`: the list of rates is the sweep's), and where pad_validation writes.
PAD_SECTIONS = ("model", "data", "debate", "prm", "grpo", "evaluation")
PAD_METRICS_FILE = "results/pad_validation/metrics.json"
PAD_PREFIX = "pad-lr-"


def _yaml_value(value) -> str:
    if isinstance(value, list):
        return "[" + ",".join(_yaml_value(v) for v in value) + "]"
    if isinstance(value, bool):
        return str(value).lower()
    return str(value)


def setting_values(setting: dict, calibration: CalibrationParams) -> dict:
    """Every dotted param one setting's experiment sets: the fixed ones, then the setting's own."""
    return {**FIXED, "data.n_test": calibration.n_test, "data.seed": calibration.seed, **setting}


def overrides(setting: dict, calibration: CalibrationParams) -> list[str]:
    """The `-S key=value` overrides of one setting, for `dvc exp run`."""
    return [f"{key}={_yaml_value(value)}" for key, value in setting_values(setting, calibration).items()]


def finished(exp_show: list, prefix: str = "calibration-", metrics_file: str = METRICS_FILE) -> dict[str, dict]:
    """Name -> params.yaml of every experiment named `prefix`* in `dvc exp show --json` that wrote its metrics."""
    return {exp["name"]: exp["data"]["params"]["params.yaml"]["data"] for exp in _experiments(exp_show)
            if str(exp["name"]).startswith(prefix)
            and (exp["data"].get("metrics") or {}).get(metrics_file, {}).get("data")}


def experiment_params(params: dict, values: dict, names: tuple[str, ...] = SECTIONS) -> dict:
    """The sections `names` of params.yaml (a dict as read) as one setting's experiment runs them."""
    sections = {section: dict(params[section]) for section in names}
    for key, value in values.items():
        section, _, name = key.partition(".")
        sections[section][name] = value
    return sections


def already_ran(expected: dict, params: dict | None) -> bool:
    """Whether a finished experiment ran with exactly these sections (`experiment_params`). Code is
    not compared: experiments belong to the commit they ran on, so commit before a sweep."""
    return params is not None and all(params.get(section) == value for section, value in expected.items())


def experiment_name(index: int) -> str:
    return f"calibration-{index:02d}"


@contextlib.contextmanager
def _restoring(paths: tuple[str, ...] = ("params.yaml", "dvc.lock")):
    """Put `paths` back as they were when the block ends, however it ends (experiments run in the
    workspace and leave their params and lock there)."""
    backup = {path: Path(path).read_bytes() for path in paths if Path(path).exists()}
    try:
        yield
    finally:
        for path, content in backup.items():
            Path(path).write_bytes(content)


def run_sweep(params_path: str = "params.yaml") -> None:
    """Run every setting as a DVC experiment of the debate stage, one after the other, in the
    workspace; params.yaml, dvc.lock and the main run's debate outputs are restored afterwards (the
    experiments resume from, and rewrite, the same persisted records file)."""
    calibration = load_params(params_path).calibration
    saved = Path(tempfile.mkdtemp(prefix="calibration-"))
    if DEBATE_DIR.exists():
        shutil.copytree(DEBATE_DIR, saved / "debate")
    raw, done = yaml.safe_load(Path(params_path).read_text()), finished(_exp_show())
    try:
        with _restoring():
            for index, setting in enumerate(calibration.settings):
                name = experiment_name(index)
                print(f"calibration {index + 1}/{len(calibration.settings)}: {setting}", flush=True)
                if already_ran(experiment_params(raw, setting_values(setting, calibration)), done.get(name)):
                    print(f"  finished before as {name}: skipped", flush=True)
                    continue
                args = [arg for override in overrides(setting, calibration) for arg in ("-S", override)]
                subprocess.run(["dvc", "exp", "run", "debate", "--force", "-n", name, *args], check=True)
    finally:
        if (saved / "debate").exists():
            shutil.rmtree(DEBATE_DIR, ignore_errors=True)
            shutil.copytree(saved / "debate", DEBATE_DIR)
        shutil.rmtree(saved, ignore_errors=True)


def run_pad_sweep(params_path: str = "params.yaml") -> None:
    """One DVC experiment of the pad_validation stage per `pad_validation.learning_rates` value
    (`pad-lr-00`, ...), each retraining the PRM and the PAD student on the main run's debates; a
    rate that finished before with the same params is skipped, a stale one removed and run again.
    params.yaml and dvc.lock are restored afterwards and the main run's pad outputs checked out
    again from the cache, however the sweep ends."""
    rates = load_params(params_path).pad_validation.learning_rates
    if _stale("debate"):  # every experiment would debate again, and rewrite the persisted records
        raise SystemExit("the debate stage is not up to date: run `dvc repro debate` first "
                         "(the sweep compares step sizes on the main run's debates)")
    raw, shown = yaml.safe_load(Path(params_path).read_text()), _exp_show()
    done, existing = finished(shown, PAD_PREFIX, PAD_METRICS_FILE), {exp["name"] for exp in _experiments(shown)}
    try:
        with _restoring():
            for index, rate in enumerate(rates):
                name = f"{PAD_PREFIX}{index:02d}"
                print(f"PAD step size {index + 1}/{len(rates)}: grpo.learning_rate={rate}", flush=True)
                ran = done.get(name)
                if (already_ran(experiment_params(raw, {"grpo.learning_rate": rate}, PAD_SECTIONS), ran)
                        and ran["pad_validation"]["n"] == raw["pad_validation"]["n"]):
                    print(f"  finished before as {name}: skipped", flush=True)
                    continue
                if name in existing:  # DVC refuses a name twice on one commit
                    subprocess.run(["dvc", "exp", "remove", name], check=True)
                subprocess.run(["dvc", "exp", "run", "pad_validation", "-n", name, "-S", f"grpo.learning_rate={rate}"],
                               check=True)
    finally:
        subprocess.run(["dvc", "checkout", "pad", "pad_validation"], check=True)


def _stale(stage: str) -> bool:
    """Whether `dvc status` finds `stage` or a stage it depends on out of date."""
    status = subprocess.run(["dvc", "status", stage, "--json"], check=True, capture_output=True, text=True)
    return bool(json.loads(status.stdout or "{}"))


def _exp_show(rev: str | None = None) -> list:
    """`dvc exp show --json`: the experiments of HEAD, or of the commit `rev` they ran on."""
    command = ["dvc", "exp", "show", "--json", *(["--rev", rev] if rev else [])]
    return json.loads(subprocess.run(command, check=True, capture_output=True, text=True).stdout)


def _experiments(node) -> list[dict]:
    """Every experiment entry of `dvc exp show --json` (nested under its baseline commit)."""
    found = []
    if isinstance(node, dict):
        if isinstance(node.get("data"), dict) and "params" in node["data"] and node.get("name"):
            found.append(node)
        for value in node.values():
            found += _experiments(value)
    elif isinstance(node, list):
        for value in node:
            found += _experiments(value)
    return found


def with_full_metrics(exp_show: list, read, prefix: str = "calibration-", metrics_file: str = METRICS_FILE) -> list:
    """`dvc exp show --json` keeps only a metric's numbers (a CI's list and a None are dropped): put
    each finished `prefix`* experiment's whole metrics file back, as `read(rev)` gives it."""
    for exp in _experiments(exp_show):
        metrics = (exp["data"].get("metrics") or {}).get(metrics_file)
        if str(exp["name"]).startswith(prefix) and metrics and metrics.get("data"):
            metrics["data"] = read(exp["rev"])
    return exp_show


def read_experiments(exp_show: list, prefix: str = "calibration-") -> pd.DataFrame:
    """One row per calibration experiment: its setting and the debate stage's held-out comparison
    of the debate (final answer and majority) with the greedy single agent."""
    rows = []
    for exp in _experiments(exp_show):
        if not str(exp["name"]).startswith(prefix):
            continue
        params = exp["data"]["params"]["params.yaml"]["data"]
        metrics = (exp["data"].get("metrics") or {}).get(METRICS_FILE, {}).get("data")
        if not metrics:
            continue  # a failed or queued run
        test = metrics["by_split"]["test"]
        row = {"experiment": exp["name"], "task": params["data"]["task"],
               **{key: params["debate"][key] for key in ("n_agents", "rounds", "temperature", "peer_view")},
               "n": test["n_questions"], "single": test["single"]["accuracy"],
               "single_sampled": test["single_sampled"]["accuracy"], "debate": test["debate"]["accuracy"],
               "debate_majority": test["debate_majority"]["accuracy"],
               "extraction_yield": test.get("extraction_yield"),
               "debate_generated_tokens": test["debate"]["generated_tokens_per_question"]}
        for system in ("debate", "debate_majority"):
            paired = test[f"{system}_vs_single"]
            row.update({f"{system}_vs_single": paired["difference"], f"{system}_vs_single_low": paired["ci95"][0],
                        f"{system}_vs_single_high": paired["ci95"][1], f"{system}_mcnemar_p": paired["mcnemar_p"],
                        f"{system}_mde": paired["mde"]})
        rows.append(row)
    if not rows:
        raise ValueError(f"no finished {prefix}* experiment in this `dvc exp show --json` output: run `make calibrate`")
    return pd.DataFrame(rows).sort_values("experiment").reset_index(drop=True)


def read_pad_experiments(exp_show: list) -> pd.DataFrame:
    """One row per step-size experiment: its learning rate, the base's and PAD's accuracy on the
    validation questions (Wilson CIs), PAD against the base (paired) and how many answers changed."""
    rows = []
    for exp in _experiments(exp_show):
        metrics = (exp["data"].get("metrics") or {}).get(PAD_METRICS_FILE, {}).get("data")
        if not str(exp["name"]).startswith(PAD_PREFIX) or not metrics:
            continue
        params = exp["data"]["params"]["params.yaml"]["data"]
        paired = metrics["pad_vs_base"]
        row = {"experiment": exp["name"], "learning_rate": params["grpo"]["learning_rate"], "n": metrics["n"]}
        for model in ("base", "pad"):
            row.update({model: metrics[model]["accuracy"], f"{model}_low": metrics[model]["ci95"][0],
                        f"{model}_high": metrics[model]["ci95"][1]})
        row.update({"pad_vs_base": paired["difference"], "pad_vs_base_low": paired["ci95"][0],
                    "pad_vs_base_high": paired["ci95"][1], "gained": paired["gained"], "lost": paired["lost"],
                    "mcnemar_p": paired["mcnemar_p"], "mde": paired["mde"], "answers_changed": paired["answers_changed"]})
        rows.append(row)
    if not rows:
        raise ValueError(f"no finished {PAD_PREFIX}* experiment in this `dvc exp show --json` output: "
                         "run `make calibrate-pad`")
    return pd.DataFrame(rows).sort_values("learning_rate", ascending=False).reset_index(drop=True)


def chosen_learning_rate(table: pd.DataFrame) -> float:
    """The step size the sweep recommends: PAD's highest validation accuracy; on a tie, the larger
    rate (it moves the policy more for the same held-out accuracy)."""
    best = table[table["pad"] == table["pad"].max()]
    return float(best["learning_rate"].max())


def pad_report(out_dir: str = "results/calibration", rev: str | None = None) -> pd.DataFrame:
    """Snapshot the step-size experiments (`out_dir/pad_experiments.json`, whole metrics read back),
    and write their table (`pad_sweep.csv`) and figure (`pad_sweep.png`)."""
    import dvc.api

    from agentark_utils.plots import pad_sweep

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    shown = with_full_metrics(_exp_show(rev), lambda exp: json.loads(dvc.api.read(PAD_METRICS_FILE, repo=".", rev=exp)),
                              PAD_PREFIX, PAD_METRICS_FILE)
    (out / "pad_experiments.json").write_text(json.dumps(shown))
    table = read_pad_experiments(shown)
    table.to_csv(out / "pad_sweep.csv", index=False)
    pad_sweep(table, chosen_learning_rate(table), out / "pad_sweep.png")
    return table


def report(out_dir: str = "results/calibration", rev: str | None = None, params_path: str = "params.yaml") -> Path:
    """Snapshot `dvc exp show --json` (with each experiment's whole metrics file) in
    `out_dir/experiments.json`, then run the `calibration` stage's notebook on it (what `dvc repro`
    does from the committed snapshot). `rev`: the commit the sweep ran on, if not HEAD."""
    import dvc.api

    from agentark_utils.stages import run_stage

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    shown = with_full_metrics(_exp_show(rev), lambda exp: json.loads(dvc.api.read(METRICS_FILE, repo=".", rev=exp)))
    (out / "experiments.json").write_text(json.dumps(shown))
    return run_stage("calibration", params_path, out_dir=str(out), paths={"exp_json": str(out / "experiments.json")})


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="The calibration sweep: run it as DVC experiments, or report it.")
    parser.add_argument("command", choices=("run", "report", "pad-run", "pad-report"))
    parser.add_argument("--params", default="params.yaml")
    parser.add_argument("--out-dir", default="results/calibration")
    parser.add_argument("--rev", default=None, help="report: the commit the sweep ran on (default: HEAD)")
    args = parser.parse_args(argv)
    if args.command == "pad-report":
        table = pad_report(args.out_dir, args.rev)
        print(table.to_string(index=False, float_format=lambda value: f"{value:.3g}"))
        print(f"chosen grpo.learning_rate: {chosen_learning_rate(table)} (PAD's best validation accuracy)")
        return
    if args.command == "report":
        try:
            print(f"executed {report(args.out_dir, args.rev, args.params)}")
        except ParamsError as error:
            raise SystemExit(str(error)) from None
        return
    # A kill (SIGTERM) unwinds like Ctrl-C, so run_sweep restores params.yaml and dvc.lock.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    try:
        (run_pad_sweep if args.command == "pad-run" else run_sweep)(args.params)
    except ParamsError as error:  # it names the file, the key and what is wrong: no traceback needed
        raise SystemExit(str(error)) from None


if __name__ == "__main__":
    main()
