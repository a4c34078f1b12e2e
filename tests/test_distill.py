"""SFT: the weighted completion loss, the label mask, and a real (tiny) training run."""

import pytest
import torch
from safetensors.torch import load_file

from agentark_utils.config import SFTParams
from agentark_utils.distill import (
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
    loss = weighted_completion_loss(logits, labels, torch.tensor([1.0, 1.0]))
    assert loss.item() == pytest.approx((torch.log(torch.tensor(2.0)).item() + 0.0) / 2, abs=1e-4)
    # a weight of 1/3 on row 1: (w1 * log2 + w2 * 0) / (w1 + w2)
    loss = weighted_completion_loss(logits, labels, torch.tensor([1 / 3, 1.0]))
    assert loss.item() == pytest.approx((1 / 3) * 0.6931 / (4 / 3), abs=1e-3)


def test_one_question_counts_once_whatever_its_k():
    """k copies of a question at weight 1/k weigh the same as one copy at weight 1."""
    torch.manual_seed(0)
    logits = torch.randn(1, 5, 7)
    labels = torch.tensor([[-100, 3, 1, 4, 2]])
    other = (torch.randn(1, 5, 7), torch.tensor([[-100, -100, 6, 0, 5]]))
    single = weighted_completion_loss(torch.cat([logits, other[0]]), torch.cat([labels, other[1]]),
                                      torch.tensor([1.0, 1.0]))
    k = 3
    copies = weighted_completion_loss(torch.cat([logits.repeat(k, 1, 1), other[0]]),
                                      torch.cat([labels.repeat(k, 1), other[1]]), torch.tensor([1 / k] * k + [1.0]))
    assert copies.item() == pytest.approx(single.item(), rel=1e-5)


def examples(n=8):
    return [Example(f"q{i}", f"What is {i} + 1?", f"{i} + 1 = {i + 1}\nFinal Answer: {i + 1}",
                    0.5 if i % 2 else 1.0, "test") for i in range(n)]


def test_label_mask_covers_the_completion_only(tiny_model_dir):
    import datasets
    from trl import SFTConfig

    from agentark_utils.models import load_causal_lm

    model, tok = load_causal_lm(str(tiny_model_dir), dtype="float32", device="cpu")
    ex = examples(2)
    rows = datasets.Dataset.from_list([{"prompt": [{"role": "user", "content": e.prompt}],
                                        "completion": [{"role": "assistant", "content": e.completion}],
                                        "weight": e.weight} for e in ex])
    trainer_cls = _trainer_class()
    trainer = trainer_cls(model=model, args=SFTConfig(output_dir="/tmp/unused", report_to=[], use_cpu=True,
                                                      remove_unused_columns=False),
                          train_dataset=rows, processing_class=tok)
    batch = _WeightCollator(trainer.data_collator)([trainer.train_dataset[i] for i in range(2)])
    assert batch["weight"].tolist() == [1.0, 0.5]
    for row in range(2):
        labelled = [t for t, lab in zip(batch["input_ids"][row].tolist(), batch["labels"][row].tolist()) if lab != -100]
        text = tok.decode(labelled, skip_special_tokens=True)
        assert text.strip() == ex[row].completion  # exactly the completion: no prompt token carries loss
        assert ex[row].prompt not in tok.decode(labelled)


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


def test_no_examples_is_a_clear_error(tiny_model_dir, tmp_path):
    with pytest.raises(ValueError, match="no training examples"):
        train_sft([], str(tiny_model_dir), tmp_path / "s", SFTParams(learning_rate=1e-3, epochs=1, batch_size=1))


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

