"""Notebooks where people run them: from their own folder, in a real JupyterLab; and the stage log."""

import asyncio
import json
import os
import secrets
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
import uuid
from contextlib import redirect_stderr
from io import StringIO

import nbformat
import pytest
import yaml

from agentark_utils.project import enter_root, find_root
from agentark_utils.stages import KERNEL
from conftest import ROOT


def test_find_root_walks_up_to_dvc_yaml(tmp_path, monkeypatch):
    (tmp_path / "dvc.yaml").write_text("stages: {}\n")
    (tmp_path / "notebooks" / "deep").mkdir(parents=True)
    assert find_root(tmp_path / "notebooks" / "deep") == tmp_path.resolve()
    monkeypatch.chdir(tmp_path / "notebooks")
    assert enter_root() == tmp_path.resolve() and os.getcwd() == str(tmp_path.resolve())
    # outside a project nothing moves
    outside = tmp_path.parent / f"{tmp_path.name}-outside"
    outside.mkdir()
    monkeypatch.chdir(outside)
    assert find_root() is None and enter_root() == outside.resolve() and os.getcwd() == str(outside.resolve())


def make_project(tmp_path):
    """A project laid out as a clone is: dvc.yaml at the root, the extract notebook in notebooks/,
    the debate stage's records in results/debate (hand-made: two training questions to keep)."""
    from agentark_utils.store import append_jsonl
    from test_extraction import R, record

    root = tmp_path / "project"
    (root / "notebooks").mkdir(parents=True)
    shutil.copy(ROOT / "dvc.yaml", root)
    shutil.copy(ROOT / "notebooks" / "02_extract.ipynb", root / "notebooks")
    append_jsonl(root / "results" / "debate" / "records.jsonl", [
        record([R("wrong", "correct", "correct"), R("correct", "correct", "correct")], "a", single="correct"),
        record([R("correct", "correct", "wrong")], "b"),
        record([R("correct", "wrong", "wrong")], "c"),
    ])
    return root


def assert_extracted_at_the_root(root):
    stats = json.loads((root / "results" / "extract" / "metrics.json").read_text())
    assert stats["n_kept"] == 2 and stats["corrective_traces"] == 1
    assert not (root / "notebooks" / "results").exists()


def test_a_notebook_run_from_its_own_folder_reads_and_writes_the_project_paths(tmp_path):
    """JupyterLab starts a kernel in the notebook's folder; the notebook's default (relative) paths
    still mean the project root's results/."""
    import papermill

    root = make_project(tmp_path)
    papermill.execute_notebook(str(root / "notebooks" / "02_extract.ipynb"), str(tmp_path / "executed.ipynb"),
                               kernel_name=KERNEL, cwd=str(root / "notebooks"), progress_bar=False)
    assert_extracted_at_the_root(root)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class LabServer:
    """`jupyter lab` on 127.0.0.1, token auth, no browser, serving `root`; its REST and kernel APIs."""

    def __init__(self, root, workdir):
        self.port, self.token = free_port(), secrets.token_hex(16)
        self.url = f"http://127.0.0.1:{self.port}"
        self.log = workdir / "server.log"
        env = {**os.environ, "JUPYTER_RUNTIME_DIR": str(workdir / "runtime"),
               "JUPYTER_CONFIG_DIR": str(workdir / "config"), "JUPYTERLAB_SETTINGS_DIR": str(workdir / "settings")}
        self.process = subprocess.Popen(
            [sys.executable, "-m", "jupyterlab", "--no-browser", "--allow-root", "--ServerApp.ip=127.0.0.1",
             f"--ServerApp.port={self.port}", "--ServerApp.port_retries=0", f"--IdentityProvider.token={self.token}",
             f"--ServerApp.root_dir={root}", "--KernelManager.transport_encryption=auto"],
            stdout=open(self.log, "w"), stderr=subprocess.STDOUT, env=env)
        deadline = time.monotonic() + 30
        while True:
            try:
                assert self.request("GET", "/api/status")["started"]
                return
            except OSError:
                if self.process.poll() is not None or time.monotonic() > deadline:
                    self.stop()
                    raise RuntimeError(f"JupyterLab did not start:\n{self.log.read_text()[-3000:]}")
                time.sleep(0.5)

    def request(self, method, path, body=None):
        request = urllib.request.Request(self.url + path, method=method,
                                         data=None if body is None else json.dumps(body).encode(),
                                         headers={"Authorization": f"token {self.token}",
                                                  "Content-Type": "application/json"})
        with urllib.request.urlopen(request, timeout=10) as response:
            text = response.read()
            return json.loads(text) if text else None

    async def run_cells(self, kernel_id, cells, timeout=60):
        """Execute each cell through the kernel's websocket channel, as JupyterLab does; stop at an error.
        Returns the stdout of every cell."""
        from tornado.httpclient import HTTPRequest
        from tornado.websocket import websocket_connect

        session = uuid.uuid4().hex
        socket_ = await websocket_connect(HTTPRequest(
            f"ws://127.0.0.1:{self.port}/api/kernels/{kernel_id}/channels?session_id={session}",
            headers={"Authorization": f"token {self.token}"}))
        printed = []
        try:
            for code in cells:
                msg_id = uuid.uuid4().hex
                socket_.write_message(json.dumps({
                    "channel": "shell", "buffers": [], "metadata": {}, "parent_header": {},
                    "header": {"msg_id": msg_id, "msg_type": "execute_request", "session": session,
                               "username": "test", "version": "5.3", "date": ""},
                    "content": {"code": code, "silent": False, "store_history": True, "user_expressions": {},
                                "allow_stdin": False, "stop_on_error": True}}))
                out, replied, idle = [], False, False
                # The reply (shell channel) and the output (iopub) are not ordered between channels:
                # a cell is done once it has replied and the kernel has gone idle after its output.
                while not (replied and idle):
                    message = json.loads(await asyncio.wait_for(socket_.read_message(), timeout))
                    if message["parent_header"].get("msg_id") != msg_id:
                        continue
                    kind, content = message["header"]["msg_type"], message["content"]
                    if kind == "stream" and content["name"] == "stdout":
                        out.append(content["text"])
                    if kind == "status" and content["execution_state"] == "idle":
                        idle = True
                    if kind == "execute_reply":
                        assert content["status"] == "ok", f"{code}\n-> {content.get('ename')}: {content.get('evalue')}"
                        replied = True
                printed.append("".join(out))
        finally:
            socket_.close()
        return printed

    def stop(self):
        try:
            self.request("POST", "/api/shutdown")
        except OSError:
            pass
        try:
            self.process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()


def test_jupyterlab_runs_a_notebook_through_its_kernel_api(tmp_path):
    """A real `jupyter lab` server opens the extract notebook as a session (its kernel starts in
    notebooks/, as when a person opens it) and runs its cells over the kernel websocket."""
    pytest.importorskip("jupyterlab", reason="JupyterLab is not installed: pip install -e '.[dev]' (make setup)")
    root = make_project(tmp_path)
    server = LabServer(root, tmp_path)
    try:
        assert KERNEL in server.request("GET", "/api/kernelspecs")["kernelspecs"]
        session = server.request("POST", "/api/sessions", {"path": "notebooks/02_extract.ipynb", "type": "notebook",
                                                            "name": "02_extract.ipynb", "kernel": {"name": KERNEL}})
        notebook = nbformat.read(root / "notebooks" / "02_extract.ipynb", as_version=4)
        cells = ["import os; print(os.getcwd())"] + [c.source for c in notebook.cells if c.cell_type == "code"]
        printed = asyncio.run(server.run_cells(session["kernel"]["id"], cells))
        assert printed[0].strip() == str((root / "notebooks").resolve())  # where JupyterLab starts it
        assert_extracted_at_the_root(root)
        assert "--- completion:" in printed[-1]  # the last cell shows an R-SFT example
        server.request("DELETE", f"/api/sessions/{session['id']}")
        assert server.request("GET", "/api/kernels") == []
    finally:
        server.stop()
    assert server.process.returncode is not None


# --- the log of a stage, as `make repro` prints it ---------------------------------------------

NOISE = {"IProgress not found": "tqdm.auto without ipywidgets",
         "without encryption": "the kernel's transport warning",
         "\x1b[": "cursor-control escapes of nested progress bars"}


def test_a_generation_bar_inside_another_writes_no_cursor_escapes_off_a_terminal(tiny_model_dir):
    from tqdm import tqdm

    from agentark_utils.backends import HFBackend

    backend = HFBackend(str(tiny_model_dir), dtype="float32", device="cpu", batch_size=2)
    log = StringIO()  # not a terminal, like a notebook's stderr or a log file
    with redirect_stderr(log):
        outer = tqdm(total=1, desc="questions")
        backend.generate([[{"role": "user", "content": "1 + 1 ="}]] * 2, temperature=0.0, max_new_tokens=2, seed=0)
        outer.update(1)
        outer.close()
    assert "generate" in log.getvalue() and "\x1b" not in log.getvalue()


def test_stage_log_is_clean(tmp_path, tiny_model_dir):
    """The debate stage (its question bar with the backend's bars inside), run as dvc.yaml runs it."""
    from test_notebooks import tiny_params

    params = yaml.safe_load(open(tiny_params(tmp_path, tiny_model_dir)))
    params["data"].update(n_train=1, n_test=1)
    params["debate"].update(rounds=1, self_consistency_samples=1)
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params))
    run = subprocess.run([sys.executable, "-m", "agentark_utils.stages", "debate", "--params",
                          str(tmp_path / "params.yaml"), "--out-dir", str(tmp_path / "debate")],
                         capture_output=True, text=True, timeout=300, cwd=ROOT)
    log = run.stdout + run.stderr
    assert run.returncode == 0, log[-3000:]
    assert "questions" in log and "debate round 1" in log  # the kernel's stderr does reach the log
    assert not [why for text, why in NOISE.items() if text in log], log[-3000:]
