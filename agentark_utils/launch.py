"""Run SFT, PRM or GRPO training in several processes, through a launcher command.

`model.launcher` in params.yaml is a command prefix; the training stages hand their training call
to it when it is set, and make the call in-process when it is null (the default):

    launcher: accelerate launch --config_file configs/accelerate/multi_gpu.yaml   # GPUs, DDP
    launcher: torchrun --nproc_per_node 2                                         # also works on CPU (gloo)

The function and its arguments are pickled to a job folder, every process runs `python -m
agentark_utils.launch <job>`, the function's own Trainer (transformers / TRL) shards the data
across the processes, and the main process pickles the result back. Only the main process writes
checkpoints and models (training.is_main_process).
"""

from __future__ import annotations

import pickle
import shlex
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Callable


def train(function: Callable, launcher: str | None, **kwargs):
    """`function(**kwargs)`: in this process (launcher None), or in every process `launcher` starts.

    `function` must be a module-level function (`distill.train_sft`, `prm.train_prm`,
    `grpo.train_grpo`): the workers import it by name.
    """
    if not launcher:
        return function(**kwargs)
    try:
        job_spec = pickle.dumps((function, kwargs))
    except (pickle.PicklingError, AttributeError, TypeError) as error:
        raise ValueError(f"cannot hand {function!r} to a launcher: {error}") from error
    with tempfile.TemporaryDirectory(prefix="agentark-launch-") as job:
        (Path(job) / "job.pkl").write_bytes(job_spec)
        command = [*shlex.split(launcher), "-m", "agentark_utils.launch", job]
        print("launching:", shlex.join(command), flush=True)
        done = subprocess.run(command)
        if done.returncode != 0:
            raise RuntimeError(f"launched {function.__name__} failed (exit {done.returncode}): {shlex.join(command)}")
        return pickle.loads((Path(job) / "result.pkl").read_bytes())


def main(argv: list[str] | None = None) -> None:
    """One worker process: join the process group, run the job, and (main process) write the result."""
    import torch
    from accelerate import PartialState

    from agentark_utils.training import is_main_process

    (job,) = argv or sys.argv[1:]
    # The process group must exist before the trainers prepare checkpoints, which waits on it.
    PartialState(cpu=not torch.cuda.is_available())
    function, kwargs = pickle.loads((Path(job) / "job.pkl").read_bytes())
    result = function(**kwargs)
    if is_main_process():
        (Path(job) / "result.pkl").write_bytes(pickle.dumps(result))


if __name__ == "__main__":
    main()
