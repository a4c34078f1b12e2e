"""dvc.yaml agrees with the code: a stage re-runs whenever anything that shapes its outputs changes."""

import ast
import json

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


@pytest.mark.parametrize("name", sorted(STAGES))
def test_stage_params_are_the_sections_its_notebook_receives(name):
    spec = PIPELINE[name]["do"] if "foreach" in PIPELINE[name] else PIPELINE[name]
    assert list(spec.get("params", [])) == list(STAGES[name].sections)

