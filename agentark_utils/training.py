"""What every trainer here shares: checkpoints that survive a kill, and a stop on NaN/inf loss.

SFT, the PRM and GRPO all write checkpoints to `<out>.checkpoints/`. The directory is stamped with
a fingerprint of the data and settings; a re-run with the same fingerprint resumes from the newest
checkpoint that was written to the end, anything else starts afresh.

Under several processes (`launch.py`: accelerate or torchrun) only the main process touches the
checkpoint and model directories; the others wait for it (`is_main_process`, `barrier`).
"""

from __future__ import annotations

import json
import math
import os
import shutil
from pathlib import Path


class NonFiniteLossError(RuntimeError):
    """Training produced a NaN or infinite loss; the last good checkpoint is kept."""


def _step(checkpoint: Path) -> int:
    suffix = checkpoint.name.removeprefix("checkpoint-")
    return int(suffix) if suffix.isdigit() else -1


def _process_group():
    import torch.distributed as dist

    return dist if dist.is_available() and dist.is_initialized() else None


def is_main_process() -> bool:
    """True in a single-process run, and in rank 0 of a distributed one."""
    group = _process_group()
    return group is None or group.get_rank() == 0


def barrier() -> None:
    """Wait for every process (a no-op in a single-process run)."""
    group = _process_group()
    if group is not None:
        group.barrier()


def full_state_dict(trainer) -> dict | None:
    """The trained weights as one state dict, for the main process to save: under FSDP each process
    holds a shard, so they are gathered (a collective: every process must call this); None where
    the model holds its weights whole (one process, DDP), and saves them itself."""
    from accelerate.utils import DistributedType

    if trainer.accelerator.distributed_type != DistributedType.FSDP:
        return None
    return trainer.accelerator.get_state_dict(trainer.model)


def remove_checkpoints(ckpt_dir: Path) -> None:
    """Delete a finished run's checkpoints, once every process is done with them."""
    barrier()
    if is_main_process():
        shutil.rmtree(ckpt_dir, ignore_errors=True)


def last_complete_checkpoint(ckpt_dir: Path) -> Path | None:
    """The newest checkpoint that was written to the end; older and half-written ones are deleted.

    The Trainer writes `trainer_state.json` last, so a kill during a save leaves a newest checkpoint
    without it (or with a truncated one), and a kill while rotating leaves an older one half-deleted.
    The newest checkpoint whose state file parses and names its own step is therefore whole.
    """
    chosen = None
    for checkpoint in sorted(ckpt_dir.glob("checkpoint-*"), key=_step, reverse=True):
        if chosen is None:
            try:
                state = json.loads((checkpoint / "trainer_state.json").read_text())
                if state.get("global_step") == _step(checkpoint):
                    chosen = checkpoint
                    continue
            except (OSError, ValueError):
                pass
        shutil.rmtree(checkpoint)
    return chosen


def prepare_checkpoints(ckpt_dir: Path, stamp_value: str) -> Path | None:
    """Keep `ckpt_dir` only if it was made with the same fingerprint; return the checkpoint to resume from."""
    ckpt_dir = Path(ckpt_dir)
    stamp = ckpt_dir / "fingerprint.txt"
    if is_main_process():
        if ckpt_dir.exists() and (not stamp.exists() or stamp.read_text() != stamp_value):
            shutil.rmtree(ckpt_dir)
        ckpt_dir.mkdir(parents=True, exist_ok=True)
        stamp.write_text(stamp_value)
        last_complete_checkpoint(ckpt_dir)  # drops half-written ones
    barrier()
    return last_complete_checkpoint(ckpt_dir)  # for the main process, deletes nothing now


def torch_device(name: str) -> str:
    """The torch device for `name`; plain "cuda" means this process's own GPU under a launcher."""
    import torch

    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    if name == "cuda" and "LOCAL_RANK" in os.environ:  # set by accelerate launch / torchrun
        return f"cuda:{os.environ['LOCAL_RANK']}"
    return name


def trainer_arguments(output_dir: str | Path, params, device: str) -> dict:
    """The Trainer arguments SFT, the PRM and GRPO share, from their config section (`bf16`,
    `seed`, `save_steps`): a log line every step, one checkpoint kept, no tracker, the NaN filter off
    (`stop_on_non_finite_callback` must see such a loss), the CPU when the device is one."""
    return dict(output_dir=str(output_dir), bf16=params.bf16, seed=params.seed, data_seed=params.seed,
                logging_steps=1, save_strategy="steps", save_steps=params.save_steps, save_total_limit=1,
                report_to=[], use_cpu=torch_device(device) == "cpu", logging_nan_inf_filter=False,
                disable_tqdm=False)


def stop_on_non_finite_callback():
    """A TrainerCallback that raises NonFiniteLossError when a logged loss is NaN or inf.

    Needs `logging_nan_inf_filter=False` in the training args: the default hides such losses.
    """
    from transformers import TrainerCallback

    class StopOnNonFinite(TrainerCallback):
        def on_log(self, args, state, control, logs=None, **kwargs):
            loss = (logs or {}).get("loss")
            if loss is not None and not math.isfinite(loss):
                raise NonFiniteLossError(f"loss became {loss} at step {state.global_step}; "
                                         f"last good checkpoint kept in {args.output_dir}")

    return StopOnNonFinite()
