"""Training throughput of the default student, SFT and PRM: padding cut, against the roofline; fp32 vs bf16.

    python benchmarks/training_step.py [--model DIR] [--rows 48] [--questions 8] [--bf16-steps 3]

One optimizer step = forward, backward and AdamW update, with the stages' own losses
(`weighted_completion_loss`, `prm_loss`) on random token ids (the cost does not depend on the
tokens) of synthetic lengths drawn like the debate's prompts and traces (below). For each of SFT
and the PRM, one epoch is run BEFORE (today's batches, each padded to its longest row) and AFTER
(this repo's batching), their steps interleaved so that other load on the machine hits both alike:
- SFT: BEFORE, rows in random order; AFTER, `LengthGroupedBatches` (sft.group_by_length).
- PRM: the same random batches of whole questions; BEFORE, one forward over the padded batch;
  AFTER, one forward per length bucket (`length_buckets`, prm.bucket_cost_tokens). Stage II (all
  parameters train).
Reported per variant: real (non-pad) tokens/s, the padded fraction of the tokens processed, and the
roofline fraction: 6 x parameters x real tokens/s over the best fp32 matrix-product rate measured
in the same run (SFT counts every parameter, the tied embedding once, as the output projection;
the PRM's embedding is a lookup and is not counted). Attention's own FLOPs are left out.
Then the first SFT AFTER batches again, each stepped in fp32 and under bf16 autocast in turn, for
the precision choice (the `bf16` keys of the sft, prm and grpo sections). Writes results/benchmarks/training_step.json.
"""

from __future__ import annotations

import argparse
import random
import time

from common import machine, matmul_peak_gflops, write

from agentark_utils.config import load_params
from agentark_utils.distill import LengthGroupedBatches, weighted_completion_loss
from agentark_utils.models import load_causal_lm
from agentark_utils.training import torch_device
from agentark_utils.prm import StepBatchCollator, load_prm, prm_loss, set_stage, step_scores

# Synthetic lengths in tokens: a chat-formatted question prompt, and a trace (one agent's answer)
# after it; together 60-250 tokens, like debate prompts + traces.
PROMPT_TOKENS, TRACE_TOKENS = (40, 120), (20, 130)
TRACES_PER_QUESTION = 6  # debate.n_agents x debate.rounds
NO_BUCKETS = 10**9  # a forward "costing" more than any padding: one bucket, today's single forward


def draw(rng: random.Random, bounds: tuple[int, int]) -> int:
    return rng.randint(*bounds)


def sft_rows(n: int, vocab: int, seed: int) -> list[dict]:
    """Rows of (input_ids, n_prompt): prompt tokens carry no loss."""
    rng = random.Random(seed)
    rows = []
    for _ in range(n):
        prompt, trace = draw(rng, PROMPT_TOKENS), draw(rng, TRACE_TOKENS)
        rows.append({"input_ids": [rng.randrange(vocab) for _ in range(prompt + trace)], "n_prompt": prompt})
    return rows


def sft_batch(rows: list[dict], pad_token_id: int) -> dict:
    import torch

    width = max(len(r["input_ids"]) for r in rows)
    input_ids = torch.full((len(rows), width), pad_token_id)
    attention = torch.zeros((len(rows), width), dtype=torch.long)
    labels = torch.full((len(rows), width), -100)
    for i, row in enumerate(rows):
        n = len(row["input_ids"])
        input_ids[i, :n] = torch.tensor(row["input_ids"])
        attention[i, :n] = 1
        labels[i, row["n_prompt"]:n] = input_ids[i, row["n_prompt"]:n]
    return {"input_ids": input_ids, "attention_mask": attention, "labels": labels}


def prm_items(n_questions: int, vocab: int, seed: int) -> list[dict]:
    """Questions as `question_items` makes them: each trace is the question's prompt, then 2-5 steps."""
    rng = random.Random(seed)
    items = []
    for _ in range(n_questions):
        prompt = [rng.randrange(vocab) for _ in range(draw(rng, PROMPT_TOKENS))]
        traces = []
        for t in range(TRACES_PER_QUESTION):
            n_steps, n_tokens = rng.randint(2, 5), draw(rng, TRACE_TOKENS)
            step_ends = [*sorted(rng.sample(range(1, n_tokens), n_steps - 1)), n_tokens]
            traces.append({"input_ids": prompt + [rng.randrange(vocab) for _ in range(n_tokens)],
                           "positions": [len(prompt) + end - 1 for end in step_ends],
                           "labels": [t % 2] * n_steps})  # half the traces right, half wrong
        items.append({"traces": traces})
    return items


class Stepper:
    """One model and its optimizer; times optimizer steps and counts real and processed tokens."""

    def __init__(self, model, loss_fn, n_params: int):
        import torch

        self.model, self.loss_fn, self.n_params = model, loss_fn, n_params
        self.optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-6)

    def step(self, batch: dict, bf16: bool = False) -> float:
        import torch

        device = self.model.device
        batch = {k: v.to(device) for k, v in batch.items()}
        began = time.perf_counter()
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16):
            loss = self.loss_fn(self.model, batch)
        loss.backward()
        self.optimizer.step()
        self.optimizer.zero_grad()
        if device.type == "cuda":
            torch.cuda.synchronize()
        return time.perf_counter() - began


def summary(seconds: list[float], real: int, processed: int, n_params: int, peak_gflops: float) -> dict:
    rate = real / sum(seconds)
    return {"steps": len(seconds), "s_per_step": round(sum(seconds) / len(seconds), 3),
            "real_tokens": real, "processed_tokens": processed,
            "padded_fraction": round(1 - real / processed, 3),
            "real_tokens_per_s": round(rate, 1), "processed_tokens_per_s": round(processed / sum(seconds), 1),
            "roofline_fraction": round(6 * n_params * rate / 1e9 / peak_gflops, 3)}


def compare(stepper: Stepper, before: list[dict], after: list[dict], counts, peak: float) -> dict:
    """One warm-up step (not counted), then BEFORE and AFTER steps interleaved; the figures of each."""
    stepper.step(before[0])
    times = {"before": [], "after": []}
    for i in range(max(len(before), len(after))):
        for name, batches in (("before", before), ("after", after)):
            if i < len(batches):
                times[name].append(stepper.step(batches[i]))
    out = {name: summary(times[name], *counts(batches), stepper.n_params, peak)
           for name, batches in (("before", before), ("after", after))}
    out["speedup"] = round(out["after"]["real_tokens_per_s"] / out["before"]["real_tokens_per_s"], 2)
    return out


def precision_steps(stepper: Stepper, batches: list[dict]) -> tuple[list[float], list[float]]:
    """Each batch's step time in fp32 and under bf16 autocast, after one bf16 warm-up step (its kernels
    and casts): each batch stepped in both precisions, one right after the other, so that a change
    in the machine's load hits both alike."""
    stepper.step(batches[0], bf16=True)
    fp32, bf16 = [], []
    for batch in batches:
        fp32.append(stepper.step(batch))
        bf16.append(stepper.step(batch, bf16=True))
    return fp32, bf16


def sft_counts(batches: list[dict]) -> tuple[int, int]:
    return sum(int(b["attention_mask"].sum()) for b in batches), sum(b["input_ids"].numel() for b in batches)


def prm_counts(batches: list[dict]) -> tuple[int, int]:
    real = sum(int(b["attention_mask"].sum()) for b in batches)
    processed = 0
    for b in batches:
        lengths, buckets = b["attention_mask"].sum(1), b["row_buckets"]
        processed += sum(int((buckets == k).sum()) * int(lengths[buckets == k].max()) for k in buckets.unique())
    return real, processed


def sft_loss(model, batch):
    logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
    weights = batch["attention_mask"].new_ones(len(batch["input_ids"]), dtype=logits.dtype)
    return weighted_completion_loss(logits, batch["labels"], weights, weight_mass=len(weights))


def prm_step_loss(model, batch):
    return prm_loss(step_scores(model, batch), batch["step_labels"], batch["step_groups"], batch["step_rows"],
                    tau=0.1, ce_weight=1.0)


def main() -> None:
    import torch

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default=None, help="default: model.student of params.yaml")
    parser.add_argument("--rows", type=int, default=48, help="SFT rows: one epoch (default: R-SFT's 48 questions)")
    parser.add_argument("--questions", type=int, default=8, help="PRM questions of 6 traces: one epoch")
    parser.add_argument("--bf16-steps", type=int, default=3, help="SFT AFTER batches timed again, in fp32 and bf16 autocast in turn")
    parser.add_argument("--prm-bucket-cost-tokens", type=int, default=None,
                        help="AFTER's prm.bucket_cost_tokens (default: params.yaml's)")
    parser.add_argument("--device", default=None, help="default: model.device of params.yaml")
    parser.add_argument("--note", default=None, help="a note for the JSON (e.g. what else ran on the machine)")
    args = parser.parse_args()
    params = load_params("params.yaml")
    device = torch_device(args.device or params.model.device)
    model_name = args.model or params.model.student
    peak = matmul_peak_gflops("float32", (2048, 2048, 2048), repeats=10)
    print(f"fp32 matrix-product peak (2048x2048, best of 10): {peak:.0f} GFLOP/s")

    model, tokenizer = load_causal_lm(model_name, dtype="float32", device=device)
    model.train()
    pad = tokenizer.pad_token_id
    rows = sft_rows(args.rows, model.config.vocab_size, seed=0)
    bs = params.sft.batch_size
    order = torch.randperm(len(rows), generator=torch.Generator().manual_seed(0)).tolist()
    before = [sft_batch([rows[i] for i in order[s:s + bs]], pad) for s in range(0, len(rows), bs)]
    grouped = LengthGroupedBatches([len(r["input_ids"]) for r in rows], bs, seed=0).batches()
    after = [sft_batch([rows[i] for i in batch], pad) for batch in grouped]
    sft_stepper = Stepper(model, sft_loss, sum(p.numel() for p in model.parameters()))
    sft = {"rows": len(rows), "batch_size": bs, **compare(sft_stepper, before, after, sft_counts, peak)}

    # bf16 autocast against fp32 on the first AFTER batches
    n_bf16 = min(args.bf16_steps, len(after))
    precision = {}
    if n_bf16:
        fp32, bf16 = precision_steps(sft_stepper, after[:n_bf16])
        precision = {"float32": {"s_per_step": round(sum(fp32) / n_bf16, 3)},
                     "bf16 autocast": {"s_per_step": round(sum(bf16) / n_bf16, 3)}}
        precision["bf16_speedup"] = round(precision["float32"]["s_per_step"] / precision["bf16 autocast"]["s_per_step"], 2)
    del model, sft_stepper

    prm_model, _ = load_prm(model_name)
    prm_model.to(device).train()
    set_stage(prm_model, 2)
    items = prm_items(args.questions, prm_model.config.vocab_size, seed=1)
    bq = params.prm.batch_questions
    order = torch.randperm(len(items), generator=torch.Generator().manual_seed(0)).tolist()
    question_batches = [[items[i] for i in order[s:s + bq]] for s in range(0, len(items), bq)]
    one_forward = StepBatchCollator(pad, NO_BUCKETS)
    bucket_cost = params.prm.bucket_cost_tokens if args.prm_bucket_cost_tokens is None else args.prm_bucket_cost_tokens
    bucketed = StepBatchCollator(pad, bucket_cost)
    embedding = prm_model.get_input_embeddings().weight.numel()
    prm_stepper = Stepper(prm_model, prm_step_loss, sum(p.numel() for p in prm_model.parameters()) - embedding)
    prm = {"questions": len(items), "traces_per_question": TRACES_PER_QUESTION, "batch_questions": bq,
           "bucket_cost_tokens": bucket_cost,
           **compare(prm_stepper, [one_forward(q) for q in question_batches], [bucketed(q) for q in question_batches],
                     prm_counts, peak)}

    print(f"\n{'':14}{'real tok/s':>11}{'padded':>8}{'roofline':>9}{'s/step':>8}")
    for name, section in (("SFT", sft), ("PRM", prm)):
        for variant in ("before", "after"):
            f = section[variant]
            print(f"{name + ' ' + variant:14}{f['real_tokens_per_s']:>11}{f['padded_fraction']:>8.1%}"
                  f"{f['roofline_fraction']:>9.1%}{f['s_per_step']:>8}")
        print(f"{name} speed-up (real tokens/s, after / before): {section['speedup']}x")
    if precision:
        print(f"bf16 autocast: {precision['bf16_speedup']}x the speed of float32 ({n_bf16} SFT steps)")
    write("training_step.json", {
        "machine": machine(device), "note": args.note, "model": model_name, "matmul_peak_gflops": round(peak, 1),
        "lengths": {"prompt_tokens": PROMPT_TOKENS, "trace_tokens": TRACE_TOKENS, "drawn": "uniform, synthetic"},
        "sft": sft, "prm": prm, "batch_size": bs, "steps": n_bf16, **precision})


if __name__ == "__main__":
    main()
