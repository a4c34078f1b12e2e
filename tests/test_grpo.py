"""GRPO: the prompt rows, the PRM scorer it builds, and a two-step run on a tiny model against a tiny PRM."""

import pytest
import torch
from safetensors.torch import load_file

from agentark_utils.config import GRPOParams, PRMParams
from agentark_utils.grpo import padded_rows, prompt_rows, train_grpo, training_steps
from agentark_utils.prm import StepScorer, load_prm
from agentark_utils.tasks import Question

QUESTIONS = [Question(f"q{i}", "t", f"What is {i} + 1?", str(i + 1), "number") for i in range(4)]
PRM_PARAMS = PRMParams(stage1_steps=1, stage2_steps=0, stage1_learning_rate=1e-3, stage2_learning_rate=1e-3)


def test_prompt_rows_carry_the_evaluation_prompt_and_the_question():
    from agentark_utils.prompts import question_prompt

    (row, *_) = prompt_rows(QUESTIONS)
    assert row["prompt"] == [{"role": "user", "content": question_prompt(QUESTIONS[0])}]
    assert Question.from_dict(__import__("json").loads(row["question"])) == QUESTIONS[0]


def test_two_grpo_steps_update_the_policy_and_log_each_step(tiny_model_dir, tmp_path):
    prm, tok = load_prm(str(tiny_model_dir))
    prm.save_pretrained(tmp_path / "prm")
    tok.save_pretrained(tmp_path / "prm")
    scorer = StepScorer(str(tmp_path / "prm"), PRM_PARAMS, device="cpu")
    params = GRPOParams(steps=2, group_size=2, batch_size=4, learning_rate=1e-2, max_completion_length=8,
                        temperature=1.0, answer_reward_weight=0.5, bf16=False)
    result = train_grpo(QUESTIONS, str(tiny_model_dir), scorer, tmp_path / "pad", params, device="cpu")
    assert [row["step"] for row in result.log] == [1, 2]
    for row in result.log:
        assert {"reward_mean", "reward_std", "frac_zero_std_groups", "kl", "completion_length"} <= set(row)
        assert 0 <= row["frac_zero_std_groups"] <= 1
    before = load_file(tiny_model_dir / "model.safetensors")
    after = load_file(tmp_path / "pad" / "model.safetensors")
    assert any(not torch.equal(before[k], after[k]) for k in before)
    assert not (tmp_path / "pad.checkpoints").exists() and not result.used_vllm


def test_a_prm_directory_is_scored_with_the_prm_section(tiny_model_dir, tmp_path, monkeypatch):
    """train_grpo builds the scorer of a PRM directory (launch.train's case) from the prm section."""
    from agentark_utils import prm

    built = {}

    class Built(Exception):
        pass

    def recording_scorer(prm_dir, params, device, **kwargs):
        built.update(kwargs, prm_dir=prm_dir, params=params)
        raise Built  # what follows is the GRPO run, tested above

    monkeypatch.setattr(prm, "StepScorer", recording_scorer)
    params = GRPOParams(steps=1, group_size=2, batch_size=2, learning_rate=1e-2, max_completion_length=8,
                        temperature=1.0, bf16=False)
    section = PRM_PARAMS.model_copy(update={"max_length": 2048})
    with pytest.raises(Built):
        train_grpo(QUESTIONS, str(tiny_model_dir), str(tmp_path / "prm"), tmp_path / "pad", params, device="cpu",
                   prm_params=section)
    assert built["prm_dir"] == str(tmp_path / "prm") and built["params"] is section
    with pytest.raises(ValueError, match="prm_params"):
        train_grpo(QUESTIONS, str(tiny_model_dir), str(tmp_path / "prm"), tmp_path / "pad", params, device="cpu")


@pytest.mark.parametrize("n_prompts, update, steps", [
    (19, {}, 10),  # 2 prompts per step: 10 steps, the last one with a repeat
    (20, {}, 10),
    (19, {"epochs": 3}, 30),
    (19, {"steps": 7}, 7),  # set steps win over epochs
    (1, {}, 1),
])
def test_training_steps_cover_every_prompt(n_prompts, update, steps):
    params = GRPOParams(group_size=4, batch_size=8, learning_rate=1e-5, max_completion_length=8, **update)
    assert training_steps(params, n_prompts) == steps


@pytest.mark.parametrize("n, batch_size, ids", [
    (4, 4, ["q0", "q1", "q2", "q3"]),
    (3, 4, ["q0", "q1", "q2", "q0"]),  # 2 prompts per step: the last step is filled up
    (1, 8, ["q0"] * 4),
])
def test_padded_rows_fill_the_last_step(n, batch_size, ids):
    params = GRPOParams(group_size=2, batch_size=batch_size, learning_rate=1e-5, max_completion_length=8)
    rows = padded_rows(QUESTIONS[:n], params)
    assert [Question.from_dict(__import__("json").loads(r["question"])).id for r in rows] == ids


def test_one_epoch_sees_every_prompt_and_reports_it(tiny_model_dir, tmp_path, monkeypatch):
    """5 prompts at 2 per step: without the filled-up last step TRL's sampler drops one in each pass."""
    import json

    from agentark_utils import rewards

    seen = []

    def recording_reward(prompts, completions, question, **_):
        seen.extend(Question.from_dict(json.loads(q)).id for q in question)
        return [float(len(c[-1]["content"]) % 3) for c in completions]  # differs within most groups

    recording_reward.__name__ = "recording"
    monkeypatch.setitem(rewards.REWARDS, "answer", lambda scorer, aggregation: recording_reward)
    prm, tok = load_prm(str(tiny_model_dir))
    prm.save_pretrained(tmp_path / "prm")
    tok.save_pretrained(tmp_path / "prm")
    params = GRPOParams(group_size=2, batch_size=4, learning_rate=1e-2, max_completion_length=8, temperature=1.0,
                        prm_reward_weight=0.0, answer_reward_weight=1.0, bf16=False)
    questions = QUESTIONS + [Question("q4", "t", "What is 4 + 1?", "5", "number")]
    result = train_grpo(questions, str(tiny_model_dir), str(tmp_path / "prm"), tmp_path / "pad", params,
                        device="cpu", prm_params=PRM_PARAMS)
    assert set(seen) == {q.id for q in questions} and len(seen) == 3 * 4  # 3 steps x 4 completions
    assert (result.steps, result.n_prompts, result.prompts_seen, result.epochs_covered) == (3, 5, 6, 1.0)
    expected = sum(1 - row["frac_zero_std_groups"] for row in result.log) / 3
    assert result.frac_groups_nonzero_std == pytest.approx(expected) and 0 <= expected <= 1


def test_the_checkpoint_fingerprint_follows_the_scorer_it_trains_against(tiny_model_dir):
    """A ready-made scorer's own max_length is part of what a checkpoint was trained against (the
    prm section passed beside it may say otherwise, or be absent)."""
    from types import SimpleNamespace

    from agentark_utils.grpo import checkpoint_fingerprint

    params = GRPOParams(group_size=2, batch_size=4, learning_rate=1e-5, max_completion_length=8)

    def scored_to(max_length):
        scorer = SimpleNamespace(prm_dir=str(tiny_model_dir), max_length=max_length)
        return checkpoint_fingerprint(str(tiny_model_dir), params, QUESTIONS, scorer)

    assert scored_to(512) == scored_to(512)
    assert scored_to(256) != scored_to(512)
    other = params.model_copy(update={"learning_rate": 2e-5})
    assert checkpoint_fingerprint(str(tiny_model_dir), other, QUESTIONS,
                                  SimpleNamespace(prm_dir=str(tiny_model_dir), max_length=512)) != scored_to(512)


def test_no_kept_question_leaves_the_student_as_the_base(tiny_model_dir, tmp_path):
    """Extraction kept nothing: like SFT on no rows, PAD is the base model, saved, after no step."""
    params = GRPOParams(group_size=2, batch_size=2, learning_rate=1e-2, max_completion_length=8)
    result = train_grpo([], str(tiny_model_dir), "no PRM is read", tmp_path / "pad", params, device="cpu")
    assert (result.steps, result.n_prompts, result.prompts_seen, result.log) == (0, 0, 0, [])
    after, before = load_file(tmp_path / "pad" / "model.safetensors"), load_file(tiny_model_dir / "model.safetensors")
    assert after.keys() == before.keys() and all(torch.equal(after[k], before[k]) for k in before)
