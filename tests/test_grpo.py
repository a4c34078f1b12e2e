"""GRPO: the prompt rows, the PRM scorer it builds, and a two-step run on a tiny model against a tiny PRM."""

import pytest
import torch
from safetensors.torch import load_file

from agentark_utils.config import GRPOParams, PRMParams
from agentark_utils.grpo import prompt_rows, train_grpo
from agentark_utils.prm import StepScorer, load_prm
from agentark_utils.tasks import Question

QUESTIONS = [Question(f"q{i}", "t", f"What is {i} + 1?", str(i + 1), "number") for i in range(4)]


def test_prompt_rows_carry_the_evaluation_prompt_and_the_question():
    from agentark_utils.debate import question_prompt

    (row, *_) = prompt_rows(QUESTIONS)
    assert row["prompt"] == [{"role": "user", "content": question_prompt(QUESTIONS[0])}]
    assert Question.from_dict(__import__("json").loads(row["question"])) == QUESTIONS[0]


def test_two_grpo_steps_update_the_policy_and_log_each_step(tiny_model_dir, tmp_path):
    prm, tok = load_prm(str(tiny_model_dir))
    prm.save_pretrained(tmp_path / "prm")
    tok.save_pretrained(tmp_path / "prm")
    scorer = StepScorer(str(tmp_path / "prm"), device="cpu", max_length=512)
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


def test_a_prm_directory_is_scored_at_prm_max_length(tiny_model_dir, tmp_path, monkeypatch):
    """train_grpo builds the scorer of a PRM directory (launch.train's case) with prm.max_length."""
    from agentark_utils import prm

    built = {}

    class Built(Exception):
        pass

    def recording_scorer(prm_dir, device, **kwargs):
        built.update(kwargs, prm_dir=prm_dir)
        raise Built  # what follows is the GRPO run, tested above

    monkeypatch.setattr(prm, "StepScorer", recording_scorer)
    params = GRPOParams(steps=1, group_size=2, batch_size=2, learning_rate=1e-2, max_completion_length=8,
                        temperature=1.0, bf16=False)
    length = PRMParams(stage1_steps=1, stage2_steps=0, stage1_learning_rate=1e-3, stage2_learning_rate=1e-3,
                       max_length=2048).max_length
    with pytest.raises(Built):
        train_grpo(QUESTIONS, str(tiny_model_dir), str(tmp_path / "prm"), tmp_path / "pad", params, device="cpu",
                   prm_max_length=length)
    assert built["prm_dir"] == str(tmp_path / "prm") and built["max_length"] == 2048
    with pytest.raises(ValueError, match="prm_max_length"):
        train_grpo(QUESTIONS, str(tiny_model_dir), str(tmp_path / "prm"), tmp_path / "pad", params, device="cpu")
