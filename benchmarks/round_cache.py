"""Keep or rebuild each agent's KV cache across debate rounds: what keeping could save, at most.

    python benchmarks/round_cache.py [--questions 64] [--batch-size 128] [--repeats 2] [--device cpu]

In round r > 1 an agent's prompt is its own round r-1 context (the question and its own answer)
followed by a turn with its peers' answers. The engine rebuilds: it prefills every later-round prompt
from scratch, sharing only what the whole batch has in common (`backends.prefill`). Keeping each
agent's cache from the round before would skip prefilling its own context.

This bounds that saving on the default debate stage's workload (`debate.debate_chunk` with
params.yaml's `debate` section on the first questions of the pipeline's test split). It runs the
workload once with the engine the pipeline runs (wall time W), captures the prompts of every later
round, and then times, batched as `HFBackend.generate` batches them, the prefill of the whole prompts
against the prefill of only what follows each agent's own context, run as prompts of their own. The
second skips the kept tokens and also their attention (the kept cache would still be attended to),
and keeping would add work not counted here (copying each finished row's cache out of its decode
batch, joining caches of different lengths, the memory), so the difference is an upper bound on
what keeping could save. Decoding is the same either way. Writes results/benchmarks/round_cache.json.
"""

from __future__ import annotations

import argparse
import time
from contextlib import contextmanager

from common import at_least_one, machine, setup, write

from agentark_utils.backends import HFBackend, prefill
from agentark_utils.debate import debate_chunk
from agentark_utils.kv_cache import kv_cache
from agentark_utils.prompts import template_kwargs
from agentark_utils.training import torch_device


def _shared_length(a: list[int], b: list[int]) -> int:
    return next((i for i, (x, y) in enumerate(zip(a, b)) if x != y), min(len(a), len(b)))


def kept_length(backend: HFBackend, conversation: list[dict]) -> int:
    """Tokens of a later-round prompt that the agent's cache from the round before already holds:
    the prompt's common prefix with its own context (every turn but the last, the peers' turn),
    rendered without a generation prompt. At least one token is left to prefill (it gives the
    first logits)."""
    prompt = backend._prompt_ids(conversation)
    own = backend.tokenizer.apply_chat_template(conversation[:-1], tokenize=False, add_generation_prompt=False,
                                                **template_kwargs(backend.enable_thinking))
    own_ids = backend.tokenizer(own, add_special_tokens=False)["input_ids"]
    return min(_shared_length(prompt, own_ids), len(prompt) - 1)


@contextmanager
def later_round_calls(backend: HFBackend):
    """While inside, every later-round debate call's conversations, as they were sent, are appended
    to the yielded list."""
    calls: list[list[list[dict]]] = []
    generate = backend.generate  # the class's method, bound

    def capturing(conversations, **kwargs):
        if kwargs.get("desc", "").startswith("debate round") and kwargs["desc"] != "debate round 1":
            calls.append([list(c) for c in conversations])  # copies: the debate appends each answer to its context
        return generate(conversations, **kwargs)

    backend.generate = capturing
    try:
        yield calls
    finally:
        del backend.generate  # the class's method again


def later_round_batches(backend: HFBackend, calls: list[list[list[dict]]]) -> list[list[tuple[list[int], int]]]:
    """Each later-round call's prompts as (token ids, kept length), in the batches `HFBackend.generate`
    forms: longest first, `batch_size` rows each."""
    batches = []
    for conversations in calls:
        rows = [(backend._prompt_ids(c), kept_length(backend, c)) for c in conversations]
        rows.sort(key=lambda row: (-len(row[0]), row[0]))
        batches += [rows[i : i + backend.batch_size] for i in range(0, len(rows), backend.batch_size)]
    return batches


def time_prefill(backend: HFBackend, prompts: list[list[int]], spare: int) -> float:
    import torch

    cache = kv_cache(backend.model, spare=spare, in_place=backend.cache_in_place)
    began = time.perf_counter()
    with torch.inference_mode():
        prefill(backend.model, prompts, backend.tokenizer.pad_token_id, cache, backend.share_prefixes)
    return time.perf_counter() - began


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--questions", type=int, default=64)
    parser.add_argument("--batch-size", type=int, default=None, help="default: model.batch_size of params.yaml")
    parser.add_argument("--repeats", type=at_least_one, default=2, help="timings per batch and variant; the best is kept")
    parser.add_argument("--device", default=None, help="default: model.device of params.yaml")
    args = parser.parse_args()
    params, questions = setup(args.questions)
    if params.debate.rounds < 2:
        raise SystemExit("debate.rounds is 1: no later round, nothing to keep")
    device = torch_device(args.device or params.model.device)
    backend = HFBackend(params.model.teacher, dtype=params.model.dtype, device=device,
                        batch_size=args.batch_size or params.model.batch_size)
    debate_chunk(questions[:2], backend, params.debate, seed=0)  # warm-up: first-call allocations

    with later_round_calls(backend) as later:
        began = time.perf_counter()
        debate_chunk(questions, backend, params.debate, seed=params.debate.seed)
        wall = time.perf_counter() - began

    batches = later_round_batches(backend, later)
    rebuild = keep = 0.0
    for batch in batches:
        whole = [ids for ids, _ in batch]
        rest = [ids[kept:] for ids, kept in batch]
        best_whole = best_rest = float("inf")
        for _ in range(args.repeats):  # alternate, so both see the same state of the machine
            best_whole = min(best_whole, time_prefill(backend, whole, params.debate.max_new_tokens))
            best_rest = min(best_rest, time_prefill(backend, rest, params.debate.max_new_tokens))
        rebuild += best_whole
        keep += best_rest
    rows = [row for batch in batches for row in batch]
    prompt_tokens = sum(len(ids) for ids, _ in rows)
    kept_tokens = sum(kept for _, kept in rows)
    bound = max(rebuild - keep, 0.0)
    result = {
        "machine": machine(device), "model": params.model.teacher, "dtype": params.model.dtype,
        "workload": {"questions": len(questions), "debate": params.debate.model_dump(), "batch_size": backend.batch_size},
        "wall_s": round(wall, 1),
        "later_round_prompts": len(rows),
        "later_round_prompt_tokens": prompt_tokens,
        "kept_tokens": kept_tokens,
        "prefill_s": {"rebuild": round(rebuild, 2), "keep_at_best": round(keep, 2)},
        "saving_bound_s": round(bound, 2),
        "saving_bound_fraction": round(bound / wall, 4),
        "speedup_bound": round(wall / (wall - bound), 3),
    }
    print(f"workload: {len(questions)} questions, {wall:.1f} s with the pipeline's engine")
    print(f"later rounds: {len(rows)} prompts, {prompt_tokens} tokens, {kept_tokens} of them in the agent's own "
          f"context ({kept_tokens / max(prompt_tokens, 1):.0%})")
    print(f"prefill: rebuild {rebuild:.2f} s, skipping the own context {keep:.2f} s -> keeping saves at most "
          f"{bound:.2f} s of {wall:.1f} s ({bound / wall:.1%}, at most {result['speedup_bound']}x)")
    write("round_cache.json", result)


if __name__ == "__main__":
    main()
