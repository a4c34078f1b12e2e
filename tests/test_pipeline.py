"""dvc.yaml agrees with the code: a stage re-runs whenever anything that shapes its outputs changes."""

import ast
import json
import re

import pytest
import yaml

from agentark_utils.stages import STAGES
from conftest import ROOT

PIPELINE = yaml.safe_load((ROOT / "dvc.yaml").read_text())["stages"]
# Modules that only move data around, check params or find the project root; params.yaml itself is
# tracked per section.
NOT_RESULT_SHAPING = {"agentark_utils/__init__.py", "agentark_utils/config.py", "agentark_utils/project.py",
                      "agentark_utils/stages.py", "agentark_utils/store.py"}


def _imports(code: str) -> set[str]:
    """The agentark_utils modules `code` imports, as repository paths."""
    found = set()
    for node in ast.walk(ast.parse(code)):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("agentark_utils"):
            if node.module == "agentark_utils":
                found |= {f"agentark_utils/{alias.name}.py" for alias in node.names}
            else:
                found.add(node.module.replace(".", "/") + ".py")
        elif isinstance(node, ast.Import):
            found |= {a.name.replace(".", "/") + ".py" for a in node.names if a.name.startswith("agentark_utils.")}
    return {path for path in found if (ROOT / path).exists()}


def modules_used(notebook: str) -> set[str]:
    """Every agentark_utils module a notebook imports, directly or through other modules."""
    cells = json.loads((ROOT / notebook).read_text())["cells"]
    todo = _imports("\n".join("".join(c["source"]) for c in cells if c["cell_type"] == "code"))
    seen: set[str] = set()
    while todo:
        path = todo.pop()
        if path not in seen:
            seen.add(path)
            if path not in NOT_RESULT_SHAPING:
                todo |= _imports((ROOT / path).read_text())
    return seen


@pytest.mark.parametrize("name", sorted(STAGES))
def test_stage_depends_on_every_module_its_notebook_uses(name):
    stage = STAGES[name]
    spec = PIPELINE[name]["do"] if "foreach" in PIPELINE[name] else PIPELINE[name]
    missing = modules_used(stage.notebook) - NOT_RESULT_SHAPING - set(spec["deps"])
    assert not missing, f"dvc.yaml stage {name} lacks deps {sorted(missing)}"
    assert stage.notebook in spec["deps"]


def _deps(name: str) -> list[str]:
    spec = PIPELINE[name]["do"] if "foreach" in PIPELINE[name] else PIPELINE[name]
    return list(spec["deps"])


def _params(name: str) -> list[str]:
    spec = PIPELINE[name]["do"] if "foreach" in PIPELINE[name] else PIPELINE[name]
    return list(spec.get("params", []))


@pytest.mark.parametrize("name", sorted(STAGES))
def test_the_notebook_validates_and_declares_the_sections_dvc_tracks(name):
    """dvc.yaml names a stage's params sections (STAGES reads them from it); the notebook's
    parameters cell and the sections it validates (config.validate_sections) are those and no other."""
    from agentark_utils import config

    stage = STAGES[name]
    cells = [c for c in json.loads((ROOT / stage.notebook).read_text())["cells"] if c["cell_type"] == "code"]
    parameters = next("".join(c["source"]) for c in cells if "parameters" in c["metadata"].get("tags", []))
    declared = {node.targets[0].id for node in ast.parse(parameters).body if isinstance(node, ast.Assign)}
    assert declared & set(config.Params.model_fields) == set(stage.sections)
    code = "\n".join("".join(c["source"]) for c in cells)
    calls = [node for node in ast.walk(ast.parse(code)) if isinstance(node, ast.Call)
             and isinstance(node.func, ast.Attribute) and node.func.attr.startswith("validate")]
    if stage.sections:
        (call,) = calls
        assert call.func.attr == "validate_sections"
        assert [key.value for key in call.args[0].keys] == [name.id for name in call.args[0].values]
        assert set(key.value for key in call.args[0].keys) == set(stage.sections)
    else:
        assert calls == []


def test_stages_come_from_dvc_yaml(tmp_path):
    from agentark_utils.stages import read_stages

    (tmp_path / "dvc.yaml").write_text(yaml.safe_dump({"stages": {
        "provision_model": {"cmd": "python -m agentark_utils.models provision", "deps": ["x.py"]},
        "sft": {"foreach": ["rsft"], "do": {"cmd": "python -m agentark_utils.stages sft --strategy ${item}",
                                            "deps": ["notebooks/03_sft.ipynb", "a.py"],
                                            "params": ["model.student", "model.device", "sft"]}},
        "figures": {"cmd": "python -m agentark_utils.stages figures", "deps": ["notebooks/08_figures.ipynb"]},
    }}))
    stages = read_stages(tmp_path / "dvc.yaml")
    assert set(stages) == {"sft", "figures"}  # a stage that runs no notebook is not one of ours
    assert stages["sft"].notebook == "notebooks/03_sft.ipynb" and stages["sft"].sections == ("model", "sft")
    assert stages["figures"].sections == ()


def test_sync_notebooks_writes_the_parameters_cells_from_params_yaml(tmp_path):
    import shutil

    from agentark_utils.stages import sync_notebooks

    shutil.copytree(ROOT / "notebooks", tmp_path / "notebooks")
    assert sync_notebooks(ROOT / "params.yaml", root=tmp_path) == []  # the shipped cells match params.yaml
    params = yaml.safe_load((ROOT / "params.yaml").read_text())
    params["debate"]["temperature"] = 0.7
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    changed = sync_notebooks(tmp_path / "params.yaml", root=tmp_path)
    assert changed == [STAGES[n].notebook for n in STAGES if "debate" in STAGES[n].sections]
    cell = next(c for c in json.loads((tmp_path / "notebooks/01_debate.ipynb").read_text())["cells"]
                if "parameters" in c["metadata"].get("tags", []))
    namespace: dict = {}
    exec("".join(cell["source"]), namespace)
    assert namespace["debate"]["temperature"] == 0.7 and namespace["out_dir"] == "results/debate"
    assert sync_notebooks(tmp_path / "params.yaml", root=tmp_path) == []  # idempotent


def model_keys_read(notebook: str) -> set[str] | None:
    """The `cfg.model.<key>` a notebook reads; None where it may read others: it hands `cfg` or
    `cfg.model` whole to a function, or reads the raw `model` parameter outside `config.validate`."""
    code = "\n".join("".join(c["source"]) for c in json.loads((ROOT / notebook).read_text())["cells"]
                     if c["cell_type"] == "code" and "parameters" not in c["metadata"].get("tags", []))
    validated = re.sub(r"config\.validate_sections\(\{[^}]*\}", "", code)  # where the raw sections go in
    whole = r"\bcfg\b(?!\.|\s*=[^=])|\bcfg\.model\b(?!\.)|(?<![.\w])model\s*[\[.]"  # cfg passed, cfg.model passed, model[...]
    if re.search(whole, validated):
        return None
    return set(re.findall(r"cfg\.model\.(\w+)", code))


@pytest.mark.parametrize("name", [n for n in sorted(STAGES) if any(p.startswith("model.") for p in _params(n))])
def test_a_stage_tracking_model_keys_reads_no_other(name):
    """Key-level params (sft, pad): a model key the notebook reads but DVC does not track would leave a
    stale student after that key changes."""
    read = model_keys_read(STAGES[name].notebook)
    assert read is not None, f"{name}: the notebook passes cfg.model whole; track the whole model section"
    tracked = {p.removeprefix("model.") for p in _params(name) if p.startswith("model.")}
    assert read <= tracked, f"{name}: reads model keys DVC does not track: {sorted(read - tracked)}"


def test_the_key_level_check_sees_keys_and_whole_sections():
    assert model_keys_read("notebooks/03_sft.ipynb") == {"student", "device", "trust_remote_code", "launcher"}
    assert model_keys_read("notebooks/05_evaluate.ipynb") is None  # hands cfg.model to the evaluation
    assert model_keys_read("notebooks/09_scaling.ipynb") is None  # hands cfg to the sweep



@pytest.mark.parametrize("name", ["sft", "pad"])
def test_a_generation_setting_retrains_no_student(name):
    """`model.batch_size` (and the teacher, dtype, backend) change no training: DVC must not track them there."""
    assert "model" not in _params(name)
    assert not {"model.batch_size", "model.teacher", "model.dtype", "model.backend"} & set(_params(name))


@pytest.mark.parametrize("name", [n for n in sorted(STAGES) if "students" in STAGES[n].paths])
def test_a_stage_that_reads_the_students_depends_on_each(name):
    """The students are one table (stages.STUDENTS), passed to every stage that compares them; DVC
    must re-run such a stage when any of them is retrained."""
    from agentark_utils.stages import STUDENTS

    assert STAGES[name].paths["students"] is STUDENTS
    missing = set(STUDENTS.values()) - set(_deps(name))
    assert not missing, f"dvc.yaml stage {name} lacks deps {sorted(missing)}"


def test_the_students_are_the_strategies_and_pad():
    from agentark_utils.extraction import STRATEGIES
    from agentark_utils.stages import STUDENTS

    assert set(STUDENTS) == set(STRATEGIES) | {"pad"}
