"""Every bad input gets one clear error naming what is wrong, before any compute."""

import copy
import json

import pytest
import yaml

from agentark_utils.config import ParamsError, load_params, validate
from agentark_utils.tasks import TASKS, DatasetError, make_questions, read_rows
from conftest import ROOT

GOOD = yaml.safe_load((ROOT / "params.yaml").read_text())


def with_change(path: str, value):
    params = copy.deepcopy(GOOD)
    *parents, key = path.split(".")
    node = params
    for part in parents:
        node = node[part]
    if value is DELETE:
        del node[key]
    else:
        node[key] = value
    return params


DELETE = object()


@pytest.mark.parametrize(
    "path, value, message",
    [
        ("debate.n_agents", 0, "debate.n_agents: Input should be greater than or equal to 1"),
        ("debate.rounds", 0, "debate.rounds: Input should be greater than or equal to 1"),
        ("debate.rounds", "two", "debate.rounds: Input should be a valid integer"),
        ("debate.temperature", -0.1, "debate.temperature: Input should be greater than or equal to 0"),
        ("debate.max_new_tokens", 0, "debate.max_new_tokens: Input should be greater than or equal to 1"),
        ("debate.self_consistency_samples", 0, "debate.self_consistency_samples"),
        ("debate.chunk_size", -1, "debate.chunk_size"),
        ("debate.n_agnets", 3, "debate.n_agnets: Extra inputs are not permitted"),
        ("debate", DELETE, "debate: Field required"),
        ("data.task", "gsm9k", "data.task: unknown task 'gsm9k'"),
        ("data.n_test", 0, "data.n_test: Input should be greater than or equal to 1"),
        ("data.n_train", -5, "data.n_train"),
        ("model.backend", "tgi", "model.backend: Input should be 'hf', 'vllm' or 'openai'"),
        ("model.dtype", "fp8", "model.dtype"),
        ("model.device", "gpu", "model.device: unknown device 'gpu'"),
        ("model.batch_size", 0, "model.batch_size"),
        ("model.teacher", "", "model.teacher: String should have at least 1 character"),
        ("model.trust_remote_code", "maybe", "model.trust_remote_code: Input should be a valid boolean"),
        ("model.backend", "openai", "backend 'openai' needs openai_base_url"),
        ("model.openai_base_url", ["http://a:8000/v1", "http://b:8000/v1", "http://a:8000/v1"],
         "model.openai_base_url: a URL given twice: ['http://a:8000/v1']"),
        ("model.openai_base_url", ["http://a:8000/v1", " "], "model.openai_base_url: an empty URL"),
        ("model.launcher", "  ", "model.launcher: an empty launcher command"),
        ("model.launcher", 'torchrun "--nproc 2', "model.launcher: not a shell command line: No closing quotation"),
        ("extraction.k", 4, "extraction.k: Input should be 1, 2 or 3"),
        ("extraction.selector", "gpt", "extraction.selector"),
        ("sft.learning_rate", 0, "sft.learning_rate: Input should be greater than 0"),
        ("sft.lora_r", -1, "sft.lora_r"),
        ("evaluation", DELETE, "evaluation: Field required"),
        ("scaling.fractions", [0.5, 1.0], "scaling.fractions: each fraction must be in (0, 1)"),
        ("scaling.fractions", [], "scaling.fractions: List should have at least 1 item"),
        ("open_ended.tasks", ["squad"], "open_ended.tasks: unknown open-ended task(s) ['squad']"),
        ("open_ended.tasks", ["qmsum"], "qmsum is not on the hub in its own format: give paths.qmsum"),
        ("open_ended.paths", {"squad": "params.yaml"}, "unknown open-ended task(s) in paths: ['squad']"),
        ("scaling.agents", [1, 4], "scaling.agents: each agent count must be at least 2"),
        ("scaling.strategies", ["pad"], "scaling.strategies.0: Input should be 'rsft', 'da', 'answer_only' or 'cot'"),
        ("grpo.group_size", 1, "grpo.group_size: Input should be greater than or equal to 2"),
        ("grpo.batch_size", 6, "batch_size (6) must be a multiple of group_size (4)"),
        ("grpo.aggregation", "median", "grpo.aggregation: Input should be 'mean', 'min', 'softmin' or 'last'"),
        ("grpo.epsilon", 1.5, "grpo.epsilon: Input should be less than 1"),
        ("grpo.answer_reward_weight", -1, "grpo.answer_reward_weight"),
        ("grpo.prm_reward_weight", 0, "both 0: nothing to optimise"),
        ("prm.tau", 0, "prm.tau: Input should be greater than 0"),
        ("prm.stage1_steps", -1, "prm.stage1_steps"),
        ("prm", DELETE, "prm: Field required"),
        ("data.ood_tasks", ["equations", "poetry"], "data.ood_tasks: unknown task(s) ['poetry']"),
        ("data.ood_tasks", ["arith_mix"], "data: ood_tasks: 'arith_mix' is the training task"),
        ("robustness.perturbations", ["typos"], "robustness.perturbations: unknown perturbation(s) ['typos']"),
        ("robustness.perturbations", [], "robustness.perturbations: List should have at least 1 item"),
        ("pad_validation.n", 0, "pad_validation.n: Input should be greater than or equal to 1"),
        ("pad_validation.learning_rates", [2e-6, 0], "pad_validation.learning_rates: each learning rate must be > 0"),
        ("pad_validation", DELETE, "pad_validation: Field required"),
    ],
)
def test_bad_params_name_the_key(path, value, message):
    with pytest.raises(ParamsError) as error:
        validate(with_change(path, value), source="params.yaml")
    assert message in str(error.value)
    assert str(error.value).startswith("params.yaml:")


def test_openai_base_url_takes_one_url_or_a_list():
    for urls in ("http://127.0.0.1:8000/v1", ["http://10.0.0.1:8000/v1", "http://10.0.0.2:8000/v1"]):
        params = with_change("model.backend", "openai")
        params["model"]["openai_base_url"] = urls
        assert validate(params).model.openai_base_url == urls
    params = with_change("model.backend", "openai")
    params["model"]["openai_base_url"] = []
    with pytest.raises(ParamsError, match="backend 'openai' needs openai_base_url: a URL or a list"):
        validate(params)


def test_every_bad_key_is_reported_at_once():
    params = with_change("debate.n_agents", 0)
    params["debate"]["rounds"] = 0
    with pytest.raises(ParamsError, match="2 invalid parameter"):
        validate(params)


def test_a_stage_validates_the_sections_it_receives_and_no_other():
    from agentark_utils.config import validate_sections

    params = yaml.safe_load((ROOT / "params.yaml").read_text())
    cfg = validate_sections({"model": params["model"], "sft": params["sft"]})
    assert set(type(cfg).model_fields) == {"model", "sft"} and cfg.sft.learning_rate == params["sft"]["learning_rate"]
    with pytest.raises(ParamsError, match=r"unknown params section\(s\) \['sfft'\]"):
        validate_sections({"model": params["model"], "sfft": params["sft"]})
    with pytest.raises(ParamsError, match=r"notebook parameters: 1 invalid parameter\(s\):\n  - sft.epochs"):
        validate_sections({"model": params["model"], "sft": {**params["sft"], "epochs": -1}})
    with pytest.raises(ParamsError, match="expected a mapping of sections, got list"):
        validate_sections(["model", "sft"])


def test_params_file_errors(tmp_path):
    with pytest.raises(ParamsError, match="no such params file"):
        load_params(tmp_path / "missing.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("model: [unclosed\n")
    with pytest.raises(ParamsError, match="not valid YAML"):
        load_params(bad)
    bad.write_text("- a list\n")
    with pytest.raises(ParamsError, match="expected a mapping"):
        load_params(bad)


def test_shipped_params_are_valid():
    assert load_params(ROOT / "params.yaml").model.teacher  # the default runs here
    # the paper profile is for a GPU node (its launcher need not be on this PATH): the schema only
    assert load_params(ROOT / "profiles/paper.yaml", check_machine=False).model.teacher


def test_notebook_parameters_match_params_yaml():
    """The defaults a JupyterLab user sees are the ones `dvc repro` runs."""
    from agentark_utils.stages import STAGES

    for stage in STAGES.values():
        notebook, sections = stage.notebook.removeprefix("notebooks/"), stage.sections
        nb = json.loads((ROOT / "notebooks" / notebook).read_text())
        cell = next(c for c in nb["cells"] if "parameters" in c["metadata"].get("tags", []))
        namespace: dict = {}
        exec("".join(cell["source"]), namespace)
        for section in sections:
            assert namespace[section] == GOOD[section], (
                f"{notebook}: section {section} differs from params.yaml; run python -m agentark_utils.stages sync-notebooks")


MEDMCQA_ROW = {"id": "x1", "question": "Q?", "opa": "a", "opb": "b", "opc": "c", "opd": "d", "cop": 1}


@pytest.mark.parametrize(
    "task, rows, message",
    [
        ("gsm8k", [{"answer": "#### 3"}], "row 0: missing question"),
        ("gsm8k", [{"question": "  ", "answer": "#### 3"}], "row 0: empty question"),
        ("gsm8k", [{"question": "Q", "answer": "three"}], "row 0: GSM8K answer has no '####'"),
        ("gsm8k", [{"question": "Q", "answer": "#### "}], "row 0: empty answer"),
        ("metamathqa", [{"query": "Q", "response": "It is 4."}], "no 'The answer is:' line"),
        ("medmcqa", [MEDMCQA_ROW, MEDMCQA_ROW], "row 1: duplicate id 'x1'"),
        ("medmcqa", [{**MEDMCQA_ROW, "cop": -1}], "'cop' must be 0-3"),
        ("medmcqa", [{**MEDMCQA_ROW, "opc": ""}], "needs >= 2 non-empty choices"),
        ("math500", [{"problem": "Q", "answer": None, "unique_id": "u"}], "row 0: missing answer"),
    ],
)
def test_bad_dataset_rows_name_the_row(task, rows, message):
    with pytest.raises(DatasetError, match=message):
        make_questions(TASKS[task], rows, "fixture")


def test_choice_answer_must_be_one_of_the_choices():
    from agentark_utils.tasks import TaskSpec

    spec = TaskSpec("mc", "test", "choice")
    with pytest.raises(DatasetError, match="answer 'E' is not one of the choices ABCD"):
        make_questions(spec, [{"question": "Q", "answer": "E", "choices": ["a", "b", "c", "d"]}], "mc")


def test_bad_dataset_files(tmp_path):
    with pytest.raises(DatasetError, match="no such dataset file"):
        read_rows(tmp_path / "nope.jsonl")
    latin1 = tmp_path / "latin1.jsonl"
    latin1.write_bytes('{"question": "caf\xe9"}\n'.encode("latin-1"))
    with pytest.raises(DatasetError, match="not UTF-8"):
        read_rows(latin1)
    broken = tmp_path / "broken.jsonl"
    broken.write_text('{"question": "a"}\n{"question": \n')
    with pytest.raises(DatasetError, match="line 2: not valid JSON"):
        read_rows(broken)


def test_paper_profile_is_valid():
    params = load_params(ROOT / "profiles" / "paper.yaml", check_machine=False)
    assert (params.debate.n_agents, params.debate.rounds) == (5, 3) and params.model.backend == "vllm"
    assert params.grpo.batch_size % params.grpo.group_size == 0


@pytest.mark.parametrize("module", ["stages", "calibration"])
def test_a_bad_params_file_ends_a_command_with_its_message_not_a_traceback(module, tmp_path):
    """`python -m agentark_utils.stages debate` on a bad params.yaml: one message naming the key (it
    raised ParamsError with a traceback before)."""
    import importlib

    bad = tmp_path / "params.yaml"
    bad.write_text(yaml.safe_dump({**yaml.safe_load((ROOT / "params.yaml").read_text()),
                                   "model": {"teacher": "x", "student": "x", "batch_size": -1}}))
    args = ["debate", "--params", str(bad)] if module == "stages" else ["run", "--params", str(bad)]
    with pytest.raises(SystemExit) as exited:
        importlib.import_module(f"agentark_utils.{module}").main(args)
    assert isinstance(exited.value.code, str) and "model.batch_size" in exited.value.code


@pytest.mark.parametrize(
    "path, value, message",
    [
        ("model.launcher", "no-such-launcher launch", "model.launcher: launcher command 'no-such-launcher' is not on PATH"),
        ("open_ended.paths", {"qmsum": "no/such.jsonl"}, "open_ended.paths.qmsum: no such file 'no/such.jsonl'"),
        ("data.ood_paths", {"equations": "no/such.jsonl"}, "data.ood_paths.equations: no such file 'no/such.jsonl'"),
    ],
)
def test_what_this_machine_lacks_fails_loading_not_the_schema(tmp_path, path, value, message):
    """The stages (`load_params`) refuse a launcher or a file this machine lacks, naming the key; the
    schema alone does not look at the machine, so a notebook or a report validates anywhere."""
    raw = with_change(path, value)
    validate(raw)
    params_file = tmp_path / "params.yaml"
    params_file.write_text(yaml.safe_dump(raw))
    with pytest.raises(ParamsError) as error:
        load_params(params_file)
    assert str(error.value).startswith(f"{params_file}: 1 parameter(s) this machine cannot satisfy:")
    assert message in str(error.value)
    assert load_params(params_file, check_machine=False).model.teacher
