"""Checkpoint bookkeeping shared by SFT, PRM and GRPO training."""

import pytest

from agentark_utils.runs import fingerprint
from agentark_utils.training import last_complete_checkpoint, prepare_checkpoints


WHOLE = '{"global_step": %d}'


@pytest.mark.parametrize("layout, expected", [
    ({}, None),
    ({"checkpoint-2": WHOLE % 2}, "checkpoint-2"),
    ({"checkpoint-2": WHOLE % 2, "checkpoint-4": None}, "checkpoint-2"),  # killed while saving step 4
    ({"checkpoint-2": WHOLE % 2, "checkpoint-4": '{"global_st'}, "checkpoint-2"),  # state file cut short
    ({"checkpoint-2": None, "checkpoint-4": WHOLE % 4}, "checkpoint-4"),  # killed while rotating step 2 out
    ({"checkpoint-8": WHOLE % 8, "checkpoint-10": WHOLE % 10}, "checkpoint-10"),  # by step, not by name
    ({"checkpoint-6": WHOLE % 2}, None),  # a state file that belongs elsewhere
])
def test_last_complete_checkpoint_keeps_only_the_newest_whole_one(tmp_path, layout, expected):
    for name, state in layout.items():
        (tmp_path / name).mkdir()
        (tmp_path / name / "model.safetensors").write_text("x")
        if state is not None:
            (tmp_path / name / "trainer_state.json").write_text(state)
    chosen = last_complete_checkpoint(tmp_path)
    assert (chosen.name if chosen else None) == expected
    assert sorted(p.name for p in tmp_path.glob("checkpoint-*")) == ([expected] if expected else [])


def test_checkpoints_survive_only_an_identical_rerun(tmp_path):
    ckpt = tmp_path / "student.checkpoints"
    assert prepare_checkpoints(ckpt, fingerprint("model", {"lr": 1}, ["row"])) is None
    (ckpt / "checkpoint-3").mkdir()
    (ckpt / "checkpoint-3" / "trainer_state.json").write_text(WHOLE % 3)
    assert prepare_checkpoints(ckpt, fingerprint("model", {"lr": 1}, ["row"])) == ckpt / "checkpoint-3"
    assert prepare_checkpoints(ckpt, fingerprint("model", {"lr": 2}, ["row"])) is None  # settings changed
    assert not (ckpt / "checkpoint-3").exists()


def test_trainer_arguments_carry_the_sections_settings():
    from types import SimpleNamespace

    from agentark_utils.training import trainer_arguments

    args = trainer_arguments("ckpt", SimpleNamespace(bf16=False, seed=7, save_steps=3), "cpu")
    assert args["output_dir"] == "ckpt" and args["seed"] == args["data_seed"] == 7 and args["save_steps"] == 3
    assert args["use_cpu"] and not args["bf16"]
    assert args["logging_nan_inf_filter"] is False  # or StopOnNonFinite never sees a NaN loss
    assert args["logging_steps"] == 1 and args["save_total_limit"] == 1


def test_a_sharded_model_is_gathered_before_the_main_process_saves(tiny_model_dir, tmp_path):
    """Under FSDP the weights a trainer holds are shards: full_state_dict gathers them through the
    accelerator, and save_atomically writes that dict, not the model's own; otherwise nothing is
    gathered and the model saves itself."""
    from types import SimpleNamespace

    import torch
    from accelerate.utils import DistributedType
    from safetensors.torch import load_file

    from agentark_utils.models import load_causal_lm, save_atomically
    from agentark_utils.training import full_state_dict

    model, tokenizer = load_causal_lm(str(tiny_model_dir), dtype="float32", device="cpu")
    gathered = {name: tensor.clone() + 1 for name, tensor in model.state_dict().items()}  # what the shards add up to
    calls = []

    def trainer(kind):
        def get_state_dict(wrapped):
            calls.append(wrapped)
            return gathered
        return SimpleNamespace(model="wrapped", accelerator=SimpleNamespace(distributed_type=kind,
                                                                            get_state_dict=get_state_dict))

    assert full_state_dict(trainer(DistributedType.MULTI_CPU)) is None and calls == []
    state = full_state_dict(trainer(DistributedType.FSDP))
    assert state is gathered and calls == ["wrapped"]
    save_atomically(model, tokenizer, tmp_path / "sharded", state)
    save_atomically(model, tokenizer, tmp_path / "whole")
    sharded, whole = (load_file(tmp_path / name / "model.safetensors") for name in ("sharded", "whole"))
    assert sharded.keys() == whole.keys()
    assert all(torch.equal(sharded[k], whole[k] + 1) for k in whole)
