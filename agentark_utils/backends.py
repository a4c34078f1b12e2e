"""Generation backends: one interface, three engines.

`generate(conversations, temperature=, max_new_tokens=, seed=)` takes chat conversations (lists of
{"role", "content"} dicts) and returns one `Generation` per conversation, in order, each with its
prompt and completion token counts and latency.

- hf (default; CPU or GPU): transformers `generate`, batched with left padding and KV cache.
- vllm (GPU): offline `LLM.chat`; vllm is imported only when this backend is built.
- openai: any OpenAI-compatible server (`vllm serve`, `transformers serve`, a hosted API); the API
  key is read from OPENAI_API_KEY and never logged.

Latency of a batched call is the batch's wall time divided by its size: the amortized cost of
one generation, which is what a cost per question should add up.
"""

from __future__ import annotations

import os
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass
from typing import Protocol

from tqdm import tqdm

from agentark_utils.config import ModelParams

Conversation = list[dict[str, str]]


@dataclass(frozen=True)
class Generation:
    text: str
    prompt_tokens: int
    completion_tokens: int
    latency_s: float

    def to_dict(self) -> dict:
        return asdict(self)


class Backend(Protocol):
    name: str

    def generate(self, conversations: list[Conversation], *, temperature: float, max_new_tokens: int,
                 seed: int, desc: str = "generate") -> list[Generation]: ...


class HFBackend:
    """transformers generation, batched: all conversations of a call go through in batches."""

    name = "hf"

    def __init__(self, model: str, *, dtype: str = "bfloat16", device: str = "auto", batch_size: int = 16,
                 trust_remote_code: bool = False):
        from agentark_utils.models import load_causal_lm

        self.model, self.tokenizer = load_causal_lm(model, dtype, device, trust_remote_code)
        self.batch_size = batch_size

    def _prompt_ids(self, conversation: Conversation) -> list[int]:
        text = self.tokenizer.apply_chat_template(conversation, tokenize=False, add_generation_prompt=True)
        return self.tokenizer(text, add_special_tokens=False)["input_ids"]

    def generate(self, conversations, *, temperature, max_new_tokens, seed, desc="generate"):
        import torch

        prompts = [self._prompt_ids(c) for c in conversations]
        # Longest first: batches of similar length waste little compute on padding.
        order = sorted(range(len(prompts)), key=lambda i: -len(prompts[i]))
        results: list[Generation | None] = [None] * len(prompts)
        eos = self.tokenizer.eos_token_id
        pad = self.tokenizer.pad_token_id
        bar = tqdm(total=len(prompts), desc=desc, unit="gen", leave=False)
        for batch_index, start in enumerate(range(0, len(order), self.batch_size)):
            idx = order[start : start + self.batch_size]
            batch = self.tokenizer.pad({"input_ids": [prompts[i] for i in idx]}, return_tensors="pt")
            batch = {k: v.to(self.model.device) for k, v in batch.items()}
            sampling = {"do_sample": True, "temperature": temperature, "top_p": 1.0, "top_k": 0} \
                if temperature > 0 else {"do_sample": False}
            torch.manual_seed(seed + batch_index)
            began = time.perf_counter()
            with torch.inference_mode():
                out = self.model.generate(**batch, max_new_tokens=max_new_tokens, pad_token_id=pad, **sampling)
            latency = (time.perf_counter() - began) / len(idx)
            new = out[:, batch["input_ids"].shape[1] :].tolist()
            for row, i in zip(new, idx):
                # Generated length: up to and including the first end-of-sequence token.
                n = row.index(eos) + 1 if eos in row else len(row)
                text = self.tokenizer.decode(row[:n], skip_special_tokens=True)
                results[i] = Generation(text, len(prompts[i]), n, latency)
            bar.update(len(idx))
        bar.close()
        return results


class VLLMBackend:
    """vLLM offline inference (GPU). Imported lazily: nothing on the CPU path needs vllm."""

    name = "vllm"

    def __init__(self, model: str, *, dtype: str = "bfloat16", tensor_parallel_size: int = 1,
                 trust_remote_code: bool = False):
        try:
            from vllm import LLM
        except ImportError as error:
            raise ImportError("backend 'vllm' needs vllm: pip install -e '.[vllm]' (GPU machines only)") from error
        from agentark_utils.models import resolve

        self.llm = LLM(model=resolve(model), dtype=dtype, tensor_parallel_size=tensor_parallel_size,
                       trust_remote_code=trust_remote_code)

    def generate(self, conversations, *, temperature, max_new_tokens, seed, desc="generate"):
        from vllm import SamplingParams

        params = SamplingParams(temperature=temperature, max_tokens=max_new_tokens, seed=seed)
        began = time.perf_counter()
        outputs = self.llm.chat(conversations, params, use_tqdm=True)
        latency = (time.perf_counter() - began) / max(len(conversations), 1)
        return [Generation(o.outputs[0].text, len(o.prompt_token_ids), len(o.outputs[0].token_ids), latency)
                for o in outputs]


class OpenAIBackend:
    """An OpenAI-compatible chat server; concurrent requests, one per conversation."""

    name = "openai"

    def __init__(self, model: str, *, base_url: str, concurrency: int = 8, timeout_s: float = 600):
        from openai import OpenAI

        self.model = model
        self.client = OpenAI(base_url=base_url, api_key=os.environ.get("OPENAI_API_KEY", "EMPTY"),
                             timeout=timeout_s)
        self.concurrency = concurrency

    def _one(self, conversation: Conversation, temperature: float, max_new_tokens: int, seed: int) -> Generation:
        began = time.perf_counter()
        response = self.client.chat.completions.create(
            model=self.model, messages=conversation, temperature=temperature, max_tokens=max_new_tokens, seed=seed
        )
        latency = time.perf_counter() - began
        usage = response.usage
        return Generation(response.choices[0].message.content or "", usage.prompt_tokens if usage else 0,
                          usage.completion_tokens if usage else 0, latency)

    def generate(self, conversations, *, temperature, max_new_tokens, seed, desc="generate"):
        with ThreadPoolExecutor(self.concurrency) as pool:
            futures = [pool.submit(self._one, c, temperature, max_new_tokens, seed + i)
                       for i, c in enumerate(conversations)]
            return [f.result() for f in tqdm(futures, desc=desc, unit="gen", leave=False)]


def make_backend(params: ModelParams, role: str = "teacher") -> Backend:
    """Build the backend named in `params` for the teacher or the student model."""
    model = getattr(params, role)
    if params.backend == "hf":
        return HFBackend(model, dtype=params.dtype, device=params.device, batch_size=params.batch_size,
                         trust_remote_code=params.trust_remote_code)
    if params.backend == "vllm":
        return VLLMBackend(model, dtype=params.dtype, tensor_parallel_size=params.tensor_parallel_size,
                           trust_remote_code=params.trust_remote_code)
    return OpenAIBackend(model, base_url=params.openai_base_url, concurrency=params.batch_size)
