"""The package's modules form layers: a module imports only modules of its own layer or below, and no
import cycle, whether the import is at the top of the file or inside a function."""

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "agentark_utils"

# Lowest first. A module may import modules of its own layer or of a lower one, never of a higher one.
LAYERS = [
    # infrastructure, no research content: files, run identity, parameters, model loading, processes
    ["store", "project", "config", "runs", "training", "models", "launch", "kv_cache", "batching"],
    # the domain: questions, the step format, the prompts, grading
    ["tasks", "steps", "prompts", "answers", "arithmetic"],
    # tools on top of the domain: statistics, figures, the paper's numbers, generation engines
    ["metrics", "plots", "paper", "backends"],
    # the paper's phases and analyses
    ["debate", "extraction", "evaluation", "robustness", "open_ended", "perplexity", "rewards", "prm", "distill",
     "grpo", "scaling"],
    # what runs the stages
    ["stages", "calibration", "results_diff"],
]
LAYER = {module: rank for rank, modules in enumerate(LAYERS) for module in modules}


def _modules() -> list[str]:
    return sorted(path.stem for path in PACKAGE.glob("*.py"))


def imports_of(module: str) -> set[str]:
    """The package's modules that `module` imports, anywhere in the file (functions included)."""
    found = set()
    for node in ast.walk(ast.parse((PACKAGE / f"{module}.py").read_text())):
        if isinstance(node, ast.Import):
            found |= {a.name.split(".")[1] for a in node.names if a.name.startswith("agentark_utils.")}
        elif isinstance(node, ast.ImportFrom):
            name = "agentark_utils" + "." * bool(node.module) + (node.module or "") if node.level else node.module
            if name == "agentark_utils":  # from agentark_utils import answers, metrics
                found |= {a.name for a in node.names if (PACKAGE / f"{a.name}.py").exists()}
            elif name and name.startswith("agentark_utils."):
                found.add(name.split(".")[1])
    return found - {module}


def test_every_module_has_a_layer():
    assert set(_modules()) - {"__init__"} == set(LAYER)
    assert sum(map(len, LAYERS)) == len(LAYER)  # no module in two layers


def test_the_package_init_imports_no_module():
    assert imports_of("__init__") == set()  # importing one module never loads the others


@pytest.mark.parametrize("module", sorted(LAYER))
def test_no_module_imports_a_higher_layer(module):
    higher = sorted(m for m in imports_of(module) if LAYER.get(m, -1) > LAYER[module])
    assert not higher, f"{module} (layer {LAYER[module]}) imports higher layers: {higher}"


def test_no_import_cycles():
    graph = {m: imports_of(m) for m in _modules()}
    done: set[str] = set()

    def visit(module: str, path: list[str]) -> None:
        if module in path:
            cycle = path[path.index(module):] + [module]
            pytest.fail(f"import cycle: {' -> '.join(cycle)}")
        if module in done:
            return
        for imported in sorted(graph.get(module, ())):
            visit(imported, path + [module])
        done.add(module)

    for module in graph:
        visit(module, [])


def test_configs_names_are_the_registries():
    """config validates names against its own tables (it may not import the registries above it)."""
    from agentark_utils import config
    from agentark_utils.open_ended import OPEN_TASKS
    from agentark_utils.robustness import PERTURBATIONS
    from agentark_utils.tasks import TASKS

    assert config.TASK_NAMES == set(TASKS)
    assert config.PERTURBATION_NAMES == set(PERTURBATIONS)
    assert config.OPEN_TASK_NAMES == set(OPEN_TASKS)
    assert config.OPEN_TASKS_OFF_HUB == {name for name, task in OPEN_TASKS.items() if task.hub is None}
