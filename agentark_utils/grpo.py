"""Strategy 3, part 2: GRPO on the student with the PRM as reward (TRL's `GRPOTrainer`).

For each prompt the policy samples `group_size` completions; each completion's reward is the
weighted sum of the registered rewards (`rewards.py`): the PRM's aggregated step score and,
optionally, the verifiable answer. Advantages are z-scored within the group (the paper's Eq. 5),
the ratio is clipped at 1 +- epsilon and a KL term with weight beta keeps the policy near its start
(Eqs. 3-4; loss_type "grpo" normalises each completion by its length, as Eq. 4 averages per output).

Sizing: a step takes batch_size / group_size prompts. Unless `steps` is set, the run makes
`epochs` passes over the training prompts, the prompt list padded with its first prompts to a whole
number of steps (TRL's sampler drops an incomplete last batch), so every prompt is seen each pass.
The summary reports the prompts seen and the fraction of groups whose rewards differ: a group whose
G completions all get the same reward has zero advantages and teaches nothing.

On a GPU with vLLM installed, rollouts go through vLLM (colocated); otherwise through `generate`.
"""

from __future__ import annotations

import importlib.util
import json
import math
import time
from dataclasses import dataclass, field
from pathlib import Path

from agentark_utils.config import GRPOParams, PRMParams
from agentark_utils.prompts import question_prompt
from agentark_utils.runs import fingerprint, path_digest
from agentark_utils.tasks import Question
from agentark_utils.training import (full_state_dict, prepare_checkpoints, remove_checkpoints,
                                     stop_on_non_finite_callback, torch_device, trainer_arguments)

# What TRL logs per step, renamed for the tables and plots.
LOGGED = {"reward": "reward_mean", "reward_std": "reward_std", "frac_reward_zero_std": "frac_zero_std_groups",
          "kl": "kl", "completions/mean_length": "completion_length", "loss": "loss"}


@dataclass
class GRPOResult:
    steps: int
    n_prompts: int
    prompts_seen: int  # steps x prompts per step, repeats included
    epochs_covered: float  # steps / steps of one pass over the (padded) prompts
    frac_groups_nonzero_std: float  # mean over steps: groups whose rewards differ (a learning signal)
    wall_s: float
    used_vllm: bool
    log: list[dict] = field(default_factory=list)  # one row per step, LOGGED columns

    def summary(self) -> dict:
        return {k: v for k, v in self.__dict__.items() if k != "log"}


def prompt_rows(questions: list[Question]) -> list[dict]:
    """GRPO dataset rows: the same prompt the debate and the evaluation use, plus the question."""
    return [{"prompt": [{"role": "user", "content": question_prompt(q)}], "question": json.dumps(q.to_dict())}
            for q in questions]


def prompts_per_step(params: GRPOParams) -> int:
    return params.batch_size // params.group_size


def steps_per_epoch(params: GRPOParams, n_prompts: int) -> int:
    """Optimizer steps of one pass over `n_prompts` prompts, the last step filled up with repeats."""
    return math.ceil(n_prompts / prompts_per_step(params))


def padded_rows(questions: list[Question], params: GRPOParams) -> list[dict]:
    """The prompt rows, cycled to fill the last step of a pass: TRL's sampler would drop it."""
    rows = prompt_rows(questions)
    return [rows[i % len(rows)] for i in range(steps_per_epoch(params, len(rows)) * prompts_per_step(params))]


def training_steps(params: GRPOParams, n_prompts: int) -> int:
    """`steps` when set, else `epochs` whole passes over the prompts."""
    return params.steps or params.epochs * steps_per_epoch(params, n_prompts)


def checkpoint_fingerprint(student: str, params: GRPOParams, questions: list[Question], scorer) -> str:
    """What a GRPO checkpoint was trained with: the student, the section, the prompts and the reward
    model (its saved weights and the length it scores to, from the scorer itself). Any change restarts."""
    return fingerprint(path_digest(student), params.model_dump(), [q.to_dict() for q in questions],
                       path_digest(scorer.prm_dir), scorer.max_length)


def train_grpo(questions: list[Question], student: str, scorer, out_dir: str | Path, params: GRPOParams,
               device: str = "auto", trust_remote_code: bool = False,
               prm_params: PRMParams | None = None) -> GRPOResult:
    """Optimise `student` on `questions` against the rewards; save the policy to `out_dir` atomically.

    `scorer`: a `prm.StepScorer`, or the directory of a saved PRM (what `launch.train` passes), which
    then needs `prm_params` (the `prm` section: how the scorer cuts and batches steps).
    """
    import datasets
    from trl import GRPOConfig, GRPOTrainer

    from agentark_utils.models import load_causal_lm, save_atomically
    from agentark_utils.rewards import build_rewards

    out_dir = Path(out_dir)
    if not questions:  # extraction kept nothing: the student stays the base, as SFT on no rows does
        model, tokenizer = load_causal_lm(student, dtype="float32", device="cpu", trust_remote_code=trust_remote_code)
        save_atomically(model, tokenizer, out_dir)
        return GRPOResult(steps=0, n_prompts=0, prompts_seen=0, epochs_covered=0.0,
                          frac_groups_nonzero_std=float("nan"), wall_s=0.0, used_vllm=False)
    ckpt_dir = out_dir.with_name(out_dir.name + ".checkpoints")
    if isinstance(scorer, (str, Path)):
        from agentark_utils.prm import StepScorer

        if prm_params is None:
            raise ValueError("a PRM directory as scorer needs prm_params (the prm section)")
        scorer = StepScorer(str(scorer), prm_params, device, trust_remote_code=trust_remote_code)
    # The reward model is part of what a checkpoint was trained against: a changed PRM restarts.
    resume = prepare_checkpoints(ckpt_dir, checkpoint_fingerprint(student, params, questions, scorer))
    funcs, weights = build_rewards({"prm": params.prm_reward_weight, "answer": params.answer_reward_weight},
                                   scorer, params.aggregation)
    use_vllm = torch_device(device).startswith("cuda") and importlib.util.find_spec("vllm") is not None
    steps = training_steps(params, len(questions))
    rows = padded_rows(questions, params)
    config = GRPOConfig(
        **trainer_arguments(ckpt_dir, params, device), max_steps=steps, learning_rate=params.learning_rate,
        lr_scheduler_type="constant", per_device_train_batch_size=params.batch_size,
        num_generations=params.group_size, beta=params.beta, epsilon=params.epsilon,
        temperature=params.temperature, max_completion_length=params.max_completion_length,
        loss_type="grpo", scale_rewards="group", reward_weights=weights, use_vllm=use_vllm, vllm_mode="colocate",
    )
    model, tokenizer = load_causal_lm(student, dtype="float32", device=device, trust_remote_code=trust_remote_code)
    model.train()
    trainer = GRPOTrainer(model=model, reward_funcs=funcs, args=config,
                          train_dataset=datasets.Dataset.from_list(rows),
                          processing_class=tokenizer, callbacks=[stop_on_non_finite_callback()])
    began = time.perf_counter()
    trainer.train(resume_from_checkpoint=str(resume) if resume else None)
    wall = time.perf_counter() - began
    save_atomically(trainer.model, tokenizer, out_dir, full_state_dict(trainer))
    remove_checkpoints(ckpt_dir)
    log = [{"step": h["step"], **{new: h[old] for old, new in LOGGED.items() if old in h}}
           for h in trainer.state.log_history if "reward" in h]
    nonzero = [1 - row["frac_zero_std_groups"] for row in log if "frac_zero_std_groups" in row]
    return GRPOResult(steps=steps, n_prompts=len(questions), prompts_seen=steps * prompts_per_step(params),
                      epochs_covered=steps / steps_per_epoch(params, len(questions)),
                      frac_groups_nonzero_std=sum(nonzero) / len(nonzero) if nonzero else float("nan"),
                      wall_s=wall, used_vllm=use_vllm, log=log)
