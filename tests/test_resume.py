"""Killing the debate mid-run (SIGKILL) loses no finished question and duplicates none."""

import signal
import subprocess
import sys
import time

from agentark_utils.store import read_jsonl

SCRIPT = """
import sys
from agentark_utils import backends, debate, tasks
from agentark_utils.config import DebateParams
model_dir, path = sys.argv[1], sys.argv[2]
backend = backends.HFBackend(model_dir, dtype="float32", device="cpu", batch_size=8)
_, test = tasks.load_task("add_sub", 0, 10, seed=0)
cfg = DebateParams(n_agents=2, rounds=2, temperature=0.7, max_new_tokens=48, chunk_size=1, seed=0, early_stop=False)
debate.run_debate({"test": test}, backend, cfg, path, "run")
"""


def run(model_dir, path):
    return subprocess.Popen([sys.executable, "-c", SCRIPT, str(model_dir), str(path)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def comparable(records):
    return [(r["id"], r["single"]["text"], [[c["text"] for c in rnd] for rnd in r["debate"]["rounds"]])
            for r in records]


def test_sigkill_then_rerun_keeps_every_finished_question_once(tiny_model_dir, tmp_path):
    path = tmp_path / "records.jsonl"
    proc = run(tiny_model_dir, path)
    deadline = time.time() + 240
    while (not path.exists() or len(read_jsonl(path)) < 2) and time.time() < deadline and proc.poll() is None:
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert proc.returncode == -signal.SIGKILL, "the run finished before it could be killed"
    before = read_jsonl(path)
    assert 2 <= len(before) < 10

    assert run(tiny_model_dir, path).wait() == 0
    after = read_jsonl(path)
    ids = [r["id"] for r in after]
    assert len(ids) == 10 and len(set(ids)) == 10
    assert after[: len(before)] == before  # finished records untouched

    # and the resumed run is the run that would have happened without the kill
    clean = tmp_path / "clean.jsonl"
    assert run(tiny_model_dir, clean).wait() == 0
    assert comparable(read_jsonl(clean)) == comparable(after)


TRAIN = """
import sys, json
from agentark_utils.config import SFTParams
from agentark_utils.distill import train_sft
from agentark_utils.extraction import Example
model_dir, out = sys.argv[1], sys.argv[2]
ex = [Example(f"q{i}", f"What is {i} + 1?", f"Final Answer: {i + 1}", 1.0, "t") for i in range(16)]
result = train_sft(ex, model_dir, out, SFTParams(learning_rate=1e-3, epochs=6, batch_size=2, save_steps=2), device="cpu")
print(json.dumps(result.summary()))
"""


def test_killed_training_resumes_from_its_last_checkpoint(tiny_model_dir, tmp_path):
    import json
    from pathlib import Path

    out = tmp_path / "student"
    ckpt = Path(str(out) + ".checkpoints")
    proc = subprocess.Popen([sys.executable, "-c", TRAIN, str(tiny_model_dir), str(out)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 240
    while not list(ckpt.glob("checkpoint-*/trainer_state.json")) and time.time() < deadline and proc.poll() is None:
        time.sleep(0.05)
    time.sleep(0.3)  # let the checkpoint finish writing its files
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert proc.returncode == -signal.SIGKILL, "training finished before it could be killed"
    assert not out.exists()  # no half-saved model is ever taken as the result
    # whatever the kill hit, also leave a newer checkpoint as a kill mid-save would: no trainer state
    half = ckpt / "checkpoint-9999"
    half.mkdir(exist_ok=True)
    (half / "model.safetensors").write_bytes(b"truncated")

    done = subprocess.run([sys.executable, "-c", TRAIN, str(tiny_model_dir), str(out)], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-2000:]
    summary = json.loads(done.stdout.strip().splitlines()[-1])
    assert Path(summary["resumed_from"]).parent == ckpt and summary["resumed_from"] != str(half)
    assert (out / "model.safetensors").exists() and not ckpt.exists()
