"""Strategies 1 and 2 (and the SFT baselines): supervised fine-tuning with TRL.

All four SFT students (R-SFT, DA, answer-only, single-agent CoT) go through `train_sft`, so they
share one loss and one budget. Each example carries a weight; the loss of a batch is

    sum_i w_i * mean_t NLL(completion token t of row i)  /  sum_i w_i

with prompt tokens masked (TRL's completion-only labels). R-SFT and the baselines have w = 1. DA
gives each of a question's k traces w = 1/k (the paper's Eq. 2), so every question weighs the same
however many traces it contributes. The weight rides along as a dataset column
(`remove_unused_columns=False`) and a thin collator wrapper puts it in the batch.

Checkpoints go to `<out>.checkpoints/` every `save_steps`; a killed run resumes from the last one
(if the settings are unchanged) and the final model directory appears only when complete.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F

from agentark_utils.config import SFTParams
from agentark_utils.extraction import Example
from agentark_utils.training import (fingerprint, prepare_checkpoints, remove_checkpoints,
                                     stop_on_non_finite_callback)


@dataclass
class TrainResult:
    n_rows: int
    n_questions: int
    n_tokens: int  # prompt + completion tokens of one pass over the rows
    n_completion_tokens: int  # tokens that carry loss, one pass
    wall_s: float
    seed: int
    resumed_from: str | None
    log_history: list[dict] = field(default_factory=list)

    def summary(self) -> dict:
        return {k: v for k, v in self.__dict__.items() if k != "log_history"}


def weighted_completion_loss(logits: torch.Tensor, labels: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """Per row, the mean NLL of its labelled (completion) tokens; rows combined by their weights."""
    target = labels[:, 1:]
    nll = F.cross_entropy(logits[:, :-1].transpose(1, 2).float(), target, ignore_index=-100, reduction="none")
    mask = (target != -100).float()
    per_row = (nll * mask).sum(1) / mask.sum(1).clamp(min=1)
    weights = weights.to(per_row.dtype)
    return (per_row * weights).sum() / weights.sum()


class _WeightCollator:
    """TRL's collator, plus the rows' weights as a tensor."""

    def __init__(self, base):
        self.base = base

    def __call__(self, examples):
        batch = self.base(examples)
        batch["weight"] = torch.tensor([float(e["weight"]) for e in examples])
        return batch


def _trainer_class():
    from trl import SFTTrainer

    class WeightedSFTTrainer(SFTTrainer):
        def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
            weights = inputs.pop("weight")
            labels = inputs.pop("labels")
            outputs = model(**inputs)
            loss = weighted_completion_loss(outputs.logits, labels, weights)
            return (loss, outputs) if return_outputs else loss

    return WeightedSFTTrainer


def _fingerprint(examples: list[Example], base_model: str, params: SFTParams) -> str:
    return fingerprint(base_model, params.model_dump(), [e.to_dict() for e in examples])


def train_sft(examples: list[Example], base_model: str, out_dir: str | Path, params: SFTParams,
              device: str = "auto", trust_remote_code: bool = False) -> TrainResult:
    """Fine-tune `base_model` on `examples`; save the student to `out_dir` (atomically)."""
    import datasets
    from trl import SFTConfig

    from agentark_utils.models import load_causal_lm, save_atomically, torch_device

    if not examples:
        raise ValueError("no training examples: the extraction stage kept no question for this strategy")
    out_dir = Path(out_dir)
    ckpt_dir = out_dir.with_name(out_dir.name + ".checkpoints")
    resume = prepare_checkpoints(ckpt_dir, _fingerprint(examples, base_model, params))

    rows = datasets.Dataset.from_list([
        {"prompt": [{"role": "user", "content": e.prompt}],
         "completion": [{"role": "assistant", "content": e.completion}],
         "weight": e.weight}
        for e in examples
    ])
    # float32 master weights; `sft.bf16` adds bf16 autocast (faster on GPUs, slower on our 2-core CPU).
    model, tokenizer = load_causal_lm(base_model, dtype="float32", device=device, trust_remote_code=trust_remote_code)
    peft_config = None
    if params.lora_r > 0:
        from peft import LoraConfig

        peft_config = LoraConfig(r=params.lora_r, lora_alpha=params.lora_alpha, target_modules="all-linear",
                                 task_type="CAUSAL_LM")
    config = SFTConfig(
        output_dir=str(ckpt_dir), learning_rate=params.learning_rate, num_train_epochs=params.epochs,
        per_device_train_batch_size=params.batch_size, gradient_accumulation_steps=params.grad_accum,
        max_length=params.max_length, bf16=params.bf16, seed=params.seed, data_seed=params.seed,
        lr_scheduler_type="cosine", warmup_steps=0.1,  # a float < 1 is a ratio of all steps
        logging_steps=1, save_strategy="steps",
        save_steps=params.save_steps, save_total_limit=1, report_to=[], remove_unused_columns=False,
        use_cpu=torch_device(device) == "cpu", disable_tqdm=False,
        logging_nan_inf_filter=False,  # the default would hide a NaN loss from StopOnNonFinite
    )
    trainer = _trainer_class()(model=model, args=config, train_dataset=rows, processing_class=tokenizer,
                               peft_config=peft_config, callbacks=[stop_on_non_finite_callback()])
    trainer.data_collator = _WeightCollator(trainer.data_collator)

    began = time.perf_counter()
    trainer.train(resume_from_checkpoint=str(resume) if resume else None)
    wall = time.perf_counter() - began

    final = trainer.model.merge_and_unload() if peft_config is not None else trainer.model
    save_atomically(final, tokenizer, out_dir)

    tokenized = trainer.train_dataset
    result = TrainResult(
        n_rows=len(examples), n_questions=len({e.question_id for e in examples}),
        n_tokens=sum(len(ids) for ids in tokenized["input_ids"]),
        n_completion_tokens=sum(sum(1 for t in labels if t != -100) for labels in tokenized["labels"]),
        wall_s=wall, seed=params.seed,
        resumed_from=str(resume) if resume else None,
        log_history=list(trainer.state.log_history),
    )
    remove_checkpoints(ckpt_dir)
    return result
