"""What every trainer here shares: checkpoints that survive a kill, and a stop on NaN/inf loss.

SFT, the PRM and GRPO all write checkpoints to `<out>.checkpoints/`. The directory is stamped with
a fingerprint of the data and settings; a re-run with the same fingerprint resumes from the newest
checkpoint that was written to the end, anything else starts afresh.
"""

from __future__ import annotations

import hashlib
import json
import math
import shutil
from pathlib import Path


class NonFiniteLossError(RuntimeError):
    """Training produced a NaN or infinite loss; the last good checkpoint is kept."""


def fingerprint(*parts) -> str:
    """A short stable hash of JSON-serialisable parts (data rows, model name, settings)."""
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()[:16]


def _step(checkpoint: Path) -> int:
    suffix = checkpoint.name.removeprefix("checkpoint-")
    return int(suffix) if suffix.isdigit() else -1


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
    if ckpt_dir.exists() and (not stamp.exists() or stamp.read_text() != stamp_value):
        shutil.rmtree(ckpt_dir)
    ckpt_dir.mkdir(parents=True, exist_ok=True)
    stamp.write_text(stamp_value)
    return last_complete_checkpoint(ckpt_dir)


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
