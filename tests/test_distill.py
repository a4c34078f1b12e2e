"""SFT: the weighted completion loss, the label mask, length-grouped batches, and a real (tiny) training run."""

import math

import pytest
import torch
from safetensors.torch import load_file

from agentark_utils.config import SFTParams
from agentark_utils.distill import (
    LengthGroupedBatches,
    _WeightCollator,
    _trainer_class,
    train_sft,
    weighted_completion_loss,
)
from agentark_utils.extraction import Example


def test_weighted_loss_by_hand():
    # vocab of 2, uniform logits -> NLL = log 2 at every position
    logits = torch.zeros(2, 4, 2)
    labels = torch.tensor([[-100, -100, 1, 0], [-100, 1, 1, 1]])
    logits[1, :, 1] = 10.0  # row 2 predicts token 1 almost surely -> NLL ~ 0
    loss = weighted_completion_loss(logits, labels, torch.tensor([1.0, 1.0]), weight_mass=2.0)
    assert loss.item() == pytest.approx((torch.log(torch.tensor(2.0)).item() + 0.0) / 2, abs=1e-4)
    # a weight of 1/3 on row 1: (w1 * log2 + w2 * 0) / weight_mass, whatever the batch's own weights sum to
    loss = weighted_completion_loss(logits, labels, torch.tensor([1 / 3, 1.0]), weight_mass=2.0)
    assert loss.item() == pytest.approx((1 / 3) * 0.6931 / 2, abs=1e-3)


def test_one_question_counts_once_whatever_its_k():
    """k copies of a question at weight 1/k weigh the same as one copy at weight 1."""
    torch.manual_seed(0)
    logits = torch.randn(1, 5, 7)
    labels = torch.tensor([[-100, 3, 1, 4, 2]])
    other = (torch.randn(1, 5, 7), torch.tensor([[-100, -100, 6, 0, 5]]))
    single = weighted_completion_loss(torch.cat([logits, other[0]]), torch.cat([labels, other[1]]),
                                      torch.tensor([1.0, 1.0]), weight_mass=2.0)
    k = 3
    copies = weighted_completion_loss(torch.cat([logits.repeat(k, 1, 1), other[0]]),
                                      torch.cat([labels.repeat(k, 1), other[1]]), torch.tensor([1 / k] * k + [1.0]),
                                      weight_mass=2.0)
    assert copies.item() == pytest.approx(single.item(), rel=1e-5)


def examples(n=8):
    return [Example(f"q{i}", f"What is {i} + 1?", f"{i} + 1 = {i + 1}\nFinal Answer: {i + 1}",
                    0.5 if i % 2 else 1.0, "test") for i in range(n)]


def sft_trainer(model_dir, rows: list[Example], out, **args):
    """The weighted SFT trainer on `rows` as `train_sft` builds it, on the CPU in float32, with `args`."""
    import datasets
    from trl import SFTConfig

    from agentark_utils.models import load_causal_lm

    model, tok = load_causal_lm(str(model_dir), dtype="float32", device="cpu")
    dataset = datasets.Dataset.from_list([{"prompt": [{"role": "user", "content": e.prompt}],
                                           "completion": [{"role": "assistant", "content": e.completion}],
                                           "weight": e.weight} for e in rows])
    config = SFTConfig(output_dir=str(out), report_to=[], use_cpu=True, bf16=False, remove_unused_columns=False,
                       disable_tqdm=True, save_strategy="no", **args)
    trainer = _trainer_class()(model=model, args=config, train_dataset=dataset, processing_class=tok)
    trainer.data_collator = _WeightCollator(trainer.data_collator)
    return trainer


def step_gradients(trainer) -> list[torch.Tensor]:
    """Train; each optimizer step's accumulated gradient (all parameters, flattened) as the optimizer gets it."""
    from transformers import TrainerCallback

    grads = []

    class Capture(TrainerCallback):
        def on_pre_optimizer_step(self, args, state, control, model=None, **kwargs):
            grads.append(torch.cat([p.grad.flatten() for p in model.parameters() if p.grad is not None]).clone())

    trainer.add_callback(Capture())
    trainer.train()
    return grads


def relative_error(a: torch.Tensor, b: torch.Tensor) -> float:
    return ((a - b).norm() / b.norm()).item()


def test_label_mask_covers_the_completion_only(tiny_model_dir, tmp_path):
    ex = examples(2)
    trainer = sft_trainer(tiny_model_dir, ex, tmp_path)
    tok = trainer.processing_class
    batch = trainer.data_collator([trainer.train_dataset[i] for i in range(2)])
    assert batch["weight"].tolist() == [1.0, 0.5]
    for row in range(2):
        labelled = [t for t, lab in zip(batch["input_ids"][row].tolist(), batch["labels"][row].tolist()) if lab != -100]
        text = tok.decode(labelled, skip_special_tokens=True)
        assert text.strip() == ex[row].completion  # exactly the completion: no prompt token carries loss
        assert ex[row].prompt not in tok.decode(labelled)


def test_each_question_weighs_the_same_over_an_epoch(tiny_model_dir, tmp_path):
    """DA's 1/k holds across batches, not only within one.

    q1 has one trace (w = 1), q2 three (w = 1/3 each), one row per batch, learning rate 0 so every
    step sees the same model. The epoch's summed gradient must be (steps) x the gradient of the
    question-weighted objective J = mean over questions of the mean completion NLL of its traces.
    (A per-batch weighted mean cancels the weights here and counts q2 three times.)
    """
    rows = [Example("q1", "What is 1 + 1?", "1 + 1 = 2\nFinal Answer: 2", 1.0, "test")] + [
        Example("q2", "What is 2 + 3?", f"{work}\nFinal Answer: 5", 1 / 3, "test")
        for work in ("2 + 3 = 5", "3 + 2 = 5", "Adding 2 and 3 gives 5")]
    trainer = sft_trainer(tiny_model_dir, rows, tmp_path, per_device_train_batch_size=1, num_train_epochs=1,
                          optim="sgd", learning_rate=0.0, max_grad_norm=0.0)
    grads = step_gradients(trainer)
    assert len(grads) == 4

    model = trainer.model
    model.zero_grad()
    batches = [trainer.data_collator([trainer.train_dataset[i]]) for i in range(4)]
    # the model's own loss: the mean NLL of the row's labelled tokens
    nll = [model(input_ids=b["input_ids"], attention_mask=b["attention_mask"], labels=b["labels"]).loss
           for b in batches]
    objective = (nll[0] + sum(nll[1:]) / 3) / 2
    objective.backward()
    expected = 4 * torch.cat([p.grad.flatten() for p in model.parameters() if p.grad is not None])
    assert relative_error(torch.stack(grads).sum(0), expected) < 1e-5


@pytest.mark.parametrize("accepts_loss_kwargs", [True, False])
def test_gradient_accumulation_leaves_the_step_unchanged(tiny_model_dir, tmp_path, accepts_loss_kwargs):
    """One optimizer step on the same 8 rows (weights 1 and 0.5): batch 8, or 2 accumulated batches of 4.

    Whether the Trainer divides a custom loss by the accumulation steps depends, by default, on
    `model_accepts_loss_kwargs` (True for Llama): the step must not depend on it.
    """
    grads = []
    for accumulate in (1, 2):
        trainer = sft_trainer(tiny_model_dir, examples(8), tmp_path / str(accumulate), max_steps=1,
                              per_device_train_batch_size=8 // accumulate, gradient_accumulation_steps=accumulate,
                              train_sampling_strategy="sequential", max_grad_norm=0.0)
        trainer.model_accepts_loss_kwargs = accepts_loss_kwargs
        grads.append(step_gradients(trainer))
    assert [len(g) for g in grads] == [1, 1]
    assert relative_error(grads[1][0], grads[0][0]) < 1e-5


def test_strategies_get_the_same_optimizer_steps_for_the_same_questions(tiny_model_dir, tmp_path):
    """R-SFT-like (1 row per question) and DA-like (3 rows per question, w = 1/3) sets of 4 questions."""
    rsft = [Example(e.question_id, e.prompt, e.completion, 1.0, "test") for e in examples(4)]
    da = [Example(e.question_id, e.prompt, f"{prefix}{e.completion}", 1 / 3, "test")
          for e in rsft for prefix in ("", "So: ", "Well, ")]
    params = SFTParams(learning_rate=1e-3, epochs=1, batch_size=2, save_steps=100)
    results = {name: train_sft(rows, str(tiny_model_dir), tmp_path / name, params, device="cpu")
               for name, rows in (("rsft", rsft), ("da", da))}
    steps = {name: max(h["step"] for h in result.log_history) for name, result in results.items()}
    assert steps == {"rsft": 2, "da": 2}  # ceil(1 epoch x 4 questions / batch of 2)
    for result in results.values():
        assert result.optimizer_steps == 2 and result.rows_seen == 4 and result.tokens_seen > 0
    # R-SFT's 4 rows, each seen once: every completion token carried loss once
    assert results["rsft"].tokens_seen == results["rsft"].n_completion_tokens


def test_first_step_trains_at_the_full_learning_rate_by_default(tiny_model_dir, tmp_path):
    """No warm-up by default: a linear warm-up would give a tiny run's first step learning rate 0."""
    params = SFTParams(learning_rate=1e-3, epochs=1, batch_size=2, save_steps=100)
    result = train_sft(examples(4), str(tiny_model_dir), tmp_path / "s", params, device="cpu")
    first = next(h for h in result.log_history if h.get("step") == 1 and "learning_rate" in h)
    assert first["learning_rate"] == pytest.approx(1e-3)


@pytest.mark.parametrize("lora_r", [0, 4])
def test_tiny_model_loss_falls_and_weights_change(tiny_model_dir, tmp_path, lora_r):
    before = load_file(tiny_model_dir / "model.safetensors")
    params = SFTParams(learning_rate=1e-2, epochs=4, batch_size=4, save_steps=2, lora_r=lora_r)
    out = tmp_path / "student"
    result = train_sft(examples(), str(tiny_model_dir), out, params, device="cpu")
    losses = [h["loss"] for h in result.log_history if "loss" in h]
    assert losses[-1] < losses[0]
    after = load_file(out / "model.safetensors")
    changed = [k for k in before if not torch.equal(before[k], after[k])]
    assert changed, "no weight changed"
    assert result.n_rows == 8 and result.n_questions == 8 and 0 < result.n_completion_tokens < result.n_tokens
    assert not (tmp_path / "student.checkpoints").exists() and not (tmp_path / "student.partial").exists()


def padded_fraction(lengths, batches):
    padded = sum(len(batch) * max(lengths[i] for i in batch) for batch in batches)
    return 1 - sum(lengths) / padded


def test_length_grouped_batches_see_every_row_once_per_epoch_with_less_padding():
    lengths = [60 + (i * 37) % 190 for i in range(50)]  # 60-249 tokens, mixed
    sampler = LengthGroupedBatches(lengths, batch_size=8, seed=0)
    random_fractions = []
    for epoch in range(3):
        sampler.set_epoch(epoch)
        batches = sampler.batches()
        assert sorted(list(sampler)) == list(range(50))  # each row exactly once per epoch
        assert [len(b) for b in batches] == [8] * 6 + [2]  # full batches, then the one short batch
        assert list(sampler) == [i for b in batches for i in b]  # the DataLoader's cut is the batches
        assert padded_fraction(lengths, batches[:-1]) < 0.05
        order = torch.randperm(50, generator=torch.Generator().manual_seed(epoch)).tolist()
        random_fractions.append(padded_fraction(lengths, [order[i:i + 8] for i in range(0, 48, 8)]))
    assert min(random_fractions) > 0.2
    sampler.set_epoch(1)
    again = LengthGroupedBatches(lengths, batch_size=8, seed=0)
    again.set_epoch(1)
    assert again.batches() == sampler.batches()  # a resumed run replays its epoch
    again.set_epoch(2)
    assert again.batches() != sampler.batches()


def test_length_grouped_batches_come_in_random_order():
    """No length curriculum (transformers' LengthGroupedSampler starts every epoch with the longest
    batch): over epochs, the first batch is as long as any other on average."""
    lengths = list(range(40))
    sampler = LengthGroupedBatches(lengths, batch_size=4, seed=0)
    first_means = []
    for epoch in range(400):
        sampler.set_epoch(epoch)
        first_means.append(sum(lengths[i] for i in sampler.batches()[0]) / 4)
    assert sum(first_means) / len(first_means) == pytest.approx(19.5, abs=2.5)  # the mean length; SE ~0.6
    assert len(set(first_means)) == 10  # every batch leads some epoch


def varied_examples(n=8):
    """Completions of four lengths (more ones to add up)."""
    return [Example(f"q{i}", f"What is {i} + {3 * (i % 4)}?", f"{' + '.join([str(i)] + ['1'] * (3 * (i % 4)))}"
                    f" = {i + 3 * (i % 4)}\nFinal Answer: {i + 3 * (i % 4)}", 1.0, "test") for i in range(n)]


def test_trainer_batches_rows_of_similar_length_each_epoch(tiny_model_dir, tmp_path):
    """`group_by_length` reaches the Trainer's data loader, with a new order every epoch (set_epoch)."""
    trainer = sft_trainer(tiny_model_dir, varied_examples(), tmp_path, per_device_train_batch_size=2,
                          num_train_epochs=2, train_sampling_strategy="group_by_length", learning_rate=0.0, seed=3)
    seen, collate = [], trainer.data_collator
    trainer.data_collator = lambda rows: seen.append([len(r["input_ids"]) for r in rows]) or collate(rows)
    trainer.train()
    lengths = [len(ids) for ids in trainer.train_dataset["input_ids"]]
    assert len(set(lengths)) > 2
    expected = LengthGroupedBatches(lengths, batch_size=2, seed=3)
    for epoch in range(2):
        expected.set_epoch(epoch)
        assert seen[4 * epoch:4 * epoch + 4] == [[lengths[i] for i in b] for b in expected.batches()]
    assert seen[:4] != seen[4:]


def test_length_grouping_leaves_the_loss_close(tiny_model_dir, tmp_path):
    """Same rows, same steps, another order: the final losses are finite and close."""
    final = {}
    for group in (True, False):
        params = SFTParams(learning_rate=1e-2, epochs=6, batch_size=2, save_steps=100, group_by_length=group)
        result = train_sft(varied_examples(), str(tiny_model_dir), tmp_path / str(group), params, device="cpu")
        losses = [h["loss"] for h in result.log_history if "loss" in h]
        assert result.rows_seen == 6 * 8
        final[group] = sum(losses[-4:]) / 4  # the last epoch
    assert all(math.isfinite(v) for v in final.values())
    assert final[True] == pytest.approx(final[False], rel=0.25)


def test_no_examples_gives_the_base_model_and_says_so(tiny_model_dir, tmp_path):
    """A strategy the extraction left empty keeps its row in the grid: the untrained base model."""
    import torch
    from safetensors.torch import load_file

    result = train_sft([], str(tiny_model_dir), tmp_path / "s", SFTParams(learning_rate=1e-3, epochs=1, batch_size=1))
    assert result.n_rows == result.optimizer_steps == result.rows_seen == 0 and result.log_history == []
    saved, base = load_file(tmp_path / "s" / "model.safetensors"), load_file(tiny_model_dir / "model.safetensors")
    assert saved.keys() == base.keys() and all(torch.equal(saved[k], base[k]) for k in base)


def test_nan_loss_stops_with_a_message_and_keeps_no_half_model(tiny_model_dir, tmp_path):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from agentark_utils.training import NonFiniteLossError

    broken = tmp_path / "broken"
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    with torch.no_grad():
        model.model.norm.weight.fill_(float("nan"))
    model.save_pretrained(broken)
    AutoTokenizer.from_pretrained(tiny_model_dir).save_pretrained(broken)
    with pytest.raises(NonFiniteLossError, match="loss became nan at step 1"):
        train_sft(examples(4), str(broken), tmp_path / "s", SFTParams(learning_rate=1e-3, epochs=1, batch_size=2),
                  device="cpu")
    assert not (tmp_path / "s").exists()



def test_lora_under_fsdp_is_refused_before_any_training(tmp_path, monkeypatch):
    """`accelerate launch` with an FSDP config sets ACCELERATE_USE_FSDP in every process: LoRA's
    merge needs whole weights, so the call stops at once, naming the way out."""
    monkeypatch.setenv("ACCELERATE_USE_FSDP", "true")
    with pytest.raises(ValueError, match="sft.lora_r > 0 under FSDP"):
        train_sft(examples(), "no/such/model", tmp_path / "s", SFTParams(learning_rate=1e-3, epochs=1, batch_size=2, lora_r=4))
    assert not (tmp_path / "s").exists()
