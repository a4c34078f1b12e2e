"""launch.train: the same training call in-process or in several processes under a launcher."""

import socket
import sys

import pytest
from safetensors.torch import load_file

from agentark_utils import launch
from agentark_utils.config import SFTParams
from agentark_utils.distill import train_sft
from test_distill import examples


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_two_processes_split_the_data_and_the_main_one_saves(tiny_model_dir, tmp_path):
    """torchrun with 2 CPU processes (gloo): each optimizer step sees 2 batches, so half the steps."""
    params = SFTParams(learning_rate=1e-2, epochs=1, batch_size=2, save_steps=100)
    single = launch.train(train_sft, None, examples=examples(), base_model=str(tiny_model_dir),
                          out_dir=tmp_path / "one", params=params, device="cpu")
    torchrun = f"{sys.executable} -m torch.distributed.run --nproc_per_node 2 --master_port {free_port()}"
    double = launch.train(train_sft, torchrun, examples=examples(), base_model=str(tiny_model_dir),
                          out_dir=tmp_path / "two", params=params, device="cpu")
    steps = lambda result: max(h["step"] for h in result.log_history)
    assert (steps(single), steps(double)) == (4, 2)  # 8 rows, batch 2: 4 steps alone, 2 with 2 processes
    assert double.n_rows == single.n_rows == 8
    trained = load_file(tmp_path / "two" / "model.safetensors")
    assert trained.keys() == load_file(tmp_path / "one" / "model.safetensors").keys()
    assert not (tmp_path / "two.checkpoints").exists() and not (tmp_path / "two.partial").exists()


def test_a_failing_launch_names_the_command(tmp_path):
    with pytest.raises(RuntimeError, match=r"launched train_sft failed \(exit 1\): false -m agentark_utils.launch"):
        launch.train(train_sft, "false", examples=[], base_model="x", out_dir=tmp_path / "s", params=None)


def test_a_function_workers_cannot_import_is_refused_before_launching():
    with pytest.raises(ValueError, match="cannot hand .* to a launcher"):
        launch.train(lambda **kwargs: None, "false", examples=[])


def test_the_fsdp_config_launches_on_cpu_as_data_parallel(tiny_model_dir, tmp_path):
    """configs/accelerate/fsdp.yaml (the paper profile's launcher) with 2 CPU processes: it trains and
    the main process saves a whole model. accelerate enables FSDP for GPU-type devices only, so on
    CPU the processes run as DDP: the sharding itself (and the gather before the save) needs GPUs.
    If a later accelerate shards on CPU, this test still holds and then covers the gather too."""
    from agentark_utils.config import load_params
    from conftest import ROOT

    config = ROOT / "configs/accelerate/fsdp.yaml"
    assert str(config.relative_to(ROOT)) in load_params(ROOT / "profiles/paper.yaml", check_machine=False).model.launcher
    params = SFTParams(learning_rate=1e-2, epochs=1, batch_size=2, save_steps=100)
    accelerate = (f"{sys.executable} -m accelerate.commands.launch --config_file {config} --num_processes 2 "
                  f"--main_process_port {free_port()}")
    result = launch.train(train_sft, accelerate, examples=examples(), base_model=str(tiny_model_dir),
                          out_dir=tmp_path / "fsdp", params=params, device="cpu")
    assert max(h["step"] for h in result.log_history) == 2  # 8 rows, batch 2, 2 processes
    trained = load_file(tmp_path / "fsdp" / "model.safetensors")
    assert trained.keys() == load_file(tiny_model_dir / "model.safetensors").keys()
