"""Checkpoint contents and where to find them.

A checkpoint directory holds `state.pt` (full, unsharded model and optimizer state keyed by
parameter name, scheduler, loader position, step, resolved config, tokenizer entry), one
`rng-{rank}.pt` per rank, `meta.json` (step, for finding the latest without loading weights) and,
for file tokenizers, `tokenizer.tiktoken` (+ `.json`) so a checkpoint copied elsewhere still
decodes. Everything loads with `torch.load(weights_only=True)`. Full state dicts come from
torch.distributed.checkpoint's state_dict API, which undoes DDP, FSDP2 and torch.compile wrapping,
so a checkpoint resumes under either strategy and any world size, and loads into a bare GPT.
"""

from __future__ import annotations

import json
import os
import random
import tempfile
from typing import Any, NamedTuple

import fsspec
import numpy as np
import torch

from raylm.core.io import is_local, write_json
from raylm.core.paths import TOKENIZER, RunPaths
from raylm.core.tokenizer import copy_tokenizer, load_encoding, run_tokenizer
from raylm.training.config import TrainConfig
from raylm.training.mixture import recipe_weights
from raylm.training.model import GPT, GPTConfig

STATE, META = "state.pt", "meta.json"
_STATE_KEYS = ("model", "config", "tokenizer", "step")  # what every raylm state.pt holds


class CheckpointError(ValueError):
    """A path that holds no usable raylm checkpoint (another program's file, a damaged one): the CLI exits 2."""


def rng_state() -> dict:
    """Every RNG a worker uses, in types `torch.load(weights_only=True)` accepts."""
    version, keys, gauss = random.getstate()
    name, np_keys, pos, has_gauss, np_gauss = np.random.get_state()
    return {
        "python": list(keys),
        "python_version": version,
        "numpy": [name, torch.from_numpy(np_keys.astype(np.int64)), pos, has_gauss, np_gauss],
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None,
    }


def set_rng_state(s: dict) -> None:
    random.setstate((s["python_version"], tuple(s["python"]), None))
    name, keys, pos, has_gauss, gauss = s["numpy"]
    np.random.set_state((name, keys.numpy().astype(np.uint32), pos, has_gauss, gauss))
    torch.set_rng_state(s["torch"])
    if s.get("cuda") is not None and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(s["cuda"])


def _options():
    from torch.distributed.checkpoint.state_dict import StateDictOptions

    return StateDictOptions(full_state_dict=True, cpu_offload=True)


def full_state(model: torch.nn.Module, opt: torch.optim.Optimizer) -> tuple[dict, dict]:
    """Unsharded model and optimizer state keyed by parameter name. A collective: call on every rank."""
    from torch.distributed.checkpoint.state_dict import get_state_dict

    return get_state_dict(model, getattr(opt, "optimizers", opt), options=_options())  # Combined: each one's state


def load_full_state(model: torch.nn.Module, opt: torch.optim.Optimizer, model_sd: dict, opt_sd: dict) -> None:
    from torch.distributed.checkpoint.state_dict import set_state_dict

    set_state_dict(model, getattr(opt, "optimizers", opt), model_state_dict=model_sd, optim_state_dict=opt_sd, options=_options())


def load_model_weights(model: torch.nn.Module, model_sd: dict) -> None:
    """Weights only (fine-tuning from another run): every rank passes the full state dict."""
    from torch.distributed.checkpoint.state_dict import set_model_state_dict

    set_model_state_dict(model, model_sd, options=_options())


def save(directory: str, rank: int, state: dict | None, tokenizer_dir: str | None = None) -> None:
    """Write this rank's part of a checkpoint into a local directory: its RNG states, and on rank 0
    (`state` given) the shared state, meta.json and the tokenizer files."""
    torch.save(rng_state(), os.path.join(directory, f"rng-{rank}.pt"))
    if state is None:
        return
    torch.save(state, os.path.join(directory, STATE))
    c = state["config"]
    write_json(
        os.path.join(directory, META),
        {
            "step": state["step"],
            "tokenizer": state["tokenizer"]["name"],
            "tokenizer_sha256": state["tokenizer"]["sha256"],
            "model": c["train"]["model"],
            "train": c["train"],  # what a resume with another recipe is checked against (trainer.check_resume)
            "weights": recipe_weights(c),  # ... and a mixture's source weights, which the data section holds
            "run_dir": RunPaths(c["storage_path"], c["name"]).root,
        },
        indent=None,
    )
    if tokenizer_dir is not None:
        src = f"{tokenizer_dir}/{TOKENIZER}"
        fs, _ = fsspec.core.url_to_fs(src)
        if fs.exists(src):
            copy_tokenizer(src, os.path.join(directory, TOKENIZER))


def _torch_load(path: str, device: torch.device | str = "cpu") -> Any:
    try:
        return torch.load(path, map_location=device, weights_only=True)
    except FileNotFoundError:
        raise
    except Exception as e:  # noqa: BLE001 - unpickling, zip and tensor errors all mean "not what raylm wrote"
        # torch's own message suggests weights_only=False, i.e. running arbitrary code from the file: never
        raise CheckpointError(
            f"{path}: not a raylm checkpoint file (torch cannot load it as tensors: "
            f"{type(e).__name__}); it is damaged or was written by another program"
        ) from None


def load(directory: str, rank: int, device: torch.device | str = "cpu") -> tuple[dict[str, Any], dict | None]:
    """state.pt and this rank's RNG states (None when the checkpoint was written by fewer ranks)."""
    path = os.path.join(directory, STATE)
    state = _torch_load(path, device)
    missing = [k for k in _STATE_KEYS if not isinstance(state, dict) or k not in state]
    if missing:
        raise CheckpointError(f"{path}: not a raylm checkpoint (it has no {', '.join(missing)})")
    rng_path = os.path.join(directory, f"rng-{rank}.pt")
    return state, (_torch_load(rng_path) if os.path.exists(rng_path) else None)


def read_meta(path: str) -> dict:
    """A checkpoint's meta.json (a file path, local or URL); a damaged one is a CheckpointError naming it."""
    fs, _ = fsspec.core.url_to_fs(path)
    try:
        meta = json.loads(fs.cat(path))
    except (ValueError, UnicodeDecodeError) as e:
        raise CheckpointError(f"{path}: not valid JSON ({e}); the checkpoint is damaged") from None
    if not isinstance(meta, dict) or not isinstance(meta.get("step"), int):
        raise CheckpointError(f"{path}: not a raylm checkpoint's meta.json (no integer 'step')")
    return meta


def local_dir(ckpt: str) -> str:
    """A local directory holding the checkpoint `ckpt` (a copy under /tmp when it is remote)."""
    fs, _ = fsspec.core.url_to_fs(ckpt)
    if is_local(fs):
        return ckpt.split("://", 1)[-1]
    local = tempfile.mkdtemp(prefix="raylm-ckpt-")
    fs.get(ckpt.rstrip("/") + "/", local, recursive=True)
    return local


def latest(path: str) -> str:
    """A checkpoint directory from a run directory (its latest checkpoint, by step) or a checkpoint
    directory itself. Raises FileNotFoundError with what was looked for."""
    fs, _ = fsspec.core.url_to_fs(path)
    path = path.rstrip("/")
    if fs.exists(f"{path}/{STATE}"):
        return path
    metas = fs.glob(f"{path}/train/checkpoint_*/{META}") + fs.glob(f"{path}/checkpoint_*/{META}")
    if not metas:
        raise FileNotFoundError(f"{path}: no checkpoint (looked for {STATE} there and train/checkpoint_*/{META} below)")
    metas = [fs.unstrip_protocol(m) for m in metas] if "://" in path else metas  # glob drops the protocol
    return max(metas, key=lambda m: read_meta(m)["step"]).rsplit("/", 1)[0]


def resolve(path: str) -> str:
    """A local directory holding the checkpoint that `path` names: a checkpoint directory, or a run
    directory's latest checkpoint (copied under /tmp when remote)."""
    return local_dir(latest(path))


class LoadedModel(NamedTuple):
    model: GPT
    enc: Any  # tiktoken.Encoding: the run's own tokenizer
    state: dict  # the checkpoint's state.pt
    path: str  # the local checkpoint directory it came from


def load_model(path: str, device: str = "cpu") -> LoadedModel:
    """The model (eval mode), tokenizer and state of the checkpoint `path` names (see `resolve`)."""
    ckpt = resolve(path)
    state, _ = load(ckpt, 0, device)
    train = TrainConfig.model_validate(state["config"]["train"])
    model = GPT(GPTConfig.from_config(train.model, state["tokenizer"]["n_vocab"], state["tokenizer"].get("eot")))
    model.load_state_dict(state["model"])
    model.to(device).eval()
    return LoadedModel(model, load_encoding(run_tokenizer(state["tokenizer"], ckpt)), state, ckpt)
