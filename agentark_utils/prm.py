"""Strategy 3, part 1: the process reward model (PRM) that scores each reasoning step.

Model: the student's backbone with a token-classification head of one output
(`AutoModelForTokenClassification`, num_labels=1). A step's score R is the head's logit at the
last token of the step (its separator); sigma(R) is the probability that the step is correct.
Everything that trains is inside that model, so `save_pretrained` keeps all of it.

Input: the chat-formatted question prompt, then the steps, each followed by `STEP_SEPARATOR`.
Debate traces of any round are scored against the round-1 prompt, because that is what a GRPO
rollout is scored against.

Loss (the paper's Eq. 7, plus optional binary cross-entropy):
    L = -mean_t log[ exp(sigma(R_t+)/tau) / (exp(sigma(R_t+)/tau) + sum_{n in N_t} exp(sigma(R_n)/tau)) ]
        + ce_weight * BCE(R, z)
over the positive steps t of a question, with N_t every negative step of the *other* traces of the
same question. A batch holds whole questions, so negatives are always in the batch.

Curriculum: Stage I trains the head, the last decoder block and the final norm (backbone frozen);
Stage II trains everything. Each stage is a transformers `Trainer` run with its own step count.

Quality: on held-out traces, the PRM's step AUROC with a question-level bootstrap CI, beside trivial
scores that know nothing of the steps' content (`BASELINES`) and the untrained head
(`untrained_scorer`): a PRM that ranks steps no better than those has learnt nothing useful.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd
import torch
import torch.nn.functional as F

from agentark_utils.batching import length_buckets
from agentark_utils.config import PRMParams
from agentark_utils.prompts import render_chat, user_turn
from agentark_utils.runs import fingerprint, path_digest
from agentark_utils.steps import STEP_SEPARATOR, StepTrace, join_steps
from agentark_utils.training import (full_state_dict, prepare_checkpoints, remove_checkpoints,
                                     stop_on_non_finite_callback, trainer_arguments)


# --- encoding ---------------------------------------------------------------------------------

def encode_steps(tokenizer, rendered_prompt: str, steps: list[str], max_length: int) -> tuple[list[int], list[int]]:
    """Token ids of prompt + steps, and the position of each step's last token (its separator).

    Steps that do not fit in `max_length` are dropped (they get no score).
    """
    ids = tokenizer(rendered_prompt, add_special_tokens=False)["input_ids"]
    positions = []
    for step in steps:
        piece = tokenizer(step + STEP_SEPARATOR, add_special_tokens=False)["input_ids"]
        if len(ids) + len(piece) > max_length:
            break
        ids = ids + piece
        positions.append(len(ids) - 1)
    return ids, positions


@dataclass
class StepBatchCollator:
    """Questions -> one flat batch of traces, right-padded, with the scored positions.

    Each item is {"traces": [{"input_ids", "positions", "labels"}, ...]} for one question. The batch
    carries, per scored step: its row, its position, its label, its question and its trace index;
    and per row its length bucket (`length_buckets`; `step_scores` runs a forward per bucket).
    """

    pad_token_id: int
    bucket_cost_tokens: int

    def __call__(self, items: list[dict]) -> dict:
        traces = [(q, trace) for q, item in enumerate(items) for trace in item["traces"]]
        width = max(len(trace["input_ids"]) for _, trace in traces)
        input_ids = torch.full((len(traces), width), self.pad_token_id, dtype=torch.long)
        attention = torch.zeros((len(traces), width), dtype=torch.long)
        rows, positions, labels, groups = [], [], [], []
        for row, (q, trace) in enumerate(traces):
            n = len(trace["input_ids"])
            input_ids[row, :n] = torch.tensor(trace["input_ids"])
            attention[row, :n] = 1
            rows += [row] * len(trace["positions"])
            positions += trace["positions"]
            labels += trace["labels"][: len(trace["positions"])]
            groups += [q] * len(trace["positions"])
        def index(values):
            return torch.tensor(values, dtype=torch.long)

        buckets = length_buckets([len(trace["input_ids"]) for _, trace in traces], self.bucket_cost_tokens)
        return {"input_ids": input_ids, "attention_mask": attention, "row_buckets": index(buckets),
                "step_rows": index(rows), "step_positions": index(positions),
                "step_labels": torch.tensor(labels, dtype=torch.float), "step_groups": index(groups)}


def question_items(traces: list[StepTrace], prompts: dict[str, str], tokenizer, max_length: int) -> list[dict]:
    """Group labelled traces by question and encode them for the collator."""
    by_question: dict[str, list[dict]] = {}
    for trace in traces:
        rendered = render_chat(tokenizer, [user_turn(prompts[trace.question_id])])
        ids, positions = encode_steps(tokenizer, rendered, trace.steps, max_length)
        if positions:
            by_question.setdefault(trace.question_id, []).append(
                {"input_ids": ids, "positions": positions, "labels": trace.labels[: len(positions)]})
    return [{"traces": group} for group in by_question.values()]


# --- loss -------------------------------------------------------------------------------------

def contrastive_step_loss(scores: torch.Tensor, labels: torch.Tensor, groups: torch.Tensor, traces: torch.Tensor,
                          tau: float) -> torch.Tensor:
    """Eq. 7 over flat step tensors: each positive step against every negative step of the other
    traces of its question. Positives without such negatives are left out; no pair at all gives 0."""
    logits = torch.sigmoid(scores.float()) / tau
    positive, negative = labels > 0.5, labels < 0.5
    pairs = (positive[:, None] & negative[None, :] & (groups[:, None] == groups[None, :])
             & (traces[:, None] != traces[None, :]))
    anchors = pairs.any(dim=1)
    if not anchors.any():
        return scores.sum() * 0.0
    others = logits[None, :].expand(len(logits), -1).masked_fill(~pairs, float("-inf"))
    denominator = torch.logsumexp(torch.cat([logits[:, None], others], dim=1), dim=1)
    return (denominator - logits)[anchors].mean()


def prm_loss(scores, labels, groups, traces, tau: float, ce_weight: float) -> torch.Tensor:
    loss = contrastive_step_loss(scores, labels, groups, traces, tau)
    if ce_weight > 0:
        loss = loss + ce_weight * F.binary_cross_entropy_with_logits(scores.float(), labels.float())
    return loss


# --- model and curriculum ---------------------------------------------------------------------

def load_prm(name: str, trust_remote_code: bool = False):
    """A PRM: a saved one, or a fresh head on the weights of a causal LM (the student)."""
    from transformers import AutoModelForTokenClassification, AutoTokenizer

    from agentark_utils.models import resolve

    ref = resolve(name)
    tokenizer = AutoTokenizer.from_pretrained(ref, trust_remote_code=trust_remote_code)
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    model = AutoModelForTokenClassification.from_pretrained(ref, num_labels=1, dtype=torch.float32,
                                                            trust_remote_code=trust_remote_code)
    model.config.pad_token_id = tokenizer.pad_token_id
    return model, tokenizer


def _backbone(model):
    backbone = model.base_model
    if not (hasattr(backbone, "layers") and hasattr(backbone, "norm")):
        raise ValueError(f"{type(model).__name__}: PRM Stage I needs a decoder with .layers and .norm")
    return backbone


def set_stage(model, stage: int) -> list[str]:
    """Stage I: only the head, the last decoder block and the final norm train. Stage II: all.

    Returns the names of the trainable parameters.
    """
    if stage not in (1, 2):
        raise ValueError(f"PRM stage must be 1 or 2, got {stage}")
    model.requires_grad_(stage == 2)
    if stage == 1:
        backbone = _backbone(model)
        for part in (backbone.layers[-1], backbone.norm, model.score):
            part.requires_grad_(True)
    return [name for name, p in model.named_parameters() if p.requires_grad]


def step_scores(model, batch: dict) -> torch.Tensor:
    """The head's logit at every scored step of a collated batch: one forward per length bucket."""
    input_ids, attention = batch["input_ids"], batch["attention_mask"]
    step_rows, step_positions, row_buckets = batch["step_rows"], batch["step_positions"], batch["row_buckets"]
    lengths = attention.sum(1)
    scores, steps_in_order = [], []
    for bucket in range(int(row_buckets.max()) + 1):
        rows = (row_buckets == bucket).nonzero().flatten()
        width = int(lengths[rows].max())
        logits = model(input_ids=input_ids[rows, :width], attention_mask=attention[rows, :width]).logits[..., 0]
        row_in_bucket = torch.full_like(row_buckets, -1)
        row_in_bucket[rows] = torch.arange(len(rows), device=rows.device)
        steps = (row_buckets[step_rows] == bucket).nonzero().flatten()
        scores.append(logits[row_in_bucket[step_rows[steps]], step_positions[steps]])
        steps_in_order.append(steps)
    return torch.cat(scores)[torch.cat(steps_in_order).argsort()]


def _trainer_class():
    from transformers import Trainer

    class PRMTrainer(Trainer):
        """A transformers Trainer whose loss is `prm_loss` over the steps of whole questions."""

        def __init__(self, *args, tau: float, ce_weight: float, **kwargs):
            super().__init__(*args, **kwargs)
            self.tau, self.ce_weight = tau, ce_weight

        def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
            scores = step_scores(model, inputs)
            loss = prm_loss(scores, inputs["step_labels"], inputs["step_groups"], inputs["step_rows"], self.tau,
                            self.ce_weight)
            return (loss, scores) if return_outputs else loss

    return PRMTrainer


@dataclass
class PRMResult:
    n_questions: int
    n_traces: int
    n_steps: int
    n_positive_steps: int
    trainable_stage1: int  # parameters
    trainable_stage2: int
    wall_s: float
    log_history: list[dict] = field(default_factory=list)

    def summary(self) -> dict:
        return {**{k: v for k, v in self.__dict__.items() if k != "log_history"}, **stage_losses(self.log_history)}


def stage_losses(log_history: list[dict]) -> dict:
    """Each stage's mean training loss over the steps both stages ran, the numbers that compare them.

    A logged loss is that of one batch of `batch_questions` questions, and it varies with the batch
    (how many negatives its positives face) more than with training; each stage restarts its sampler
    with the same data seed, so Stage II's step k sees Stage I's step-k batch, and these two means are
    over the same batches. NaN where a stage has no logged step (Stage I resumed from its saved model).
    """
    losses = {stage: [h["loss"] for h in log_history if "loss" in h and h["stage"] == stage] for stage in (1, 2)}
    paired = min(len(losses[1]), len(losses[2]))

    def mean(values: list[float]) -> float:
        return sum(values) / len(values) if values else float("nan")

    return {"paired_steps": paired, "stage1_loss_same_batches": mean(losses[1][:paired]),
            "stage2_loss_same_batches": mean(losses[2][:paired])}


def train_prm(traces: list[StepTrace], prompts: dict[str, str], base_model: str, out_dir: str | Path,
              params: PRMParams, device: str = "auto", trust_remote_code: bool = False) -> PRMResult:
    """Train the PRM (Stage I then Stage II) on labelled debate traces; save it to `out_dir` atomically.

    Each stage checkpoints under `<out_dir>.checkpoints/stage<k>/`; a finished Stage I is kept as a
    model there, so a killed run resumes in the stage it was in.
    """
    from transformers import TrainingArguments, set_seed

    from agentark_utils.models import save_atomically

    if not traces:
        raise ValueError("no labelled step traces: no training question has both a correct and a wrong debate trace")
    out_dir = Path(out_dir)
    ckpt_root = out_dir.with_name(out_dir.name + ".checkpoints")
    run_id = fingerprint(path_digest(base_model), params.model_dump(), [t.to_dict() for t in traces], prompts)
    prepare_checkpoints(ckpt_root, run_id)  # a root from other data or settings is started afresh
    stage1_done = ckpt_root / "stage1-model"

    set_seed(params.seed)  # the new head is initialised at load time, before any Trainer seeds
    model, tokenizer = load_prm(str(stage1_done) if stage1_done.exists() else base_model, trust_remote_code)
    items = question_items(traces, prompts, tokenizer, params.max_length)
    collator = StepBatchCollator(tokenizer.pad_token_id, params.bucket_cost_tokens)
    trainable, history, began, trainer = {}, [], time.perf_counter(), None
    for stage, steps, lr in ((1, params.stage1_steps, params.stage1_learning_rate),
                             (2, params.stage2_steps, params.stage2_learning_rate)):
        trainable[stage] = sum(model.get_parameter(n).numel() for n in set_stage(model, stage))
        if stage == 1 and stage1_done.exists() or steps == 0:
            continue
        stage_dir = ckpt_root / f"stage{stage}"
        resume = prepare_checkpoints(stage_dir, run_id)
        args = TrainingArguments(
            **trainer_arguments(stage_dir, params, device), max_steps=steps, learning_rate=lr,
            lr_scheduler_type="constant", per_device_train_batch_size=params.batch_questions,
            weight_decay=params.weight_decay, adam_beta2=params.adam_beta2, remove_unused_columns=False,
        )
        trainer = _trainer_class()(model=model, args=args, train_dataset=items, data_collator=collator,
                                   tau=params.tau, ce_weight=params.ce_weight,
                                   callbacks=[stop_on_non_finite_callback()])
        trainer.train(resume_from_checkpoint=str(resume) if resume else None)
        history += [{**h, "stage": stage} for h in trainer.state.log_history]
        if stage == 1:
            save_atomically(model, tokenizer, stage1_done, full_state_dict(trainer))
    model.requires_grad_(True)
    save_atomically(model, tokenizer, out_dir, full_state_dict(trainer) if trainer is not None else None)
    remove_checkpoints(ckpt_root)
    return PRMResult(
        n_questions=len(items), n_traces=sum(len(i["traces"]) for i in items),
        n_steps=sum(len(t["positions"]) for i in items for t in i["traces"]),
        n_positive_steps=sum(sum(t["labels"]) for i in items for t in i["traces"]),
        trainable_stage1=trainable[1], trainable_stage2=trainable[2],
        wall_s=time.perf_counter() - began, log_history=history,
    )


# --- scoring ----------------------------------------------------------------------------------

class StepScorer:
    """Scores the steps of (prompt, steps) pairs with a saved PRM: sigma(R) per step, in batches.

    Its settings are the `prm` section (config.PRMParams), passed whole so that none has a default
    here: `max_length` (steps past it get no score; for GRPO, no reward), `score_batch_size` and
    `bucket_cost_tokens`.
    """

    def __init__(self, prm_dir: str, params: PRMParams, device: str = "auto", trust_remote_code: bool = False):
        from agentark_utils.training import torch_device

        self.prm_dir = prm_dir
        self.model, self.tokenizer = load_prm(prm_dir, trust_remote_code)
        self.device = torch_device(device)
        self.model.to(self.device).eval()
        self.batch_size, self.max_length = params.score_batch_size, params.max_length
        self.collate = StepBatchCollator(self.tokenizer.pad_token_id, params.bucket_cost_tokens)

    @torch.no_grad()
    def score(self, prompts: list[str], steps: list[list[str]]) -> list[list[float]]:
        """Per pair, the probability that each of its steps is correct (steps cut off by max_length get none)."""
        out: list[list[float]] = []
        for start in range(0, len(prompts), self.batch_size):
            chunk = []
            for prompt, trace_steps in zip(prompts[start:start + self.batch_size], steps[start:start + self.batch_size]):
                rendered = render_chat(self.tokenizer, [user_turn(prompt)])
                ids, positions = encode_steps(self.tokenizer, rendered, trace_steps, self.max_length)
                chunk.append({"input_ids": ids or [self.tokenizer.pad_token_id], "positions": positions,
                              "labels": [0] * len(positions)})
            batch = {k: v.to(self.device) for k, v in self.collate([{"traces": chunk}]).items()}
            # bf16 only on GPUs: on our 2-core CPU it was slower than fp32 (benchmarks/training_step.py).
            with torch.autocast(self.device.split(":")[0], dtype=torch.bfloat16, enabled=self.device.startswith("cuda")):
                probs = torch.sigmoid(step_scores(self.model, batch).float()).cpu().tolist()
            rows = batch["step_rows"].cpu().tolist()
            for row in range(len(chunk)):
                out.append([p for p, r in zip(probs, rows) if r == row])
        return out


def evaluate_prm(scorer: StepScorer, traces: list[StepTrace], prompts: dict[str, str]) -> tuple[list[dict], dict]:
    """Step-level accuracy (threshold 0.5) and AUROC on labelled traces; rows per scored step."""
    from agentark_utils.metrics import auroc

    scores = scorer.score([prompts[t.question_id] for t in traces], [t.steps for t in traces])
    rows = [{"question_id": t.question_id, "trace_id": t.trace_id, "step": i, "label": label, "score": s}
            for t, trace_scores in zip(traces, scores) for i, (label, s) in enumerate(zip(t.labels, trace_scores))]
    labels = [r["label"] for r in rows]
    probs = [r["score"] for r in rows]
    summary = {
        "n_steps": len(rows), "positive_rate": sum(labels) / len(rows) if rows else float("nan"),
        "step_accuracy": sum((p >= 0.5) == bool(y) for p, y in zip(probs, labels)) / len(rows) if rows else float("nan"),
        "auroc": auroc(probs, labels),
    }
    return rows, summary


# --- held-out quality against trivial baselines -------------------------------------------------

# Scores that read no step's content, higher = "more likely correct". Under our labels a wrong trace
# is negative from its divergence to its end, so wrong traces' steps sit late in long traces: a PRM
# must beat these to show it has learnt more than a trace's shape.
BASELINES = {
    "fewer steps": lambda steps, i: -len(steps),  # the trace's step count
    "shorter trace": lambda steps, i: -len(join_steps(steps)),  # the trace's length in characters
    "earlier step": lambda steps, i: -i,  # the step's position in its trace
}


def baseline_scores(traces: list[StepTrace]) -> dict[str, list[list[float]]]:
    """Each baseline's score of every step of every trace, in `StepScorer.score`'s shape."""
    return {name: [[float(score(t.steps, i)) for i in range(len(t.steps))] for t in traces]
            for name, score in BASELINES.items()}


def untrained_scorer(base_model: str, params: PRMParams, device: str = "auto",
                     trust_remote_code: bool = False) -> StepScorer:
    """The PRM before any training: the student with the fresh head `train_prm` starts from (the
    same seed before the same load), scoring like the trained one."""
    from transformers import set_seed

    set_seed(params.seed)
    return StepScorer(base_model, params, device, trust_remote_code=trust_remote_code)


def step_table(traces: list[StepTrace], scores: dict[str, list[list[float]]]) -> pd.DataFrame:
    """One row per step that every score scored (a PRM scores no step past `max_length`): question,
    trace, step index, label, the trace's final correctness and length, and one column per score."""
    rows = []
    for k, trace in enumerate(traces):
        scored = min([len(trace.steps)] + [len(per_trace[k]) for per_trace in scores.values()])
        rows += [{"question_id": trace.question_id, "trace_id": trace.trace_id, "step": i, "label": trace.labels[i],
                  "trace_correct": trace.correct, "trace_steps": len(trace.steps),
                  "trace_chars": len(join_steps(trace.steps)), **{name: s[k][i] for name, s in scores.items()}}
                 for i in range(scored)]
    return pd.DataFrame(rows)

