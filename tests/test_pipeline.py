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


def _params(name: str) -> list[str]:
    spec = PIPELINE[name]["do"] if "foreach" in PIPELINE[name] else PIPELINE[name]
    return list(spec.get("params", []))


@pytest.mark.parametrize("name", sorted(STAGES))
def test_stage_params_are_the_sections_its_notebook_receives(name):
    sections = list(dict.fromkeys(entry.split(".")[0] for entry in _params(name)))
    assert sections == list(STAGES[name].sections)


def model_keys_read(notebook: str) -> set[str] | None:
    """The `cfg.model.<key>` a notebook reads; None where it may read others: it hands `cfg` or
    `cfg.model` whole to a function, or reads the raw `model` parameter outside `config.validate`."""
    code = "\n".join("".join(c["source"]) for c in json.loads((ROOT / notebook).read_text())["cells"]
                     if c["cell_type"] == "code" and "parameters" not in c["metadata"].get("tags", []))
    validated = re.sub(r"config\.validate\(\{[^}]*\}", "", code)  # where the raw sections go in
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
