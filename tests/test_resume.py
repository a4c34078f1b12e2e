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
    while len(read_jsonl(path)) < 2 and time.time() < deadline and proc.poll() is None:
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
