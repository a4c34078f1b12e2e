"""A two-step GRPO run on a tiny model against a tiny PRM."""

import torch
from safetensors.torch import load_file

from agentark_utils.config import GRPOParams
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
    scorer = StepScorer(str(tmp_path / "prm"), device="cpu")
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
