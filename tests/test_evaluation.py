"""The evaluation grid: every model on every test set, paired against the base."""

import pytest

from agentark_utils.config import ModelParams
from agentark_utils.evaluation import evaluate_grid, greedy_answers
from agentark_utils.tasks import Question


def test_grid_rows_and_paired_comparison(tiny_model_dir):
    params = ModelParams(teacher=str(tiny_model_dir), student=str(tiny_model_dir), dtype="float32", device="cpu",
                         batch_size=4)
    sets = {"in": [Question(f"a{i}", "t", f"{i} + 1?", str(i + 1), "number") for i in range(3)],
            "out": [Question("b0", "u", "Solve x - 1 = 2", "3", "number")]}
    predictions, results = evaluate_grid({"base": str(tiny_model_dir), "copy": str(tiny_model_dir)}, sets, params,
                                         max_new_tokens=4)
    assert len(predictions) == 2 * (3 + 1)
    assert [(r["model"], r["test_set"], r["n"]) for r in results] == [
        ("base", "in", 3), ("base", "out", 1), ("copy", "in", 3), ("copy", "out", 1)]
    for r in results:  # the same greedy model twice: no difference, no discordant pair
        assert r["vs_base_difference"] == 0 and r["vs_base_gained"] == r["vs_base_lost"] == 0
        assert r["vs_base_mcnemar_p"] == 1.0 and r["calls_per_question"] == 1
    with pytest.raises(ValueError, match="baseline 'base' is not among"):
        evaluate_grid({"x": str(tiny_model_dir)}, sets, params, max_new_tokens=4)


def test_greedy_answers_one_generation_per_prompt_per_model(tiny_model_dir):
    params = ModelParams(teacher=str(tiny_model_dir), student="unused", dtype="float32", device="cpu", batch_size=2)
    answers = greedy_answers({"a": str(tiny_model_dir), "b": str(tiny_model_dir)}, ["1 + 1?", "2 + 2?", "3 + 3?"],
                             params, max_new_tokens=4)
    assert list(answers) == ["a", "b"] and all(len(gens) == 3 for gens in answers.values())
    assert [g.text for g in answers["a"]] == [g.text for g in answers["b"]]  # the same weights, greedy
    assert all(1 <= g.completion_tokens <= 4 for g in answers["a"])
