"""The calibration sweep: its settings become `dvc exp run -S` overrides on held-out questions only."""

import pytest

from agentark_utils.calibration import already_ran, finished, overrides, read_experiments
from agentark_utils.config import CalibrationParams, ParamsError, load_params, validate
from conftest import ROOT


def test_a_setting_becomes_overrides_on_held_out_questions_only():
    calibration = CalibrationParams(n_test=50, settings=[{"data.task": "add_sub", "debate.peer_view": "final_line"}])
    args = overrides(calibration.settings[0], calibration)
    assert args[:5] == ["data.n_train=0", "data.ood_tasks=[]", "debate.self_consistency_samples=1", "data.n_test=50",
                        "data.seed=1"]  # not the main run's question stream (data.seed 0)
    assert args[5:] == ["data.task=add_sub", "debate.peer_view=final_line"]


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


def test_an_interrupted_sweep_skips_only_the_settings_that_finished_with_the_same_params():
    failed = {"rev": "f00", "name": "calibration-02", "data": {"params": {"params.yaml": {"data": {}}}, "metrics": None}}
    shown = [{"rev": "abc", "name": "main", "data": {"params": {}, "metrics": None}, "experiments": [
        {"revs": [_experiment("calibration-00", "arith_mix", 0.3, 0.4)], "name": "calibration-00"},
        {"revs": [failed], "name": "calibration-02"},
    ]}]
    done = finished(shown)
    assert set(done) == {"calibration-00"}  # the failed one runs again
    assert already_ran({"data.task": "arith_mix", "debate.temperature": 0.5}, done["calibration-00"])
    assert not already_ran({"data.task": "arith_mix", "debate.temperature": 0.2}, done["calibration-00"])
    assert not already_ran({"data.task": "add_sub"}, done["calibration-00"])  # the settings list changed
    assert not already_ran({"data.task": "arith_mix"}, done.get("calibration-02"))
