"""The paper profile (profiles/paper.yaml), dry-run on CPU through the real `dvc repro`.

Nobody here has the GPUs, vLLM or the model hub the profile is written for. What can still be
checked is everything else: that every key of the profile validates, reaches the stage that reads
it and runs there. So the profile is run as written, with only the keys that name hardware, hub
data or sizes replaced (`DRY_RUN`, each one checked to exist in the profile, so a renamed key
fails here, plus `model.teacher` and `model.student`, which name the test model): the tiny test model behind a Qwen3-style chat template, the `hf` backend in fp32,
GSM8K and MedMCQA from fixture files in their own formats, and a few questions and tokens.
The protocol stays the paper's: 5 agents, 3 rounds, k = 3, thinking on.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from conftest import FIXTURES, QWEN3_STYLE_TEMPLATE, ROOT

STUDENTS = ("rsft", "da", "pad", "answer_only", "cot")

# dotted key -> dry-run value; everything else is the profile's
DRY_RUN = {
    "model.backend": "hf",  # vLLM needs a GPU
    "model.dtype": "float32",
    "model.device": "cpu",
    "model.batch_size": 16,
    "model.launcher": None,  # FSDP needs GPUs (tests/test_launch.py runs its config on CPU)
    "data.path": str(FIXTURES / "gsm8k.jsonl"),
    "data.ood_paths": {"medmcqa": str(FIXTURES / "medmcqa.jsonl")},
    "data.n_train": 4,
    "data.n_test": 2,
    "data.n_ood": 2,
    "debate.max_new_tokens": 12,  # "Final Answer: 42" and its stop token
    "debate.summarizer_max_new_tokens": 12,
    "sft.bf16": False,
    "sft.max_length": 256,
    "prm.stage1_steps": 2,
    "prm.stage2_steps": 1,
    "prm.bf16": False,
    "prm.max_length": 256,
    "grpo.steps": 1,
    "grpo.batch_size": 8,  # one group of the profile's 8 completions
    "grpo.max_completion_length": 8,
    "grpo.bf16": False,
    "evaluation.max_new_tokens": 12,
    "evaluation.bootstrap_samples": 100,
    "pad_validation.n": 2,
    "open_ended.paths": {task: str(FIXTURES / f"{task}.jsonl") for task in ("truthfulqa", "hotpotqa", "qasper")},
    "open_ended.n": 1,
    "open_ended.max_new_tokens": 8,
    "open_ended.bertscore_model": None,  # roberta-large is on the hub
}


def dry_run_params(model_dir: Path) -> dict:
    params = yaml.safe_load((ROOT / "profiles" / "paper.yaml").read_text())
    for key, value in {**DRY_RUN, "model.teacher": str(model_dir), "model.student": str(model_dir)}.items():
        section, name = key.split(".")
        assert name in params[section], f"profiles/paper.yaml has no {key}: update DRY_RUN"
        params[section][name] = value
    return params


def _wrong(answer: str) -> str:
    return "ABCD"[("ABCD".index(answer) + 1) % 4] if answer in tuple("ABCD") else f"{float(answer) + 1:g}"


@pytest.fixture(scope="module")
def qwen3_style_model_dir(tiny_model_dir, tmp_path_factory) -> Path:
    """The tiny model behind a Qwen3-style chat template, taught to end every dry-run question with
    a Final Answer line, as often right as wrong. A random model states no answer, so no question
    would have the correct and the wrong traces that extraction and the PRM need (~20 s)."""
    import torch
    from transformers import AutoTokenizer

    from agentark_utils.backends import HFBackend
    from agentark_utils.config import DataParams
    from agentark_utils.prompts import question_prompt
    from agentark_utils.tasks import load_splits

    path = tmp_path_factory.mktemp("qwen3-style")
    shutil.copytree(tiny_model_dir, path, dirs_exist_ok=True)
    tokenizer = AutoTokenizer.from_pretrained(path)
    tokenizer.chat_template = QWEN3_STYLE_TEMPLATE
    tokenizer.save_pretrained(path)

    backend = HFBackend(str(path), dtype="float32", device="cpu", batch_size=16, enable_thinking=True)
    questions = [q for qs in load_splits(DataParams(**dry_run_params(path)["data"])).values() for q in qs]
    rows = []
    for q in questions:
        prompt = backend._prompt_ids([{"role": "user", "content": question_prompt(q)}])
        for answer in (q.answer, _wrong(q.answer)):
            rows.append((prompt, tokenizer(f"Final Answer: {answer}", add_special_tokens=False)["input_ids"]
                         + backend.stop_ids[:1]))
    width = max(len(p) + len(t) for p, t in rows)
    pad = tokenizer.pad_token_id
    ids = torch.tensor([p + t + [pad] * (width - len(p) - len(t)) for p, t in rows])
    labels = torch.tensor([[-100] * len(p) + t + [-100] * (width - len(p) - len(t)) for p, t in rows])
    mask = torch.tensor([[1] * (len(p) + len(t)) + [0] * (width - len(p) - len(t)) for p, t in rows])
    model = backend.model.train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3)
    torch.manual_seed(0)
    for _ in range(150):
        optimizer.zero_grad()
        hidden = model.model(input_ids=ids, attention_mask=mask).last_hidden_state[:, :-1]
        targets = labels[:, 1:] != -100  # the head only where a target token is predicted: fast
        torch.nn.functional.cross_entropy(model.lm_head(hidden[targets]), labels[:, 1:][targets]).backward()
        optimizer.step()
    model.eval().save_pretrained(path)
    return path


def test_dry_run_params_keep_the_papers_protocol():
    params = dry_run_params(Path("model"))
    assert (params["debate"]["n_agents"], params["debate"]["rounds"], params["extraction"]["k"]) == (5, 3, 3)
    assert params["data"]["task"] == "gsm8k" and params["data"]["ood_tasks"] == ["medmcqa"]
    assert params["model"]["enable_thinking"] is True


def test_paper_profile_runs_through_dvc_repro_on_cpu(qwen3_style_model_dir, tmp_path):
    """`dvc repro` of the repo's own dvc.yaml and notebooks under the dry-run profile: every stage runs."""
    project = tmp_path / "project"
    project.mkdir()
    shutil.copy(ROOT / "dvc.yaml", project)
    for name in ("notebooks", "agentark_utils"):
        shutil.copytree(ROOT / name, project / name, ignore=shutil.ignore_patterns("__pycache__", ".ipynb_checkpoints"))
    (project / "params.yaml").write_text(yaml.safe_dump(dry_run_params(qwen3_style_model_dir)))
    (project / "results/calibration").mkdir(parents=True)  # the calibration stage reads the recorded sweep
    shutil.copy(ROOT / "results/calibration/experiments.json", project / "results/calibration")
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"}
    dvc = [sys.executable, "-m", "dvc"]
    subprocess.run([*dvc, "init", "--no-scm", "-q"], cwd=project, check=True, env=env)
    done = subprocess.run([*dvc, "repro"], cwd=project, env=env, capture_output=True, text=True)
    assert done.returncode == 0, done.stdout[-4000:] + done.stderr[-4000:]

    stages = yaml.safe_load((ROOT / "dvc.yaml").read_text())["stages"]
    locked = yaml.safe_load((project / "dvc.lock").read_text())["stages"]
    expected = {f"{name}@{item}" for name, stage in stages.items() for item in stage.get("foreach", [])}
    expected |= {name for name, stage in stages.items() if "foreach" not in stage}
    assert set(locked) == expected  # every stage ran

    records = [json.loads(line) for line in (project / "results/debate/records.jsonl").read_text().splitlines()]
    assert {r["split"] for r in records} == {"train", "test", "ood:medmcqa"}
    assert all(len(round_) == 5 for r in records for round_ in r["debate"]["rounds"])  # five agents a round
    assert all(1 <= len(r["debate"]["rounds"]) <= 3 for r in records)
    accuracy = json.loads((project / "results/eval/metrics.json").read_text())["accuracy"]
    assert set(accuracy) == {"base", *STUDENTS, "single agent", "single agent (sampled)", "self-consistency",
                             "debate (final answer)", "debate (majority)"}
    assert all(set(by_set) == {"gsm8k (in-domain)", "medmcqa (out-of-domain)"} for by_set in accuracy.values())
    open_ended = json.loads((project / "results/open_ended/metrics.json").read_text())
    assert {key.split(" | ")[1] for key in open_ended} == {"truthfulqa", "hotpotqa", "qasper"}
