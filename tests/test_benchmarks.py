"""The benchmark scripts still import against the package (they run outside the test suite)."""

import importlib
import sys

import pytest

from conftest import ROOT

SCRIPTS = sorted(p.stem for p in (ROOT / "benchmarks").glob("*.py") if p.stem != "common")


@pytest.mark.parametrize("name", SCRIPTS)
def test_benchmark_script_imports_and_has_a_main(name, monkeypatch):
    monkeypatch.syspath_prepend(str(ROOT / "benchmarks"))
    module = importlib.import_module(name)
    assert callable(module.main)
    sys.modules.pop(name, None)


def test_benchmark_questions_are_the_pipelines_test_questions(monkeypatch):
    """The cost benchmark scores students: its questions must be held out from their training."""
    from agentark_utils.config import load_params
    from agentark_utils.tasks import check_disjoint, load_task

    monkeypatch.syspath_prepend(str(ROOT / "benchmarks"))
    monkeypatch.chdir(ROOT)
    common = importlib.import_module("common")
    params, questions = common.setup(8)
    data = load_params(ROOT / "params.yaml").data
    train, test = load_task(data.task, data.n_train, data.n_test, seed=data.seed, path=data.path)
    assert [q.id for q in questions] == [q.id for q in test[:8]]
    check_disjoint(train, questions)
    sys.modules.pop("common", None)
