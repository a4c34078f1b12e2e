"""The calibration sweep: its settings become `dvc exp run -S` overrides on held-out questions only."""

import json
from pathlib import Path

import pytest

from agentark_utils.calibration import overrides, read_experiments, with_full_metrics
from agentark_utils.config import CalibrationParams, ParamsError, load_params, validate
from conftest import ROOT


def test_a_setting_becomes_overrides_on_held_out_questions_only():
    calibration = CalibrationParams(n_test=50, settings=[{"data.task": "add_sub", "debate.peer_view": "final_line"}])
    args = overrides(calibration.settings[0], calibration)
    assert args[:6] == ["data.n_train=0", "data.ood_tasks=[]", "data.ood_paths={}", "debate.self_consistency_samples=1",
                        "data.n_test=50", "data.seed=1"]  # not the main run's question stream (data.seed 0)
    assert args[6:] == ["data.task=add_sub", "debate.peer_view=final_line"]


def test_the_shipped_sweep_is_valid_and_a_bad_key_is_named():
    assert load_params(ROOT / "params.yaml").calibration.settings  # the default ships a sweep
    with pytest.raises(ParamsError, match="'debate.temprature' is not a data.\\* or debate.\\* parameter"):
        validate({"n_test": 10, "settings": [{"debate.temprature": 0.5}]}, CalibrationParams)


def _experiment(name, task, debate, single):
    """One experiment as `dvc exp show --json` nests it (DVC 3: ExpState with params and metrics)."""
    paired = {"difference": debate - single, "ci95": [-0.1, 0.3], "mcnemar_p": 0.04, "mde": 0.12}
    test = {"n_questions": 100, "extraction_yield": 0.2,
            **{s: {"accuracy": a, "generated_tokens_per_question": 99.0}
               for s, a in (("single", single), ("single_sampled", single), ("debate", debate),
                            ("debate_majority", debate))},
            "debate_vs_single": paired, "debate_majority_vs_single": paired}
    params = {"data": {"task": task}, "debate": {"n_agents": 3, "rounds": 2, "temperature": 0.5, "peer_view": "full"}}
    return {"rev": name * 2, "name": name, "data": {"params": {"params.yaml": {"data": params}},
            "metrics": {"results/debate/metrics.json": {"data": {"by_split": {"test": test}}}}}}


def test_read_experiments_reads_dvc_exp_show_json():
    failed = {"rev": "f00", "name": "calibration-02", "data": {"params": {"params.yaml": {"data": {}}}, "metrics": None}}
    shown = [
        {"rev": "workspace", "name": None, "data": {"params": {}, "metrics": None}, "experiments": None},
        {"rev": "abc", "name": "main", "data": {"params": {}, "metrics": None}, "experiments": [
            {"revs": [_experiment("calibration-01", "add_sub", 0.6, 0.5)], "name": "calibration-01"},
            {"revs": [_experiment("calibration-00", "arith_mix", 0.3, 0.4)], "name": "calibration-00"},
            {"revs": [failed], "name": "calibration-02"},
            {"revs": [_experiment("other-exp", "arith_mix", 0.9, 0.1)], "name": "other-exp"},
        ]},
    ]
    table = read_experiments(shown)
    assert table["experiment"].tolist() == ["calibration-00", "calibration-01"]  # finished ones, in order
    assert table.loc[1, "task"] == "add_sub" and table.loc[1, "debate_vs_single"] == pytest.approx(0.1)
    assert table.loc[0, "debate_mcnemar_p"] == 0.04 and table.loc[0, "n"] == 100
    with pytest.raises(ValueError, match="run `make calibrate`"):
        read_experiments(shown[:1])


def test_an_interrupted_sweep_skips_only_the_settings_that_finished_with_the_same_params(monkeypatch, tmp_path):
    """run_sweep on a stand-in DVC: a finished experiment with the very sections it would run is
    skipped; a changed setting, a changed section elsewhere, or a failed experiment runs again."""
    import yaml

    from agentark_utils import calibration

    params = yaml.safe_load((ROOT / "params.yaml").read_text())
    params["calibration"]["settings"] = settings = [{"data.task": "arith_mix"}, {"data.task": "add_sub"},
                                                    {"data.task": "mul"}]
    path = tmp_path / "params.yaml"
    path.write_text(yaml.safe_dump(params))
    cal = load_params(path).calibration

    def shown(index, setting, **changed):
        ran = calibration.experiment_params(params, calibration.setting_values(setting, cal))
        for key, value in changed.items():
            ran["debate"][key] = value
        data = {"params": {"params.yaml": {"data": ran}},
                "metrics": {calibration.METRICS_FILE: {"data": {"by_split": {}}}}}
        return {"revs": [{"rev": f"r{index}", "name": calibration.experiment_name(index), "data": data}],
                "name": calibration.experiment_name(index)}

    exp_show = [{"rev": "abc", "name": "main", "data": {"params": {}, "metrics": None}, "experiments": [
        shown(0, settings[0]),                    # finished as it would run now: skipped
        shown(1, {"data.task": "chain_sum"}),     # the settings list changed since: runs again
        shown(2, settings[2], max_new_tokens=8),  # another debate section: runs again
    ]}]
    ran = []
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(calibration, "_exp_show", lambda: exp_show)
    def exp_run(args, check):  # as `dvc exp run` does, it leaves the experiment's params in the workspace
        ran.append(args[args.index("-n") + 1])
        path.write_text("the experiment's params")

    monkeypatch.setattr(calibration.subprocess, "run", exp_run)
    calibration.run_sweep(str(path))
    assert ran == ["calibration-01", "calibration-02"]
    assert path.read_text() == yaml.safe_dump(params)  # restored
    assert not calibration.already_ran({"data": {}}, None)  # a failed experiment is not in `finished`


def test_the_metrics_dvc_exp_show_drops_are_read_back_at_each_experiments_revision():
    """`dvc exp show --json` drops lists and nulls (the CIs, an undefined MDE): the table needs them."""
    import copy

    full = _experiment("calibration-00", "arith_mix", 0.3, 0.4)
    stripped = copy.deepcopy(full)
    for paired in ("debate_vs_single", "debate_majority_vs_single"):
        stripped["data"]["metrics"]["results/debate/metrics.json"]["data"]["by_split"]["test"][paired].pop("ci95", None)
    shown = [{"rev": "abc", "name": "main", "data": {"params": {}, "metrics": None},
              "experiments": [{"revs": [stripped], "name": "calibration-00"}]}]
    with pytest.raises(KeyError, match="ci95"):
        read_experiments(copy.deepcopy(shown))
    wanted = full["data"]["metrics"]["results/debate/metrics.json"]["data"]
    table = read_experiments(with_full_metrics(shown, lambda rev: wanted if rev == "calibration-00" * 2 else None))
    assert table.loc[0, "debate_vs_single_low"] == -0.1


def test_report_snapshots_the_experiments_and_runs_the_calibration_stage(tmp_path, monkeypatch):
    """`calibration report` writes experiments.json (each experiment's whole metrics file read back)
    and runs the same notebook as the `calibration` stage on it."""
    import dvc.api

    from agentark_utils import calibration

    recorded = json.loads((ROOT / "results/calibration/experiments.json").read_text())
    metrics = {exp["rev"]: exp["data"]["metrics"][calibration.METRICS_FILE]["data"]
               for exp in calibration._experiments(recorded)
               if (exp["data"].get("metrics") or {}).get(calibration.METRICS_FILE, {}).get("data")}
    monkeypatch.setattr(calibration, "_exp_show", lambda rev=None: json.loads(json.dumps(recorded)))
    monkeypatch.setattr(dvc.api, "read", lambda path, repo, rev: json.dumps(metrics[rev]))
    executed = calibration.report(str(tmp_path), params_path=str(ROOT / "params.yaml"))
    assert executed == tmp_path / "11_calibration.ipynb" and executed.exists()
    assert json.loads((tmp_path / "experiments.json").read_text()) == recorded
    verdict = json.loads((tmp_path / "verdict.json").read_text())
    assert verdict["settings"] == len(metrics) == 4 and verdict["closest"]["temperature"] == 0.2


# --- the step-size sweep: DVC experiments of the pad_validation stage ---------------------------

def _pad_experiment(name, rate, pad, base=0.24, changed=10, n=200):
    paired = {"difference": pad - base, "ci95": [pad - base - 0.05, pad - base + 0.05], "gained": 12, "lost": 8,
              "mcnemar_p": 0.5, "mde": 0.06, "answers_changed": changed}
    metrics = {"n": n, "base": {"accuracy": base, "ci95": [base - 0.05, base + 0.06]},
               "pad": {"accuracy": pad, "ci95": [pad - 0.04, pad + 0.05]}, "pad_vs_base": paired}
    return {"revs": [{"rev": name * 2, "name": name, "data": {
        "params": {"params.yaml": {"data": {"grpo": {"learning_rate": rate}}}},
        "metrics": {"results/pad_validation/metrics.json": {"data": metrics}}}}], "name": name}


@pytest.mark.parametrize("rates_and_accuracies, chosen", [
    ([(2e-5, 0.02), (2e-6, 0.25), (6e-7, 0.24)], 2e-6),
    ([(2e-5, 0.02), (2e-6, 0.25), (6e-7, 0.25)], 2e-6),  # a tie: the larger step
    ([(6e-7, 0.30), (2e-6, 0.25)], 6e-7),
])
def test_the_pad_sweep_table_and_the_rate_it_chooses(rates_and_accuracies, chosen):
    from agentark_utils.calibration import chosen_learning_rate, read_pad_experiments

    experiments = [_pad_experiment(f"pad-lr-{i:02d}", rate, pad) for i, (rate, pad) in enumerate(rates_and_accuracies)]
    experiments.append(_pad_experiment("calibration-00", 1e-3, 0.9))  # another sweep's: not read
    table = read_pad_experiments([{"rev": "abc", "name": "main", "data": {"params": {}, "metrics": None},
                                   "experiments": experiments}])
    assert table["learning_rate"].tolist() == sorted((r for r, _ in rates_and_accuracies), reverse=True)
    assert (table["base_low"].iloc[0], table["base_high"].iloc[0]) == pytest.approx((0.19, 0.30))
    assert table["answers_changed"].iloc[0] == 10
    assert chosen_learning_rate(table) == chosen
    with pytest.raises(ValueError, match="make calibrate-pad"):
        read_pad_experiments([])


class FakeDVC:
    """Stands in for the dvc command line: an experiment run leaves its params and lock in the
    workspace, as `dvc exp run` does; `fail_on` names an experiment whose run fails."""

    def __init__(self, stale=False, fail_on=None):
        self.commands, self.stale, self.fail_on = [], stale, fail_on

    def __call__(self, args, check, capture_output=False, text=False):
        import subprocess
        from types import SimpleNamespace

        self.commands.append(args)
        if args[:2] == ["dvc", "status"]:
            return SimpleNamespace(stdout='{"debate": ["changed deps"]}' if self.stale else "{}")
        if args[:3] == ["dvc", "exp", "run"]:
            Path("params.yaml").write_text("the experiment's params")
            Path("dvc.lock").write_text("the experiment's lock")
            if args[args.index("-n") + 1] == self.fail_on:
                raise subprocess.CalledProcessError(1, args)
        return SimpleNamespace(stdout="")


def _sweep_setup(tmp_path, monkeypatch, experiments):
    import yaml

    from agentark_utils import calibration

    params = yaml.safe_load((ROOT / "params.yaml").read_text())
    params["pad_validation"]["learning_rates"] = [2e-5, 2e-6, 6e-7]
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params))
    (tmp_path / "dvc.lock").write_text("the main run's lock")
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(calibration, "_exp_show",
                        lambda: [{"rev": "abc", "name": "main", "data": {}, "experiments": experiments(params)}])
    return calibration, params


def test_the_pad_sweep_runs_each_rate_once_and_restores_the_workspace(monkeypatch, tmp_path):
    """A rate that finished with the same params is skipped, also after the list of rates grew; a
    stale one is removed and run again; params.yaml and dvc.lock come back and the main run's
    outputs are checked out."""
    from agentark_utils.calibration import PAD_SECTIONS, experiment_params

    def experiments(params):
        done = _pad_experiment("pad-lr-00", 2e-5, 0.1)  # ran before a third rate was listed
        ran = experiment_params(params, {"grpo.learning_rate": 2e-5}, PAD_SECTIONS)
        done["revs"][0]["data"]["params"]["params.yaml"]["data"] = {**ran, "pad_validation": {
            "n": params["pad_validation"]["n"], "learning_rates": [2e-5, 2e-6]}}
        stale = _pad_experiment("pad-lr-01", 2e-6, 0.2)  # another prm section: runs again
        stale["revs"][0]["data"]["params"]["params.yaml"]["data"] = {
            **experiment_params(params, {"grpo.learning_rate": 2e-6, "prm.tau": 0.5}, PAD_SECTIONS),
            "pad_validation": params["pad_validation"]}
        return [done, stale]

    calibration, params = _sweep_setup(tmp_path, monkeypatch, experiments)
    before = Path("params.yaml").read_text()
    dvc = FakeDVC()
    monkeypatch.setattr(calibration.subprocess, "run", dvc)
    calibration.run_pad_sweep("params.yaml")
    assert dvc.commands[1:] == [
        ["dvc", "exp", "remove", "pad-lr-01"],
        ["dvc", "exp", "run", "pad_validation", "-n", "pad-lr-01", "-S", "grpo.learning_rate=2e-06"],
        ["dvc", "exp", "run", "pad_validation", "-n", "pad-lr-02", "-S", "grpo.learning_rate=6e-07"],
        ["dvc", "checkout", "pad", "pad_validation"]]
    assert Path("params.yaml").read_text() == before and Path("dvc.lock").read_text() == "the main run's lock"


def test_a_failed_pad_sweep_still_restores_the_workspace_and_a_stale_debate_stops_it(monkeypatch, tmp_path):
    calibration, _ = _sweep_setup(tmp_path, monkeypatch, lambda params: [])
    before = Path("params.yaml").read_text()
    dvc = FakeDVC(fail_on="pad-lr-01")
    monkeypatch.setattr(calibration.subprocess, "run", dvc)
    with pytest.raises(__import__("subprocess").CalledProcessError):
        calibration.run_pad_sweep("params.yaml")
    assert dvc.commands[-1] == ["dvc", "checkout", "pad", "pad_validation"]
    assert Path("params.yaml").read_text() == before and Path("dvc.lock").read_text() == "the main run's lock"

    stale = FakeDVC(stale=True)
    monkeypatch.setattr(calibration.subprocess, "run", stale)
    with pytest.raises(SystemExit, match="run `dvc repro debate` first"):
        calibration.run_pad_sweep("params.yaml")
    assert stale.commands == [["dvc", "status", "debate", "--json"]]


def test_pad_report_writes_the_snapshot_table_and_figure(tmp_path, monkeypatch):
    import dvc.api

    from agentark_utils import calibration

    shown = [{"rev": "abc", "name": "main", "data": {"params": {}, "metrics": None},
              "experiments": [_pad_experiment("pad-lr-00", 2e-5, 0.02), _pad_experiment("pad-lr-01", 2e-6, 0.25)]}]
    runs = [exp for exp in calibration._experiments(shown) if exp["name"].startswith("pad-lr-")]
    full = {exp["rev"]: json.loads(json.dumps(exp["data"]["metrics"][calibration.PAD_METRICS_FILE]["data"]))
            for exp in runs}
    for exp in runs:  # what dvc exp show keeps: no lists
        exp["data"]["metrics"][calibration.PAD_METRICS_FILE]["data"]["pad_vs_base"].pop("ci95")
    monkeypatch.setattr(calibration, "_exp_show", lambda rev=None: json.loads(json.dumps(shown)))
    monkeypatch.setattr(dvc.api, "read", lambda path, repo, rev: json.dumps(full[rev]))
    table = calibration.pad_report(str(tmp_path))
    assert table["pad_vs_base_low"].tolist() == pytest.approx([-0.27, -0.04])  # read back: dvc exp show drops lists
    assert (tmp_path / "pad_sweep.png").read_bytes()[:4] == b"\x89PNG"
    assert len((tmp_path / "pad_sweep.csv").read_text().splitlines()) == 3
    assert json.loads((tmp_path / "pad_experiments.json").read_text())[0]["experiments"][0]["name"] == "pad-lr-00"
