"""Generation backends: one interface, three engines.

`generate(conversations, temperature=, max_new_tokens=, seed=)` takes chat conversations (lists of
{"role", "content"} dicts) and returns one `Generation` per conversation, in order, each with its
prompt and completion token counts and latency.

- hf (default; CPU or GPU): a transformers model, continuously batched with left padding and a KV
  cache: a row leaves the batch as soon as it ends, and waiting rows take its place (`decode_batch`).
- vllm (GPU): offline `LLM.chat`; vllm is imported only when this backend is built.
- openai: any OpenAI-compatible server (`vllm serve`, `transformers serve`, a hosted API), or
  several replicas of one, with retries and failover (`OpenAIBackend`); the API key is read from
  OPENAI_API_KEY and never logged.

Latency is amortized: a batched call's wall time split over its generations (hf: each decoding
step's time over the rows in it, each prefill's over the rows it admitted; vllm: evenly; openai:
each request's own), so that the latencies of a question's calls add up to its cost.

Sampling seeds are per conversation (`row_seeds`): a hash of the call's seed, the conversation and
its rank among identical conversations of the call. A sample therefore depends on neither the
batch nor the chunk it was generated in, and two calls with different seeds never share a stream.
"""

from __future__ import annotations

import hashlib
import json
import os
import sys
import threading
import time
import warnings
from collections import deque
from dataclasses import asdict, dataclass
from typing import Protocol

from tqdm import tqdm

from agentark_utils.config import ModelParams
from agentark_utils.prompts import render_chat, template_kwargs

Conversation = list[dict[str, str]]


@dataclass(frozen=True)
class Generation:
    text: str  # the visible answer: a thinking block is split off into `thinking`
    prompt_tokens: int
    completion_tokens: int  # every generated token, thinking included (its cost)
    latency_s: float
    finish_reason: str = "stop"  # "stop": ended on its own; "length": cut at max_new_tokens
    thinking: str = ""

    def to_dict(self) -> dict:
        return asdict(self)


THINK_OPEN, THINK_CLOSE = "<think>", "</think>"


def split_thinking(text: str) -> tuple[str, str]:
    """(thinking, visible answer) of a completion. Reasoning models (Qwen3) think in a
    <think>...</think> block before answering; peers, the summarizer, grading and extraction read the
    answer only. A completion cut off inside its thinking has no visible answer."""
    if THINK_CLOSE in text:
        thinking, _, answer = text.rpartition(THINK_CLOSE)
        return thinking.replace(THINK_OPEN, "", 1).strip(), answer.strip()
    if text.lstrip().startswith(THINK_OPEN):
        return text.lstrip()[len(THINK_OPEN):].strip(), ""
    return "", text


def _generation(raw: str, prompt_tokens: int, completion_tokens: int, latency_s: float, finish_reason: str) -> Generation:
    thinking, answer = split_thinking(raw)
    return Generation(answer, prompt_tokens, completion_tokens, latency_s, finish_reason, thinking)


class Backend(Protocol):
    name: str

    def generate(self, conversations: list[Conversation], *, temperature: float, max_new_tokens: int,
                 seed: int, desc: str = "generate") -> list[Generation]: ...

    def close(self) -> None: ...

    def __enter__(self) -> Backend: ...

    def __exit__(self, *exc) -> None: ...


@dataclass(frozen=True)
class Call:
    """The arguments of one `generate` call, for `generate_calls`."""

    conversations: list[Conversation]
    temperature: float
    max_new_tokens: int
    seed: int
    desc: str = "generate"


def sequential_calls(backend: Backend, calls: list[Call]) -> list[list[Generation]]:
    """Each call through `backend.generate`, one after another (an empty call makes no request)."""
    return [backend.generate(call.conversations, temperature=call.temperature, max_new_tokens=call.max_new_tokens,
                             seed=call.seed, desc=call.desc) if call.conversations else [] for call in calls]


def generate_calls(backend: Backend, calls: list[Call]) -> list[list[Generation]]:
    """Run calls that do not depend on each other: together where the backend can (hf: in one
    continuous batch, so a prompt several calls read is prefilled once), otherwise one after
    another. Each call gets the generations it would get alone (seeds are per call and conversation)."""
    if hasattr(backend, "generate_calls"):
        return backend.generate_calls(calls)
    return sequential_calls(backend, calls)


class _Closing:
    """`with make_backend(...) as backend:` closes the backend when the block ends. `del` is not
    enough: a vLLM engine keeps its GPU memory and distributed state until shut down."""

    def close(self) -> None:
        pass

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def row_seeds(conversations: list[Conversation], seed: int) -> list[int]:
    """One sampling seed per conversation, from the call's seed and the conversation itself.

    Identical conversations in one call (self-consistency samples, round-1 agents) are told apart by
    their rank among equals, so they still draw different samples.
    """
    seen: dict[str, int] = {}
    out = []
    for conversation in conversations:
        key = json.dumps(conversation, sort_keys=True)
        rank = seen[key] = seen.get(key, -1) + 1
        digest = hashlib.sha256(json.dumps([seed, key, rank]).encode()).digest()
        out.append(int.from_bytes(digest[:4], "little") >> 1)  # 31 bits: every server takes it
    return out


def _common_prefix(prompts: list[list[int]]) -> int:
    """Length of the token prefix every prompt shares, leaving each at least one token of its own
    (the last prompt token must go through the model to give the first logits)."""
    n = min(len(p) for p in prompts) - 1
    first = prompts[0]
    for other in prompts[1:]:
        n = min(n, next((i for i, (a, b) in enumerate(zip(first[:n], other[:n])) if a != b), n))
    return max(n, 0)


def cache_kwarg(model) -> str:
    """The name under which this transformers version's forward takes the KV cache: `cache` from
    5.2x on (`past_key_values` deprecated), `past_key_values` before. 5.17 (the GPU image's) takes
    any other keyword silently, so passing the wrong one would decode without a cache: a forward
    that names neither is refused."""
    import inspect

    forward = getattr(model, "forward", model)  # a plain callable stands in for a model in tests
    names = inspect.signature(forward).parameters
    for name in ("cache", "past_key_values"):
        if name in names:
            return name
    raise TypeError(f"{type(model).__name__}.forward takes no `cache` or `past_key_values` argument: "
                    "cannot decode with a KV cache")


# The fixed cost of one more prefill forward, in prompt tokens, for cutting a prefill into length
# buckets (`batching.length_buckets`). With 256, the default debate's workload on 64 questions
# (chunk 64, batch 128, 2 CPU cores) ran 1.14x faster than with one forward per batch, with the same
# text: round-2 prompts of one batch differ by up to a few hundred tokens.
PREFILL_BUCKET_COST_TOKENS = 256


def _forward_prompts(model, remainders: list[tuple[int, ...]], pad_id: int, prefix_kv, shared: int, width: int):
    """Left-pad `remainders` to their longest, run them after the shared prefix's KV (`prefix_kv`,
    one row per layer, or None), and return (each layer's keys and values widened to `width`
    remainder tokens, the last-token logits). The widening inserts masked columns between prefix and
    remainder, where the padding of a one-forward prefill would be."""
    import torch

    from agentark_utils.kv_cache import kv_cache

    device = model.device
    cache = kv_cache(model, in_place=False)
    if prefix_kv is not None:
        for layer, (keys, values) in zip(cache.layers, prefix_kv):
            layer.update(keys.expand(len(remainders), -1, -1, -1), values.expand(len(remainders), -1, -1, -1))
    longest = max(len(r) for r in remainders)
    tokens = torch.tensor([[pad_id] * (longest - len(r)) + list(r) for r in remainders], device=device)
    mask = torch.tensor([[0] * (longest - len(r)) + [1] * len(r) for r in remainders], device=device)
    mask = torch.cat([mask.new_ones(len(remainders), shared), mask], dim=1)
    positions = (mask.cumsum(-1) - 1).clamp(min=0)[:, -longest:]
    logits = model(input_ids=tokens, attention_mask=mask, position_ids=positions, **{cache_kwarg(model): cache},
                   use_cache=True, logits_to_keep=1).logits[:, -1].float()
    def widen(states):
        gap = states.new_zeros(*states.shape[:2], width - longest, states.shape[-1])
        return torch.cat([states[:, :, :shared], gap, states[:, :, shared:]], dim=2)
    return [(widen(layer.keys), widen(layer.values)) for layer in cache.layers], logits


def prefill(model, prompts: list[list[int]], pad_id: int, cache, share_prefixes: bool = True):
    """Run the prompts through the model into `cache`; return (attention mask, last-token logits).

    Computed once and reused (prefix sharing): the prefix all prompts of the batch share (the chat
    template's system turn, or a whole prompt in a call of self-consistency samples), and each
    distinct prompt (round-1 agents and samples read the same one). The shared prefix goes through
    as one row and its KV cache is copied to the distinct remainders. The remainders go through
    left-padded, in length buckets (`batching.length_buckets`: round-2 prompts differ by up to a
    few hundred tokens, and one forward would spend a quarter of its work on padding), and their
    caches are then copied to the rows that repeat them. The padding sits between prefix and
    remainder: the attention mask hides it and positions count real tokens only, so each row sees
    exactly its own prompt. With share_prefixes=False every row is prefilled whole, in one forward
    (the old path).
    """
    import torch

    from agentark_utils.batching import length_buckets
    from agentark_utils.kv_cache import kv_cache

    device = model.device
    shared = _common_prefix(prompts) if share_prefixes and len(prompts) > 1 else 0
    remainders = [tuple(p[shared:]) for p in prompts]
    unique = list(dict.fromkeys(remainders)) if share_prefixes else remainders
    slot = {r: i for i, r in enumerate(unique)}
    prefix_kv = None
    if shared:
        prefix_cache = kv_cache(model, in_place=False)
        model(input_ids=torch.tensor([prompts[0][:shared]], device=device),
              position_ids=torch.arange(shared, device=device)[None], **{cache_kwarg(model): prefix_cache},
              use_cache=True, logits_to_keep=1)
        prefix_kv = [(layer.keys, layer.values) for layer in prefix_cache.layers]
    width = max(len(r) for r in unique)
    buckets = length_buckets([len(r) for r in unique], PREFILL_BUCKET_COST_TOKENS if share_prefixes else 10**9)
    order = [row for bucket in range(max(buckets) + 1) for row in range(len(unique)) if buckets[row] == bucket]
    parts = [_forward_prompts(model, [unique[row] for row in order if buckets[row] == bucket], pad_id, prefix_kv,
                              shared, width)
             for bucket in range(max(buckets) + 1)]
    back = torch.tensor(order, device=device).argsort()  # bucket order -> the order of `unique`
    logits = torch.cat([part_logits for _, part_logits in parts])[back]
    for i, layer in enumerate(cache.layers):
        layer.update(torch.cat([states[i][0] for states, _ in parts])[back],
                     torch.cat([states[i][1] for states, _ in parts])[back])
    mask = torch.tensor([[0] * (width - len(r)) + [1] * len(r) for r in unique], device=device)
    mask = torch.cat([mask.new_ones(len(unique), shared), mask], dim=1)
    if len(unique) < len(prompts):
        rows = torch.tensor([slot[r] for r in remainders], device=device)
        cache.batch_select_indices(rows)
        mask, logits = mask[rows], logits[rows]
    return mask, logits


def per_row(value, rows: int) -> list:
    """One value per row: `value` itself if it is a list, else `value` for every row."""
    return value if isinstance(value, list) else [value] * rows


def sample_tokens(logits, temperature, generators=None):
    """The next token of each row: the argmax where its temperature is 0; elsewhere a draw from
    softmax(logits / temperature), by inverting its CDF at one uniform from the row's generator.
    `temperature` and `generators`: one for all rows, or a list with one per row.

    One random number per row and step: torch.multinomial drew an exponential for every vocabulary
    entry of every row, one row at a time, and took 15 % of the default debate's wall time
    (cProfile). The CDF is summed in float32: a token whose probability is below its resolution
    (about 1e-7 of the running sum) is never drawn.
    """
    import torch

    temperatures, generators = per_row(temperature, len(logits)), per_row(generators, len(logits))
    tokens = logits.argmax(-1)
    hot = [i for i, t in enumerate(temperatures) if t > 0]
    if not hot:
        return tokens
    if any(generators[i] is None for i in hot):
        raise ValueError("sampling at a temperature above 0 needs a generator for every sampled row")
    index = torch.tensor(hot, device=logits.device)
    scale = torch.tensor([temperatures[i] for i in hot], device=logits.device)[:, None]
    uniforms = torch.cat([torch.rand(1, generator=generators[i], device=generators[i].device) for i in hot])
    cdf = torch.softmax(logits[index].float() / scale, dim=-1).cumsum(-1)
    total = cdf[:, -1:]
    if not torch.isfinite(total).all():  # searchsorted would return an id past the vocabulary
        raise ValueError("a sampled row's logits are not finite: there is no distribution to draw from")
    # u < 1, but u x total can round up to total, past every token: keep the target below it.
    target = torch.minimum(uniforms.to(cdf)[:, None] * total, total.nextafter(torch.zeros_like(total)))
    tokens[index] = torch.searchsorted(cdf, target, right=True).squeeze(-1)
    return tokens


# Waiting rows join the running batch once at least this share of its slots is free: each admission
# costs a prefill forward and a copy of the batch's KV cache, so admitting row by row would not pay.
ADMIT_FREE_SHARE = 0.25


def decode_batch(model, prompts: list[list[int]], *, pad_id: int, max_new_tokens: int | list[int],
                 stop_ids: list[int], temperature: float | list[float], generators=None, batch_size: int | None = None,
                 share_prefixes: bool = True, cache_in_place: bool = True, on_done=None,
                 seconds: list[float] | None = None) -> list[list[int]]:
    """Generate for prompts (token ids); returns each row's new tokens, up to and including its stop
    token. `max_new_tokens` and `temperature`: one for all rows, or a list with one per row.

    Continuous batching: at most `batch_size` rows decode together (None: all of them). A row leaves
    the batch as soon as it emits a stop token or reaches its token budget (`kv_cache.drop_rows`
    moves running rows into its slot), and rows waiting in the given order join it once
    `ADMIT_FREE_SHARE` of its slots are free: they are prefilled (`prefill`, with prefix sharing)
    and their KV cache joined to the batch's (`kv_cache.join_rows`), left-padded to its width. A
    batch of fixed rows, as transformers' `generate` runs one, ends with its longest answer: its
    last steps run a few rows at the full fixed cost of a step. The cache appends in place
    (`kv_cache.InPlaceLayer`; cache_in_place=False: transformers' concatenating one).

    temperature 0 is greedy; otherwise plain sampling (`sample_tokens`). With one generator per row
    (`generators[row]`, as `HFBackend` passes them) a row's sample does not depend on its
    batch-mates; one generator for all rows is shared, in batch order.
    `on_done(k)` is told each time k rows have finished (a progress bar). `seconds`, a list of one
    number per row, is filled with each row's share of the wall time: each step's sampling split
    evenly over the rows sampled, its forward over the rows still running, and each admission (its
    prefill, and the join that makes room for it in the running batch) over the rows admitted, by
    prompt length.
    """
    import torch

    from agentark_utils.kv_cache import can_join, drop_rows, join_rows, kv_cache

    n = len(prompts)
    temperatures, budgets, generators = per_row(temperature, n), per_row(max_new_tokens, n), per_row(generators, n)
    size = batch_size or n
    device = model.device
    spent = seconds if seconds is not None else [0.0] * n
    on_cuda = torch.device(device).type == "cuda"
    clock = time.perf_counter()

    def charge(charged: list[int], weights: list[int]) -> None:
        """The time since the last charge, to `charged` rows in proportion to `weights`."""
        nonlocal clock
        if on_cuda:  # kernels run asynchronously: wait for the work being charged
            torch.cuda.synchronize(device)
        now, total = time.perf_counter(), sum(weights)
        for row, weight in zip(charged, weights):
            spent[row] += (now - clock) * weight / total
        clock = now

    cache_name = cache_kwarg(model)
    stops = torch.tensor(stop_ids, device=device)
    new: list[list[int]] = [[] for _ in range(n)]
    waiting = deque(range(n))
    cache = mask = logits = rows = None  # the running batch: KV cache, attention mask, next logits, original rows

    def left_pad(mask, width: int):
        return torch.cat([mask.new_zeros(len(mask), width - mask.shape[1]), mask], dim=1)

    with torch.inference_mode():
        while True:
            free = size - (0 if rows is None else len(rows))
            if waiting and (rows is None or (free >= max(1, ADMIT_FREE_SHARE * size) and can_join(cache))):
                admitted = [waiting.popleft() for _ in range(min(free, len(waiting)))]
                # Joined rows move into the running cache's buffer: only a new batch needs spare room.
                added = kv_cache(model, spare=max(budgets) if rows is None else 0, in_place=cache_in_place)
                added_mask, added_logits = prefill(model, [prompts[i] for i in admitted], pad_id, added, share_prefixes)
                added_rows = torch.tensor(admitted, device=device)
                if rows is None:
                    cache, mask, logits, rows = added, added_mask, added_logits, added_rows
                else:
                    width = max(mask.shape[1], added_mask.shape[1])
                    mask = torch.cat([left_pad(mask, width), left_pad(added_mask, width)])
                    trim = int(mask.any(0).int().argmax())  # the first slot any row uses
                    join_rows(cache, added, width, trim)
                    mask, logits, rows = mask[:, trim:], torch.cat([logits, added_logits]), torch.cat([rows, added_rows])
                charge(admitted, [len(prompts[i]) for i in admitted])
            if rows is None:
                return new
            live = rows.tolist()
            next_tokens = sample_tokens(logits, [temperatures[row] for row in live], [generators[row] for row in live])
            for row, token in zip(live, next_tokens.tolist()):
                new[row].append(token)
            under_budget = torch.tensor([len(new[row]) < budgets[row] for row in live], device=device)
            running = ~torch.isin(next_tokens, stops) & under_budget
            if on_done is not None and not running.all():
                on_done(int((~running).sum()))
            if not running.any():
                charge(live, [1] * len(live))
                cache = mask = logits = rows = None
                continue
            if not running.all():
                keep = drop_rows(cache, running)
                mask, next_tokens, rows = mask[keep], next_tokens[keep], rows[keep]
            charge(live, [1] * len(live))  # every live row was sampled
            mask = torch.cat([mask, mask.new_ones(len(rows), 1)], dim=1)
            # Positions count real tokens only, so padding does not shift them.
            positions = (mask.cumsum(-1) - 1)[:, -1:]
            logits = model(input_ids=next_tokens[:, None], attention_mask=mask, position_ids=positions,
                           **{cache_name: cache}, use_cache=True, logits_to_keep=1).logits[:, -1].float()
            charge(rows.tolist(), [1] * len(rows))  # the forward of the rows still running


class HFBackend(_Closing):
    """transformers generation: every conversation of a call, or of several independent calls
    (`generate_calls`), in one continuous batch of at most `batch_size` rows (`decode_batch`)."""

    name = "hf"

    def __init__(self, model: str, *, dtype: str = ModelParams.model_fields["dtype"].default, device: str = "auto",
                 batch_size: int = ModelParams.model_fields["batch_size"].default, trust_remote_code: bool = False,
                 share_prefixes: bool = True, cache_in_place: bool = True, enable_thinking: bool | None = None):
        from agentark_utils.models import load_causal_lm

        self.model, self.tokenizer = load_causal_lm(model, dtype, device, trust_remote_code)
        self.batch_size = batch_size
        self.share_prefixes = share_prefixes
        self.cache_in_place = cache_in_place
        self.enable_thinking = enable_thinking
        # Chat models may end a turn with more than one token (Qwen: <|im_end|> and <|endoftext|>).
        stop = self.model.generation_config.eos_token_id
        stop = set(stop if isinstance(stop, list) else [stop]) | {self.tokenizer.eos_token_id}
        self.stop_ids = sorted(i for i in stop if i is not None)

    def _prompt_ids(self, conversation: Conversation) -> list[int]:
        text = render_chat(self.tokenizer, conversation, self.enable_thinking)
        return self.tokenizer(text, add_special_tokens=False)["input_ids"]

    def generate(self, conversations, *, temperature, max_new_tokens, seed, desc="generate"):
        return self.generate_calls([Call(conversations, temperature, max_new_tokens, seed, desc)])[0]

    def generate_calls(self, calls: list[Call]) -> list[list[Generation]]:
        """Every row of every call in one continuous batch (`decode_batch`), each row with its call's
        temperature, token budget and seed stream."""
        import torch

        owners = [call for call in calls for _ in call.conversations]
        prompts = [self._prompt_ids(c) for call in calls for c in call.conversations]
        seeds = [s for call in calls for s in row_seeds(call.conversations, call.seed)]
        # Longest first: rows of similar length decode together, wasting little padding; equal prompts
        # side by side, so that they are admitted together and prefilled once.
        order = sorted(range(len(prompts)), key=lambda i: (-len(prompts[i]), prompts[i]))
        bar = generation_bar(total=len(prompts), desc=" + ".join(call.desc for call in calls if call.conversations))
        seconds = [0.0] * len(order)  # each row's share of the wall time (`decode_batch`): its latency
        new = decode_batch(self.model, [prompts[i] for i in order], pad_id=self.tokenizer.pad_token_id,
                           max_new_tokens=[owners[i].max_new_tokens for i in order], stop_ids=self.stop_ids,
                           temperature=[owners[i].temperature for i in order],
                           generators=[torch.Generator(self.model.device).manual_seed(seeds[i]) for i in order],
                           batch_size=self.batch_size, share_prefixes=self.share_prefixes,
                           cache_in_place=self.cache_in_place, on_done=bar.update, seconds=seconds)
        bar.close()
        results: list[Generation | None] = [None] * len(prompts)
        for i, row, latency in zip(order, new, seconds):
            text = self.tokenizer.decode(row, skip_special_tokens=True)
            finish = "stop" if row and row[-1] in self.stop_ids else "length"
            results[i] = _generation(text, len(prompts[i]), len(row), latency, finish)
        starts = [0]
        for call in calls:
            starts.append(starts[-1] + len(call.conversations))
        return [results[start:end] for start, end in zip(starts, starts[1:])]

    def close(self) -> None:
        """Drop the model, so the next one can load in its place."""
        model, self.model = self.model, None
        if model is None:
            return
        on_cuda = getattr(getattr(model, "device", None), "type", None) == "cuda"
        del model
        if on_cuda:
            import gc

            import torch

            gc.collect()  # reference cycles can still hold the weights
            torch.cuda.empty_cache()  # hand the cached blocks back, for a vLLM engine or another process


def generation_bar(iterable=None, *, total: int | None = None, desc: str = "generate") -> tqdm:
    """The progress bar of one generation call, often inside a caller's bar (the debate's questions).

    A bar nested below another moves the cursor up and down (`\\x1b[A`), which only a terminal
    understands: anywhere else (a notebook, Papermill's stage log, a file) it shares the first line,
    so the log holds plain `\\r` updates.
    """
    return tqdm(iterable, total=total, desc=desc, unit="gen", leave=False,
                position=None if sys.stderr.isatty() else 0)


class VLLMBackend(_Closing):
    """vLLM offline inference (GPU). Imported lazily: nothing on the CPU path needs vllm.

    One engine, split over `tensor_parallel_size` GPUs, with prefix caching on: the agents of a
    question share its prompt, and each round extends the last one's context. Data parallelism is
    not done here: vLLM's `LLM` refuses `data_parallel_size > 1` in one process (it could hang; vLLM
    PR 27282), so several replicas run as `vllm serve` endpoints behind the openai backend (README).
    """

    name = "vllm"

    def __init__(self, model: str, *, dtype: str = "bfloat16", tensor_parallel_size: int = 1,
                 trust_remote_code: bool = False, enable_thinking: bool | None = None):
        try:
            from vllm import LLM
        except ImportError as error:
            raise ImportError("backend 'vllm' needs vllm: pip install -e '.[vllm]' (GPU machines only)") from error
        from agentark_utils.models import resolve

        self.llm = LLM(model=resolve(model), dtype=dtype, tensor_parallel_size=tensor_parallel_size,
                       trust_remote_code=trust_remote_code, enable_prefix_caching=True)
        self.template_kwargs = template_kwargs(enable_thinking)

    def generate(self, conversations, *, temperature, max_new_tokens, seed, desc="generate"):
        from vllm import SamplingParams

        params = [SamplingParams(temperature=temperature, max_tokens=max_new_tokens, seed=s)
                  for s in row_seeds(conversations, seed)]
        began = time.perf_counter()
        outputs = self.llm.chat(conversations, params, use_tqdm=True, chat_template_kwargs=self.template_kwargs)
        latency = (time.perf_counter() - began) / max(len(conversations), 1)
        return [_generation(o.outputs[0].text, len(o.prompt_token_ids), len(o.outputs[0].token_ids), latency,
                            "length" if o.outputs[0].finish_reason == "length" else "stop")
                for o in outputs]

    def close(self) -> None:
        """Shut the engine down and free its GPU memory, as vLLM's own test runner does (drop the
        `LLM`, then `cleanup_dist_env_and_memory`). Dropping it alone leaves the engine core (its own
        process in vLLM V1), the model-parallel groups and the cached blocks alive."""
        llm, self.llm = self.llm, None
        if llm is None:
            return
        core = getattr(getattr(llm, "llm_engine", None), "engine_core", None)
        if hasattr(core, "shutdown"):
            core.shutdown()  # stops the engine-core process and its workers now, not whenever gc runs
        del llm, core
        from vllm.distributed import cleanup_dist_env_and_memory

        cleanup_dist_env_and_memory()  # model-parallel groups, process group, gc, CUDA cache


def _retryable(error: Exception) -> bool:
    """Whether another try may succeed: the server was unreachable, too slow, busy (429) or broken (5xx)."""
    import openai

    if isinstance(error, openai.APIConnectionError):  # timeouts included
        return True
    return isinstance(error, openai.APIStatusError) and (error.status_code == 429 or error.status_code >= 500)


@dataclass(eq=False)
class Endpoint:
    """One server of the openai backend, and its health as seen by this process."""

    url: str
    client: object
    failures: int = 0  # failed rounds in a row: the requests in flight when one fails fail as one round
    last_failure: float = float("-inf")
    retry_at: float = 0.0  # backed off until then
    in_flight: int = 0
    served: int = 0
    dropped: bool = False
    last_error: str = ""


@dataclass(eq=False)
class _Call:
    """The shared state of one `OpenAIBackend.generate` call, guarded by `lock`."""

    n: int
    lock: threading.Condition
    pending: deque
    results: list
    attempts: list
    remaining: int
    error: Exception | None = None
    closed: bool = False

    def over(self) -> bool:
        return self.closed or self.error is not None or self.remaining == 0


class OpenAIBackend(_Closing):
    """OpenAI-compatible chat servers: one, or several replicas (`vllm serve` on one node or many).

    Each endpoint has `concurrency` requests in flight at most, and a conversation goes to whichever
    live endpoint has a free slot. A connection error, a timeout, a 429 or a 5xx puts the
    conversation back in the queue, for any endpoint, and backs its endpoint off exponentially
    (backoff_s, 2 backoff_s, ... up to max_backoff_s), during which it gets one request at a time;
    after `max_failures` failed rounds in a row it leaves the rotation for good (this backend's
    lifetime). Any other 4xx means the request itself is wrong and raises at once. A conversation is
    recorded once, from its first successful response, so a retry neither duplicates nor loses it;
    one that failed `max_attempts` times raises. The client's own retries are off: the policy here
    spans endpoints. Retries ask for the same sample: the seed is the row's (`row_seeds`).
    """

    name = "openai"

    def __init__(self, model: str, *, base_url: str | list[str], concurrency: int = 8, timeout_s: float = 600,
                 max_attempts: int = 5, max_failures: int = 3, backoff_s: float = 1.0, max_backoff_s: float = 60,
                 enable_thinking: bool | None = None):
        from openai import OpenAI

        self.model = model
        # vLLM's server passes chat_template_kwargs to the template; other servers ignore unknown fields
        kwargs = template_kwargs(enable_thinking)
        self.extra_body = {"chat_template_kwargs": kwargs} if kwargs else None
        urls = [base_url] if isinstance(base_url, str) else list(base_url)
        key = os.environ.get("OPENAI_API_KEY", "EMPTY")
        self.endpoints = [Endpoint(url, OpenAI(base_url=url, api_key=key, timeout=timeout_s, max_retries=0))
                          for url in urls]
        self.concurrency = concurrency
        self.max_attempts, self.max_failures = max_attempts, max_failures
        self.backoff_s, self.max_backoff_s = backoff_s, max_backoff_s

    def _one(self, client, conversation: Conversation, temperature: float, max_new_tokens: int,
             seed: int) -> Generation:
        began = time.perf_counter()
        response = client.chat.completions.create(
            model=self.model, messages=conversation, temperature=temperature, max_tokens=max_new_tokens, seed=seed,
            extra_body=self.extra_body,
        )
        latency = time.perf_counter() - began
        usage = response.usage
        choice = response.choices[0]
        return _generation(choice.message.content or "", usage.prompt_tokens if usage else 0,
                           usage.completion_tokens if usage else 0, latency,
                           "length" if choice.finish_reason == "length" else "stop")

    def _no_endpoint_left(self, call: _Call) -> RuntimeError:
        tried = "; ".join(f"{e.url} ({e.last_error})" for e in self.endpoints)
        return RuntimeError(f"every openai endpoint failed and was dropped, {call.remaining} of {call.n} "
                            f"conversations not generated: {tried}")

    def _failed(self, endpoint: Endpoint, started: float, error: Exception) -> None:
        """Count a failed request against its endpoint: back it off, or drop it."""
        endpoint.last_error = f"{type(error).__name__}: {error}"
        if started < endpoint.last_failure:
            return  # in flight when the endpoint last failed: the same round
        now = time.monotonic()
        endpoint.failures += 1
        endpoint.last_failure = now
        if endpoint.failures >= self.max_failures:
            endpoint.dropped = True
            warnings.warn(f"openai endpoint {endpoint.url} dropped after {endpoint.failures} failed rounds: "
                          f"{endpoint.last_error}", RuntimeWarning, stacklevel=2)
        else:
            endpoint.retry_at = now + min(self.backoff_s * 2 ** (endpoint.failures - 1), self.max_backoff_s)

    def _serve(self, endpoint: Endpoint, call: _Call, conversations, seeds, temperature, max_new_tokens, bar):
        """One request slot of `endpoint`: take a pending conversation whenever the endpoint may get one."""
        while True:
            with call.lock:
                while True:
                    if call.over() or endpoint.dropped:
                        return
                    now = time.monotonic()
                    backing_off = now < endpoint.retry_at
                    probing = endpoint.failures > 0 and endpoint.in_flight > 0
                    if call.pending and not backing_off and not probing:
                        break
                    call.lock.wait(endpoint.retry_at - now if call.pending and backing_off else None)
                row = call.pending.popleft()
                endpoint.in_flight += 1
                started = time.monotonic()
            try:
                generation, error = self._one(endpoint.client, conversations[row], temperature, max_new_tokens,
                                              seeds[row]), None
            except Exception as caught:  # sorted below: retried, or ends the call
                generation, error = None, caught
            with call.lock:
                endpoint.in_flight -= 1
                if error is None:
                    endpoint.failures, endpoint.served = 0, endpoint.served + 1
                    call.results[row] = generation
                    call.remaining -= 1
                    bar.update(1)
                elif not _retryable(error):
                    status = getattr(error, "status_code", None)
                    call.error = call.error or (RuntimeError(
                        f"{endpoint.url} refused the request with HTTP {status} (not retried: check the model "
                        f"name {self.model!r} and OPENAI_API_KEY): {error}") if status else error)
                else:
                    self._failed(endpoint, started, error)
                    call.attempts[row] += 1
                    if call.attempts[row] >= self.max_attempts:
                        call.error = call.error or RuntimeError(
                            f"conversation {row} failed {call.attempts[row]} times; last, on {endpoint.url}: "
                            f"{endpoint.last_error}")
                    call.pending.appendleft(row)
                    if all(e.dropped for e in self.endpoints):
                        call.error = call.error or self._no_endpoint_left(call)
                call.lock.notify_all()

    def generate(self, conversations, *, temperature, max_new_tokens, seed, desc="generate"):
        n = len(conversations)
        call = _Call(n, threading.Condition(), deque(range(n)), [None] * n, [0] * n, remaining=n)
        live = [e for e in self.endpoints if not e.dropped]
        if n and not live:
            raise self._no_endpoint_left(call)
        seeds = row_seeds(conversations, seed)
        bar = generation_bar(total=n, desc=desc)
        slots = [threading.Thread(target=self._serve, daemon=True,
                                  args=(endpoint, call, conversations, seeds, temperature, max_new_tokens, bar))
                 for endpoint in live for _ in range(min(self.concurrency, n))]
        for slot in slots:
            slot.start()
        with call.lock:
            while not call.over():
                call.lock.wait()
            call.closed = True
            call.lock.notify_all()
        bar.close()
        if call.error is not None:
            raise call.error  # slots still waiting on a server finish on their own; their answers are dropped
        for slot in slots:
            slot.join()
        return call.results

    def close(self) -> None:
        """Close each endpoint's HTTP connections."""
        for endpoint in self.endpoints:
            close = getattr(endpoint.client, "close", None)
            if close is not None:
                close()


def make_backend(params: ModelParams, role: str = "teacher") -> Backend:
    """Build the backend named in `params` for the teacher or the student model."""
    model = getattr(params, role)
    thinking = params.enable_thinking
    if params.backend == "hf":
        return HFBackend(model, dtype=params.dtype, device=params.device, batch_size=params.batch_size,
                         trust_remote_code=params.trust_remote_code, enable_thinking=thinking)
    if params.backend == "vllm":
        return VLLMBackend(model, dtype=params.dtype, tensor_parallel_size=params.tensor_parallel_size,
                           trust_remote_code=params.trust_remote_code, enable_thinking=thinking)
    return OpenAIBackend(model, base_url=params.openai_base_url, concurrency=params.batch_size,  # per endpoint
                         enable_thinking=thinking)
