"""Strategies 1 and 2 (and the SFT baselines): supervised fine-tuning with TRL.

All four SFT students (R-SFT, DA, answer-only, single-agent CoT) go through `train_sft`, so they
share one loss and one budget.

Loss. Each example carries a weight: R-SFT and the baselines have w = 1; DA gives each of a
question's k traces w = 1/k (the paper's Eq. 2). The loss of a micro-batch is

    sum_i w_i * mean_t NLL(completion token t of row i)  /  (rows per optimizer step * mean weight)

with prompt tokens masked (TRL's completion-only labels) and the mean weight taken once over the
whole dataset. The denominator is a constant, the weight mass an optimizer step holds on average, so
- a row's gradient scales with its own weight, whoever shares its batch: over an epoch every
  question contributes equally, however many traces it has (1/k holds across batches, not only
  within one), and DA's loss has the same scale as R-SFT's;
- the micro-batches of one optimizer step add up to that step's loss: the loss is already scaled
  for gradient accumulation, and the Trainer is told so (`loss_is_scaled_for_ga`) rather than left
  to guess from `model_accepts_loss_kwargs`.
The weight rides along as a dataset column (`remove_unused_columns=False`) and a thin collator
wrapper puts it in the batch.

Batches. A batch is padded to its longest row, so rows of mixed length waste compute on padding.
With `sft.group_by_length` (the default) each epoch's rows are shuffled, sorted by length within
megabatches of 50 batches, cut into batches, and the batches are shuffled (`LengthGroupedBatches`).
Every row is still seen once per epoch, and every step's batch is a uniform draw from the epoch's
batches, so the expected update at any step is the same as with random batches: the loss curve is
unchanged in expectation (the loss above does not depend on who shares a row's batch), while its
noise differs (rows of similar length train together) and the exact losses change with the order.
transformers' own `LengthGroupedSampler` would instead put the longest batch first and order each
megabatch from long to short, a length curriculum. TRL's padding-free batches are no use here:
without a flash-attention kernel (CUDA only) SDPA and eager attention get a dense block-diagonal
mask over the whole concatenated batch, which costs far more attention than the padding it saves.

Budget. Every strategy gets the same number of optimizer steps for the same questions:

    optimizer steps = ceil(epochs * n_questions / (batch_size * grad_accum * processes))

so `sft.epochs` counts passes over the *questions*: R-SFT (one row per question) passes `epochs`
times over its rows, DA (k rows per question) `epochs / k` times, and both see the same number of
rows. `TrainResult` reports what a run consumed: optimizer_steps, rows_seen and tokens_seen (the
completion tokens that carried loss). Warm-up is `sft.warmup_steps` optimizer steps (default 0: a
linear warm-up starts at learning rate 0, which would waste one of a tiny run's few steps).

Checkpoints go to `<out>.checkpoints/` every `save_steps`; a killed run resumes from the last one
(if the settings are unchanged) and the final model directory appears only when complete.
"""

from __future__ import annotations

import math
import os
import random
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F

from agentark_utils.config import SFTParams
from agentark_utils.extraction import Example
from agentark_utils.runs import fingerprint, path_digest
from agentark_utils.training import (full_state_dict, prepare_checkpoints, remove_checkpoints,
                                     stop_on_non_finite_callback, trainer_arguments)


@dataclass
class TrainResult:
    n_rows: int
    n_questions: int
    n_tokens: int  # prompt + completion tokens of one pass over the rows
    n_completion_tokens: int  # tokens that carry loss, one pass
    optimizer_steps: int
    rows_seen: int  # rows the run trained on, all passes, all processes
    tokens_seen: int  # completion tokens that carried loss, all passes, all processes
    wall_s: float
    seed: int
    resumed_from: str | None
    log_history: list[dict] = field(default_factory=list)

    def summary(self) -> dict:
        return {k: v for k, v in self.__dict__.items() if k != "log_history"}


def weighted_completion_loss(logits: torch.Tensor, labels: torch.Tensor, weights: torch.Tensor,
                             weight_mass: float) -> torch.Tensor:
    """Per row, the mean NLL of its labelled (completion) tokens; the rows' weighted sum over `weight_mass`."""
    target = labels[:, 1:]
    nll = F.cross_entropy(logits[:, :-1].transpose(1, 2).float(), target, ignore_index=-100, reduction="none")
    mask = (target != -100).float()
    per_row = (nll * mask).sum(1) / mask.sum(1).clamp(min=1)
    return (per_row * weights.to(per_row.dtype)).sum() / weight_mass


class LengthGroupedBatches(torch.utils.data.Sampler[int]):
    """Row indices, batch after batch, each batch of rows of similar length, in random batch order.

    Per epoch (`set_epoch`, called by the Trainer; the order depends only on seed and epoch, so a
    resumed run replays it): shuffle; set aside `len % batch_size` random rows as the one short
    batch, which comes last as with a random sampler; sort the rest by length within megabatches of
    `megabatch_batches` batches (the shuffle breaks ties at random); cut them into batches; shuffle
    the batches. Sets of at most that many batches are sorted whole, so their batches stay the same
    from epoch to epoch and only their order changes.
    """

    def __init__(self, lengths: list[int], batch_size: int, seed: int, megabatch_batches: int = 50):
        self.lengths, self.batch_size, self.seed = list(lengths), batch_size, seed
        self.megabatch = batch_size * megabatch_batches
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return len(self.lengths)

    def batches(self) -> list[list[int]]:
        rng = random.Random(f"{self.seed}:{self.epoch}")  # a str seed hashes the same in every process
        order = list(range(len(self.lengths)))
        rng.shuffle(order)
        short, rest = order[:len(order) % self.batch_size], order[len(order) % self.batch_size:]
        batches = []
        for start in range(0, len(rest), self.megabatch):
            chunk = sorted(rest[start:start + self.megabatch], key=self.lengths.__getitem__)
            batches += [chunk[i:i + self.batch_size] for i in range(0, len(chunk), self.batch_size)]
        rng.shuffle(batches)
        return batches + ([short] if short else [])

    def __iter__(self):
        return iter([i for batch in self.batches() for i in batch])


def optimizer_steps(n_questions: int, params: SFTParams, processes: int = 1) -> int:
    """The budget every strategy gets: `params.epochs` passes over the questions (module docstring)."""
    return math.ceil(params.epochs * n_questions / (params.batch_size * params.grad_accum * processes))


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
        """SFTTrainer with the weighted loss of the module docstring; logs the rows and loss tokens of each step."""

        # compute_loss divides by a whole optimizer step's weight mass, so the Trainer must not also
        # divide by the accumulation steps (by default it would skip that only for models that accept
        # loss kwargs, as Llama's do).
        loss_is_scaled_for_ga = True

        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            # The weight one process's optimizer step holds on average, once for the whole dataset (DDP
            # then averages the processes' gradients).
            weights = self.train_dataset["weight"]
            rows_per_step = self.args.per_device_train_batch_size * self.args.gradient_accumulation_steps
            self.weight_mass = rows_per_step * sum(weights) / len(weights)
            self._rows, self._loss_tokens = 0, 0  # since the last log

        def _get_train_sampler(self, train_dataset=None):
            # "group_by_length" gets batches of similar length in random order (LengthGroupedBatches),
            # not transformers' LengthGroupedSampler, whose longest-first order is a length curriculum.
            dataset = self.train_dataset if train_dataset is None else train_dataset
            if self.args.train_sampling_strategy != "group_by_length":
                return super()._get_train_sampler(dataset)
            seed = self.args.seed if self.args.data_seed is None else self.args.data_seed
            return LengthGroupedBatches([len(ids) for ids in dataset["input_ids"]], self._train_batch_size, seed)

        def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
            weights = inputs.pop("weight")
            labels = inputs.pop("labels")
            outputs = model(**inputs)
            loss = weighted_completion_loss(outputs.logits, labels, weights, self.weight_mass)
            self._rows += len(weights)
            self._loss_tokens += int((labels[:, 1:] != -100).sum())
            return (loss, outputs) if return_outputs else loss

        def log(self, logs: dict[str, float], start_time: float | None = None) -> None:
            # A step's log ("loss"; logging_steps=1) gets what the step consumed, summed over the
            # processes; in log_history, which checkpoints keep, these add up across a resume.
            if "loss" in logs:
                seen = torch.tensor([self._rows, self._loss_tokens], device=self.args.device)
                logs["rows"], logs["loss_tokens"] = (int(n) for n in self.accelerator.reduce(seen, "sum").tolist())
                self._rows, self._loss_tokens = 0, 0
            super().log(logs, start_time)

    return WeightedSFTTrainer


def _fingerprint(examples: list[Example], base_model: str, params: SFTParams) -> str:
    return fingerprint(path_digest(base_model), params.model_dump(), [e.to_dict() for e in examples])


def train_sft(examples: list[Example], base_model: str, out_dir: str | Path, params: SFTParams,
              device: str = "auto", trust_remote_code: bool = False) -> TrainResult:
    """Fine-tune `base_model` on `examples`; save the student to `out_dir` (atomically).

    No examples (the extraction kept no clean trace for this strategy, e.g. a single agent that never
    states its answer on a final-answer line): the student is the base model, saved unchanged, and
    the result says it trained on nothing (0 rows, 0 steps), so the grid keeps its row.
    """
    import datasets
    from trl import SFTConfig

    from agentark_utils.models import load_causal_lm, save_atomically

    if params.lora_r > 0 and os.environ.get("ACCELERATE_USE_FSDP", "false").lower() == "true":
        raise ValueError("sft.lora_r > 0 under FSDP (the launcher's config): merging LoRA adapters needs whole "
                         "weights; use sft.lora_r: 0 with FSDP, or LoRA with a DDP launcher")
    out_dir = Path(out_dir)
    if not examples:
        model, tokenizer = load_causal_lm(base_model, dtype="float32", device="cpu", trust_remote_code=trust_remote_code)
        save_atomically(model, tokenizer, out_dir)
        return TrainResult(n_rows=0, n_questions=0, n_tokens=0, n_completion_tokens=0, optimizer_steps=0, rows_seen=0,
                           tokens_seen=0, wall_s=0.0, seed=params.seed, resumed_from=None)
    ckpt_dir = out_dir.with_name(out_dir.name + ".checkpoints")
    resume = prepare_checkpoints(ckpt_dir, _fingerprint(examples, base_model, params))

    rows = datasets.Dataset.from_list([
        {"prompt": [{"role": "user", "content": e.prompt}],
         "completion": [{"role": "assistant", "content": e.completion}],
         "weight": e.weight}
        for e in examples
    ])
    n_questions = len({e.question_id for e in examples})
    # float32 master weights; `sft.bf16` adds bf16 autocast (faster on GPUs, slower on our 2-core CPU).
    model, tokenizer = load_causal_lm(base_model, dtype="float32", device=device, trust_remote_code=trust_remote_code)
    peft_config = None
    if params.lora_r > 0:
        from peft import LoraConfig

        peft_config = LoraConfig(r=params.lora_r, lora_alpha=params.lora_alpha, target_modules="all-linear",
                                 task_type="CAUSAL_LM")
    # Every step logs (trainer_arguments): each step's log carries its rows and loss tokens (WeightedSFTTrainer.log).
    config = SFTConfig(
        **trainer_arguments(ckpt_dir, params, device), learning_rate=params.learning_rate,
        per_device_train_batch_size=params.batch_size, gradient_accumulation_steps=params.grad_accum,
        max_length=params.max_length, lr_scheduler_type="cosine", warmup_steps=params.warmup_steps,
        train_sampling_strategy="group_by_length" if params.group_by_length else "random",
        remove_unused_columns=False,
    )
    # The budget counts the processes, which the arguments know only once built.
    config.max_steps = optimizer_steps(n_questions, params, config.world_size)
    trainer = _trainer_class()(model=model, args=config, train_dataset=rows, processing_class=tokenizer,
                               peft_config=peft_config, callbacks=[stop_on_non_finite_callback()])
    trainer.data_collator = _WeightCollator(trainer.data_collator)

    began = time.perf_counter()
    trainer.train(resume_from_checkpoint=str(resume) if resume else None)
    wall = time.perf_counter() - began

    if peft_config is not None:  # LoRA merges into whole weights: one process or DDP, not FSDP
        save_atomically(trainer.model.merge_and_unload(), tokenizer, out_dir)
    else:
        save_atomically(trainer.model, tokenizer, out_dir, full_state_dict(trainer))

    tokenized = trainer.train_dataset
    history = list(trainer.state.log_history)
    result = TrainResult(
        n_rows=len(examples), n_questions=n_questions,
        n_tokens=sum(len(ids) for ids in tokenized["input_ids"]),
        n_completion_tokens=sum(sum(1 for t in labels if t != -100) for labels in tokenized["labels"]),
        optimizer_steps=trainer.state.global_step,
        rows_seen=sum(h.get("rows", 0) for h in history), tokens_seen=sum(h.get("loss_tokens", 0) for h in history),
        wall_s=wall, seed=params.seed,
        resumed_from=str(resume) if resume else None,
        log_history=history,
    )
    remove_checkpoints(ckpt_dir)
    return result
