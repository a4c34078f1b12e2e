"""The evaluation grid and the headline table: systems and students on the same questions, paired."""

import numpy as np
import pytest

from agentark_utils.config import ModelParams
from agentark_utils.evaluation import evaluate_grid, greedy_answers, headline_table, held_out_sets, versus
from agentark_utils.tasks import Question


def test_grid_rows(tiny_model_dir):
    params = ModelParams(teacher=str(tiny_model_dir), student=str(tiny_model_dir), dtype="float32", device="cpu",
                         batch_size=4)
    sets = {"in": [Question(f"a{i}", "t", f"{i} + 1?", str(i + 1), "number") for i in range(3)],
            "out": [Question("b0", "u", "Solve x - 1 = 2", "3", "number")]}
    predictions, results = evaluate_grid({"base": str(tiny_model_dir), "copy": str(tiny_model_dir)}, sets, params,
                                         max_new_tokens=4)
    assert len(predictions) == 2 * (3 + 1)
    assert [(r["model"], r["test_set"], r["n"]) for r in results] == [
        ("base", "in", 3), ("base", "out", 1), ("copy", "in", 3), ("copy", "out", 1)]
    assert all(r["calls_per_question"] == 1 and r["ci95"][0] <= r["accuracy"] <= r["ci95"][1] for r in results)


def _record(qid: str, split: str, single: str, debate: str) -> dict:
    """A debate-stage record reduced to what the headline reads: outcomes and their calls."""
    def call(status):
        return {"status": status, "strict_status": status, "prompt_tokens": 10, "completion_tokens": 5,
                "latency_s": 0.1, "extractor": "final_answer"}

    rounds = [[call(debate)] * 3, [call(debate)] * 3]
    return {"id": qid, "split": split, "single": call(single), "single_sampled": call(single),
            "self_consistency": {"samples": [call(single)] * 7, "status": single, "strict_status": single},
            "debate": {"rounds": rounds, "summarizer": call(debate), "majority": {"status": debate},
                       "final": {"status": debate, "strict_status": debate}}}


def test_held_out_sets_put_in_domain_first_and_skip_train():
    records = [_record("o1", "ood:equations", "wrong", "wrong"), _record("t1", "train", "wrong", "wrong"),
               _record("a1", "test", "wrong", "wrong")]
    sets = held_out_sets(records, "arith_mix")
    assert list(sets) == ["arith_mix (in-domain)", "equations (out-of-domain)"]
    assert [r["id"] for r in sets["arith_mix (in-domain)"]] == ["a1"]


def test_headline_table_pairs_every_row_against_base_and_cot():
    """40 questions: the debate gets 10 right that the single agent gets wrong; a student matches
    the base, CoT SFT gets 5 more right than the base."""
    n = 40
    records = [_record(f"q{i}", "test", "correct" if i < 10 else "wrong", "correct" if i < 20 else "wrong")
               for i in range(n)]
    held = held_out_sets(records, "arith_mix")
    name = "arith_mix (in-domain)"

    def answers(model, n_correct):
        return [{"model": model, "test_set": name, "id": f"q{i}", "status": "correct" if i < n_correct else "wrong",
                 "answer": "5" if i < n_correct else "4"} for i in range(n)]

    predictions = answers("base", 10) + answers("da", 10) + answers("cot", 15)
    results = [{"model": m, "test_set": name, "n": n, "accuracy": k / n, "ci95": [0, 1], "strict_accuracy": k / n,
                "unparsed_rate": 0.0, "calls_per_question": 1, "generated_tokens_per_question": 5.0,
                "latency_s_per_question": 0.1} for m, k in (("base", 10), ("da", 10), ("cot", 15))]
    table = headline_table(held, predictions, results).set_index("name")
    debate = table.loc["debate (final answer)"]
    assert debate["accuracy"] == 0.5 and debate["vs_base_gained"] == 10 and debate["vs_base_lost"] == 0
    assert debate["vs_base_mcnemar_p"] < 0.01 and debate["vs_base_ci95"][0] > 0
    assert debate["vs_cot_difference"] == pytest.approx(0.125)
    # 7 calls x 5 tokens for the debate (6 agent calls + the summarizer) against one 5-token answer
    assert table.loc["da", "debate / this (generated_tokens)"] == pytest.approx(7.0)
    assert table.loc["da", "vs_base_difference"] == 0 and np.isnan(table.loc["da", "vs_base_mde"])
    assert np.isnan(table.loc["base", "vs_base_difference"])  # never against itself
    assert table.loc["da", "vs_cot_lost"] == 5 and table.loc["single agent", "kind"] == "debate stage"
    assert table.loc["da", "answers_changed_vs_base"] == 0 and table.loc["cot", "answers_changed_vs_base"] == 5
    # 5 discordant pairs in 40 (12.5 %): no effect reaches 80 % power at that discordance
    assert np.isnan(table.loc["cot", "vs_base_mde"]) and table.loc["cot", "vs_base_mcnemar_p"] > 0.05


def test_greedy_answers_one_generation_per_prompt_per_model(tiny_model_dir):
    params = ModelParams(teacher=str(tiny_model_dir), student="unused", dtype="float32", device="cpu", batch_size=2)
    answers = greedy_answers({"a": str(tiny_model_dir), "b": str(tiny_model_dir)}, ["1 + 1?", "2 + 2?", "3 + 3?"],
                             params, max_new_tokens=4)
    assert list(answers) == ["a", "b"] and all(len(gens) == 3 for gens in answers.values())
    assert [g.text for g in answers["a"]] == [g.text for g in answers["b"]]  # the same weights, greedy
    assert all(1 <= g.completion_tokens <= 4 for g in answers["a"])


def test_each_model_is_closed_before_the_next_one_loads(monkeypatch):
    """A vLLM engine keeps its GPU memory until shut down (`del` does not): one model's backend is
    closed before the next one is made, also when generating fails."""
    from agentark_utils import evaluation
    from agentark_utils.backends import Generation

    events = []

    class StandIn:
        def __init__(self, model):
            self.model = model
            events.append(("made", model))

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            self.close()

        def close(self):
            events.append(("closed", self.model))

        def generate(self, conversations, **kwargs):
            if self.model == "broken":
                raise RuntimeError("out of memory")
            return [Generation(self.model, 1, 1, 0.0) for _ in conversations]

    monkeypatch.setattr(evaluation, "make_backend", lambda params, role: StandIn(getattr(params, role)))
    params = ModelParams(teacher="t", student="unused")
    answers = greedy_answers({"a": "model-a", "b": "model-b"}, ["1 + 1?"], params, max_new_tokens=4)
    assert {name: [g.text for g in gens] for name, gens in answers.items()} == {"a": ["model-a"], "b": ["model-b"]}
    assert events == [("made", "model-a"), ("closed", "model-a"), ("made", "model-b"), ("closed", "model-b")]
    events.clear()
    with pytest.raises(RuntimeError, match="out of memory"):
        greedy_answers({"a": "broken"}, ["1 + 1?"], params, max_new_tokens=4)
    assert events == [("made", "broken"), ("closed", "broken")]


def _answers(model, answers, statuses):
    return [{"model": model, "test_set": "validation", "id": f"q{i}", "answer": a, "status": s}
            for i, (a, s) in enumerate(zip(answers, statuses))]


@pytest.mark.parametrize("pad, base, difference, gained, lost, changed", [
    # same answers: nothing moved
    ((["1", "2", "3"], ["correct", "wrong", "wrong"]), (["1", "2", "3"], ["correct", "wrong", "wrong"]), 0.0, 0, 0, 0),
    # a wrong answer changed to another wrong one moves no accuracy but counts as changed
    ((["1", "5", "3"], ["correct", "wrong", "wrong"]), (["1", "2", "3"], ["correct", "wrong", "wrong"]), 0.0, 0, 0, 1),
    # "18" and "18.0" are one answer; a gain and a loss
    ((["18.0", "7", "9"], ["correct", "correct", "wrong"]), (["18", "6", "8"], ["correct", "wrong", "correct"]),
     0.0, 1, 1, 2),
    ((["4", "7", "9"], ["correct", "correct", "correct"]), (["5", "6", "8"], ["wrong", "wrong", "wrong"]), 1.0, 3, 0, 3),
])
def test_versus_pairs_a_model_with_the_base_question_by_question(pad, base, difference, gained, lost, changed):
    rows = _answers("base", *base) + list(reversed(_answers("pad", *pad)))  # order within a model does not matter
    result = versus(rows, "pad")
    assert (result["difference"], result["gained"], result["lost"], result["answers_changed"]) == \
        (pytest.approx(difference), gained, lost, changed)
    assert {"ci95", "mcnemar_p", "mde"} <= set(result)


def test_versus_needs_the_same_questions():
    rows = _answers("base", ["1", "2"], ["correct", "wrong"]) + _answers("pad", ["1"], ["correct"])
    with pytest.raises(ValueError, match="different questions"):
        versus(rows, "pad")
