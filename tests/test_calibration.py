"""The calibration sweep: its settings become `dvc exp run -S` overrides on held-out questions only."""

import pytest

from agentark_utils.calibration import overrides
from agentark_utils.config import CalibrationParams, ParamsError, load_params, validate
from conftest import ROOT


def test_a_setting_becomes_overrides_on_held_out_questions_only():
    calibration = CalibrationParams(n_test=50, settings=[{"data.task": "add_sub", "debate.peer_view": "final_line"}])
    args = overrides(calibration.settings[0], calibration)
    assert args[:4] == ["data.n_train=0", "data.ood_tasks=[]", "debate.self_consistency_samples=1", "data.n_test=50"]
    assert args[4:] == ["data.task=add_sub", "debate.peer_view=final_line"]


def test_the_shipped_sweep_is_valid_and_a_bad_key_is_named():
    assert load_params(ROOT / "params.yaml").calibration.settings  # the default ships a sweep
    with pytest.raises(ParamsError, match="'debate.temprature' is not a data.\\* or debate.\\* parameter"):
        validate({"n_test": 10, "settings": [{"debate.temprature": 0.5}]}, CalibrationParams)
