"""Typed parameters for every stage, one class per `params.yaml` section.

Everything is validated up front (all sections, whatever stage runs) so that a typo in
`params.yaml` fails in a second with a message naming the key, not after an hour of generation.
The schema checks only the values; what a file asks of the machine it runs on (a launcher on PATH,
local data files) is checked by `machine_problems`, which `load_params` runs for the stages, so the
same parameters validate anywhere (a notebook opened on another machine, a report of old runs).
"""

from __future__ import annotations

import functools
from pathlib import Path
from typing import Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, create_model, field_validator, model_validator


# The registries' names, so that a bad name fails validation before any compute. They are listed
# here, not imported: config is the bottom layer, and the modules that build the registries sit
# above it (tasks.TASKS, robustness.PERTURBATIONS, open_ended.OPEN_TASKS; open_ended reaches
# backends, which imports config). A names-only copy is simpler than moving the registries down;
# tests/test_layers.py asserts each table equals its registry, so a new entry fails the tests
# until it is listed here too.
TASK_NAMES = frozenset({"add_sub", "arith_mix", "chain_sum", "equations", "gsm8k", "math500", "medmcqa",
                        "metamathqa", "mul"})
PERTURBATION_NAMES = frozenset({"distractor", "peer_hint", "renumber"})
OPEN_TASK_NAMES = frozenset({"hotpotqa", "qasper", "qmsum", "truthfulqa"})
OPEN_TASKS_OFF_HUB = frozenset({"qmsum"})  # not on the hub in their own format: they need open_ended.paths


class ParamsError(ValueError):
    """A bad parameter: the message names the file, the key and what is wrong."""


class _Section(BaseModel):
    # extra="forbid": a misspelt key is an error, not a silently ignored default.
    model_config = ConfigDict(extra="forbid", frozen=True)


class ModelParams(_Section):
    """Shared section `model`: which models generate, on which backend and device."""

    teacher: str = Field(min_length=1)
    student: str = Field(min_length=1)
    backend: Literal["hf", "vllm", "openai"] = "hf"
    dtype: Literal["bfloat16", "float16", "float32", "auto"] = "float32"  # fp32 on CPU (faster here); bf16 on GPUs
    device: str = "auto"
    batch_size: int = Field(default=64, ge=1)  # hf: sequences per batch; openai: requests in flight per endpoint
    trust_remote_code: bool = False
    openai_base_url: str | list[str] | None = None  # one server, or several replicas that share the requests
    tensor_parallel_size: int = Field(default=1, ge=1)
    launcher: str | None = None  # a command prefix that runs SFT/PRM/GRPO in several processes (launch.py)
    # Reasoning models' thinking mode, passed to the chat template (Qwen3: enable_thinking); None:
    # the template's default. Only the answer after </think> is graded, shown to peers and distilled.
    enable_thinking: bool | None = None

    @field_validator("launcher")
    @classmethod
    def _a_command(cls, value: str | None) -> str | None:
        import shlex

        if value is None:
            return value
        try:
            words = shlex.split(value)
        except ValueError as error:  # an unclosed quote
            raise ValueError(f"not a shell command line: {error}") from None
        if not words:
            raise ValueError("an empty launcher command; null runs training in this process")
        return value

    @field_validator("device")
    @classmethod
    def _known_device(cls, value: str) -> str:
        if value in {"auto", "cpu", "cuda", "mps"} or value.startswith("cuda:"):
            return value
        raise ValueError(f"unknown device {value!r}; use auto, cpu, cuda, cuda:N or mps")

    @field_validator("openai_base_url")
    @classmethod
    def _distinct_urls(cls, value: str | list[str] | None) -> str | list[str] | None:
        urls = [value] if isinstance(value, str) else value or []
        if any(not url.strip() for url in urls):
            raise ValueError("an empty URL")
        if len(set(urls)) < len(urls):
            raise ValueError(f"a URL given twice: {sorted({u for u in urls if urls.count(u) > 1})}")
        return value

    @model_validator(mode="after")
    def _openai_needs_url(self) -> "ModelParams":
        if self.backend == "openai" and not self.openai_base_url:
            raise ValueError("backend 'openai' needs openai_base_url: a URL or a list of them "
                             "(e.g. http://127.0.0.1:8000/v1)")
        return self


class DataParams(_Section):
    """Shared section `data`: the task, its train/test split, the out-of-domain test families and the seed."""

    task: str
    path: str | None = None
    n_train: int = Field(ge=0)
    n_test: int = Field(ge=1)
    ood_tasks: list[str] = Field(default_factory=list)  # other task families, tested only: out-of-domain
    n_ood: int = Field(default=64, ge=1)
    # out-of-domain task -> local file in the dataset's own format (hub sets on a machine without the hub)
    ood_paths: dict[str, str] = Field(default_factory=dict)
    seed: int = 0

    @field_validator("ood_tasks")
    @classmethod
    def _known_ood_tasks(cls, value: list[str]) -> list[str]:
        return _all_known(value, TASK_NAMES, "task(s)")

    @model_validator(mode="after")
    def _ood_is_another_task(self) -> "DataParams":
        if self.task in self.ood_tasks:
            raise ValueError(f"ood_tasks: {self.task!r} is the training task, not out-of-domain")
        stray = sorted(set(self.ood_paths) - set(self.ood_tasks))
        if stray:
            raise ValueError(f"ood_paths: {stray} not in ood_tasks {self.ood_tasks}")
        return self

    @field_validator("task")
    @classmethod
    def _known_task(cls, value: str) -> str:
        if value not in TASK_NAMES:
            raise ValueError(f"unknown task {value!r}; known tasks: {', '.join(sorted(TASK_NAMES))}")
        return value


class DebateParams(_Section):
    """Section `debate`: the paper's Phase 1 and its two baselines."""

    n_agents: int = Field(ge=1)
    rounds: int = Field(ge=1)
    temperature: float = Field(ge=0.0)
    max_new_tokens: int = Field(ge=1)
    early_stop: bool = True
    summarizer: bool = True
    # The summarizer only chooses among the agents' answers (where they disagree): a short budget.
    summarizer_max_new_tokens: int = Field(default=48, ge=1)
    peer_view: Literal["full", "final_line"] = "full"  # what an agent sees of its peers in round k > 1
    # None: match the debate's call budget, n_agents * rounds (+1 with the summarizer).
    self_consistency_samples: int | None = Field(default=None, ge=1)
    chunk_size: int = Field(default=32, ge=1)
    seed: int = 0


class ExtractionParams(_Section):
    """Section `extraction`: which debates become training examples."""

    min_correct: int = Field(default=2, ge=1)  # the paper drops questions with fewer correct agents
    k: Literal[1, 2, 3] = 3  # diverse traces per question for DA
    selector: Literal["ngram", "judge"] = "ngram"
    ngram_n: int = Field(default=2, ge=1)
    seed: int = 0


class SFTParams(_Section):
    """Section `sft`: one training budget shared by R-SFT, DA and both baselines."""

    learning_rate: float = Field(gt=0)
    epochs: float = Field(gt=0)  # passes over the questions (distill.py: the same optimizer steps for every strategy)
    batch_size: int = Field(ge=1)
    grad_accum: int = Field(default=1, ge=1)
    warmup_steps: int = Field(default=0, ge=0)  # linear warm-up, in optimizer steps (it starts at learning rate 0)
    max_length: int = Field(default=512, ge=16)
    group_by_length: bool = True  # batches of rows of similar length, in random order: less padding (distill.py)
    lora_r: int = Field(default=0, ge=0)  # 0: full fine-tuning
    lora_alpha: int = Field(default=16, ge=1)
    bf16: bool = False  # bf16 autocast: GPUs, and CPUs with AMX (README "Precision on this CPU"); fp32 elsewhere
    save_steps: int = Field(default=10, ge=1)
    seed: int = 0


class PRMParams(_Section):
    """Section `prm`: the process reward model of PAD (Strategy 3), two-stage curriculum."""

    stage1_steps: int = Field(ge=0)  # head + last block + final norm
    stage2_steps: int = Field(ge=0)  # everything
    stage1_learning_rate: float = Field(gt=0)
    stage2_learning_rate: float = Field(gt=0)
    tau: float = Field(default=0.1, gt=0)  # Eq. 7 temperature (the paper gives none; the code uses 0.1)
    ce_weight: float = Field(default=1.0, ge=0)  # weight of the added binary cross-entropy
    batch_questions: int = Field(default=2, ge=1)  # whole questions per batch: negatives come from them
    weight_decay: float = Field(default=0.1, ge=0)  # AdamW; the reference code's 0.1
    adam_beta2: float = Field(default=0.95, gt=0, lt=1)  # the reference code's 0.95
    max_length: int = Field(default=512, ge=16)
    # a forward pass's fixed cost in padded tokens: a batch's traces are split into length buckets,
    # one forward each, where that saves more padding (prm.py). On the idle 2-core CPU, 64 made PRM
    # steps 1.3-1.6x faster than one padded forward (benchmarks/training_step.py).
    bucket_cost_tokens: int = Field(default=64, ge=0)
    score_batch_size: int = Field(default=16, ge=1)  # traces per forward when scoring (held-out quality, GRPO rewards)
    bf16: bool = False  # bf16 autocast: GPUs, and CPUs with AMX (README "Precision on this CPU"); fp32 elsewhere
    save_steps: int = Field(default=5, ge=1)
    # question-level resamples for the held-out AUROC intervals (PRM, baselines, aggregations)
    bootstrap_samples: int = Field(default=1000, ge=100)
    seed: int = 0

    @model_validator(mode="after")
    def _some_training(self) -> "PRMParams":
        if self.stage1_steps + self.stage2_steps == 0:
            raise ValueError("stage1_steps + stage2_steps must be > 0")
        return self


class GRPOParams(_Section):
    """Section `grpo`: policy optimisation of the student against the PRM (Strategy 3)."""

    # optimizer steps; None: `epochs` passes over the training prompts (grpo.training_steps), so
    # that every prompt is seen whatever the number of training questions
    steps: int | None = Field(default=None, ge=1)
    epochs: int = Field(default=1, ge=1)  # used when steps is None
    group_size: int = Field(ge=2)  # completions per prompt (G); z-scored within the group
    batch_size: int = Field(ge=2)  # completions per optimizer step: a multiple of group_size
    learning_rate: float = Field(gt=0)
    beta: float = Field(default=0.001, ge=0)  # KL coefficient against the frozen start
    epsilon: float = Field(default=0.2, gt=0, lt=1)  # ratio clip
    temperature: float = Field(default=0.5, gt=0)  # rollouts
    max_completion_length: int = Field(ge=1)
    aggregation: Literal["mean", "min", "softmin", "last"] = "mean"  # PRM step scores -> one reward
    prm_reward_weight: float = Field(default=1.0, ge=0)
    answer_reward_weight: float = Field(default=0.0, ge=0)  # verifiable answer (reference code: 1.0)
    bf16: bool = False  # bf16 autocast: GPUs, and CPUs with AMX (README "Precision on this CPU"); fp32 elsewhere
    save_steps: int = Field(default=12, ge=1)
    seed: int = 0

    @model_validator(mode="after")
    def _consistent(self) -> "GRPOParams":
        if self.batch_size % self.group_size:
            raise ValueError(f"batch_size ({self.batch_size}) must be a multiple of group_size ({self.group_size})")
        if self.prm_reward_weight + self.answer_reward_weight == 0:
            raise ValueError("prm_reward_weight and answer_reward_weight are both 0: nothing to optimise")
        return self


class EvaluationParams(_Section):
    """Section `evaluation`: one greedy generation per test question."""

    max_new_tokens: int = Field(ge=1)
    # resamples for the means that are not proportions (open-ended scores, reasoning NLL);
    # accuracies get Wilson / Newcombe score intervals and need none
    bootstrap_samples: int = Field(default=1000, ge=100)
    seed: int = 0


def _all_known(names: list[str], registry: frozenset[str], what: str) -> list[str]:
    unknown = [name for name in names if name not in registry]
    if unknown:
        raise ValueError(f"unknown {what} {unknown}; known: {', '.join(sorted(registry))}")
    return names


class RobustnessParams(_Section):
    """Section `robustness`: perturbations of the in-domain test questions (robustness.py)."""

    perturbations: list[str] = Field(min_length=1)
    seed: int = 0

    @field_validator("perturbations")
    @classmethod
    def _known(cls, value: list[str]) -> list[str]:
        return _all_known(value, PERTURBATION_NAMES, "perturbation(s)")


class ScalingParams(_Section):
    """Section `scaling`: the data and agents sweeps (scaling.py); the main run is the last point of each."""

    strategies: list[Literal["rsft", "da", "answer_only", "cot"]] = Field(min_length=1)
    fractions: list[float] = Field(min_length=1)  # of the training questions; 1.0 is the main run
    agents: list[int] = Field(default_factory=list)  # debates with these many agents; debate.n_agents is the main run
    seed: int = 0

    @field_validator("agents")
    @classmethod
    def _at_least_two_agents(cls, value: list[int]) -> list[int]:
        if any(n < 2 for n in value):
            raise ValueError("each agent count must be at least 2 (extraction keeps questions with 2 correct agents)")
        return value

    @field_validator("fractions")
    @classmethod
    def _proper_fractions(cls, value: list[float]) -> list[float]:
        if any(not 0 < f < 1 for f in value):
            raise ValueError("each fraction must be in (0, 1); 1.0 is the main sft run")
        return value


class OpenEndedParams(_Section):
    """Section `open_ended`: the hub-only sets (open_ended.py); none run by default (no hub here)."""

    tasks: list[str] = Field(default_factory=list)
    paths: dict[str, str] = Field(default_factory=dict)  # task -> a local file in the dataset's own format
    n: int = Field(default=100, ge=1)
    max_new_tokens: int = Field(default=128, ge=1)
    max_context_chars: int = Field(default=6000, ge=100)
    bertscore_model: str | None = None  # e.g. roberta-large; downloads it (hub only); null: no BERTScore

    @field_validator("tasks")
    @classmethod
    def _known_tasks(cls, value: list[str]) -> list[str]:
        return _all_known(value, OPEN_TASK_NAMES, "open-ended task(s)")

    @model_validator(mode="after")
    def _paths_for_known_tasks(self) -> "OpenEndedParams":
        _all_known(list(self.paths), OPEN_TASK_NAMES, "open-ended task(s) in paths:")
        for task in self.tasks:
            if task in OPEN_TASKS_OFF_HUB and task not in self.paths:
                raise ValueError(f"{task} is not on the hub in its own format: give paths.{task}")
        return self


class CalibrationParams(_Section):
    """Section `calibration`: the settings swept to calibrate the default (calibration.py)."""

    n_test: int = Field(default=100, ge=1)  # held-out questions per setting
    # Their question stream: another seed than the main run's, so the default is not chosen on the
    # test questions it is then judged on.
    seed: int = 1
    settings: list[dict[str, str | int | float | bool | list]] = Field(default_factory=list)

    @field_validator("settings")
    @classmethod
    def _known_keys(cls, value: list[dict]) -> list[dict]:
        sections = {"data": DataParams, "debate": DebateParams}
        for setting in value:
            for key in setting:
                section, _, name = key.partition(".")
                if section not in sections or name not in sections[section].model_fields:
                    raise ValueError(f"setting key {key!r} is not a data.* or debate.* parameter")
        return value


class PadValidationParams(_Section):
    """Section `pad_validation`: PAD's GRPO step size, chosen on held-out questions (calibration.py)."""

    # The questions the task deals after the run's own (tasks.load_validation: the training list's
    # continuation; for a single-pool set, the pool after train and test): never debated, never
    # tested. The base and the PAD student answer them greedily.
    n: int = Field(default=200, ge=1)
    # `make calibrate-pad`: one DVC experiment of the pad_validation stage per grpo.learning_rate.
    learning_rates: list[float] = Field(default_factory=list)

    @field_validator("learning_rates")
    @classmethod
    def _positive(cls, value: list[float]) -> list[float]:
        if any(rate <= 0 for rate in value):
            raise ValueError("each learning rate must be > 0")
        return value


class Params(_Section):
    """The whole `params.yaml`: every section is required and checked."""

    model: ModelParams
    data: DataParams
    debate: DebateParams
    extraction: ExtractionParams
    sft: SFTParams
    prm: PRMParams
    grpo: GRPOParams
    evaluation: EvaluationParams
    robustness: RobustnessParams
    scaling: ScalingParams
    open_ended: OpenEndedParams
    calibration: CalibrationParams
    pad_validation: PadValidationParams


def _format(error: ValidationError, source: str) -> str:
    lines = [f"{source}: {error.error_count()} invalid parameter(s):"]
    for item in error.errors():
        key = ".".join(str(part) for part in item["loc"]) or "(top level)"
        message = item["msg"].removeprefix("Value error, ")
        got = "" if item["type"] == "missing" else f" (got {item.get('input')!r})"
        lines.append(f"  - {key}: {message}{got}")
    return "\n".join(lines)


def validate(raw: dict, schema: type[BaseModel] = Params, source: str = "params"):
    """Check a parsed params mapping against `schema`; raise ParamsError naming every bad key."""
    if not isinstance(raw, dict):
        raise ParamsError(f"{source}: expected a mapping of sections, got {type(raw).__name__}")
    try:
        return schema.model_validate(raw)
    except ValidationError as error:
        raise ParamsError(_format(error, source)) from None


@functools.cache
def _sections_schema(names: tuple[str, ...]) -> type[BaseModel]:
    unknown = [name for name in names if name not in Params.model_fields]
    if unknown:
        raise ParamsError(f"unknown params section(s) {unknown}; known: {', '.join(Params.model_fields)}")
    fields = {name: (Params.model_fields[name].annotation, ...) for name in names}
    return create_model("StageParams", __base__=_Section, **fields)


def validate_sections(raw: dict, source: str = "notebook parameters"):
    """Check the sections a stage receives (a notebook's parameters: `{"model": model, ...}`); the
    schema is `Params` restricted to those sections, each required, so a stage's list of sections
    lives in dvc.yaml alone (its parameters cell is written from it by `stages.sync-notebooks`, and
    tests/test_pipeline.py holds this call's keys to it)."""
    schema = _sections_schema(tuple(raw)) if isinstance(raw, dict) else Params  # validate names a non-mapping
    return validate(raw, schema, source)


def machine_problems(params: Params) -> list[str]:
    """What `params` asks of this machine that it lacks, one line per key: a launcher that is not on
    PATH, a local data file that does not exist."""
    import shlex
    import shutil

    problems = []
    command = shlex.split(params.model.launcher)[0] if params.model.launcher else None  # the schema parsed it
    if command is not None and shutil.which(command) is None:
        problems.append(f"model.launcher: launcher command {command!r} is not on PATH "
                        "(e.g. 'accelerate launch --config_file configs/accelerate/multi_gpu.yaml')")
    files = {f"data.ood_paths.{task}": path for task, path in params.data.ood_paths.items()}
    files |= {f"open_ended.paths.{task}": path for task, path in params.open_ended.paths.items()}
    problems += [f"{key}: no such file {path!r}" for key, path in files.items() if not Path(path).is_file()]
    return problems


def load_params(path: str | Path = "params.yaml", check_machine: bool = True) -> Params:
    """Read and validate a params file; with `check_machine`, also what it asks of this machine."""
    path = Path(path)
    if not path.is_file():
        raise ParamsError(f"{path}: no such params file")
    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as error:
        raise ParamsError(f"{path}: not valid YAML: {error}") from None
    params = validate(raw, Params, str(path))
    problems = machine_problems(params) if check_machine else []
    if problems:
        raise ParamsError("\n".join([f"{path}: {len(problems)} parameter(s) this machine cannot satisfy:",
                                      *(f"  - {problem}" for problem in problems)]))
    return params
