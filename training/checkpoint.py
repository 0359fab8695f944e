"""Checkpoint contents and where to find them.

A checkpoint directory holds, in either format:
- `meta.json`: step, format, world size, model, train section and the files the checkpoint consists of. It is
  written last, and a checkpoint counts only when every file it names is there (`missing`);
- one `rng-{rank}.pt` per rank;
- for file tokenizers, `tokenizer.tiktoken` (+ `.json`), so that a checkpoint copied elsewhere still decodes.

`format: sharded` (the default): `dcp/`, a torch.distributed.checkpoint of the model and optimizer state in which
each rank wrote its own part (FSDP2: its shards; DDP: replicated tensors once, spread over the ranks), nothing
gathered; `trainer.pt` (rank 0): scheduler, loader position, step, resolved config, tokenizer entry, world size.
DCP reshards on load, so a checkpoint resumes on another number of workers and under DDP or FSDP2 alike; tools
read it without a process group (DCP's no_dist load into a bare GPT: `load`).

`format: full`: `state.pt`, the whole model and optimizer state gathered on rank 0 (keyed by parameter name),
plus what trainer.pt holds. Everything loads with `torch.load(weights_only=True)`.
"""

from __future__ import annotations

import json
import os
import random
import tempfile
import warnings
from typing import Any, NamedTuple

import fsspec
import numpy as np
import torch

from raylm.core.io import is_local, write_json
from raylm.core.paths import TOKENIZER, RunPaths
from raylm.core.tokenizer import copy_tokenizer, load_encoding, meta_path, run_tokenizer
from raylm.training.config import TrainConfig
from raylm.training.mixture import recipe_weights
from raylm.training.model import GPT, GPTConfig

STATE, META, TRAINER, DCP = "state.pt", "meta.json", "trainer.pt", "dcp"
_STATE_KEYS = ("model", "config", "tokenizer", "step")  # what every raylm state.pt holds
_TRAINER_KEYS = ("config", "tokenizer", "step")  # ... and trainer.pt


class CheckpointError(ValueError):
    """A path that holds no usable raylm checkpoint (another program's file, a damaged or truncated one): the CLI
    exits 2."""


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


def _options(full: bool = True):
    from torch.distributed.checkpoint.state_dict import StateDictOptions

    return StateDictOptions(full_state_dict=full, cpu_offload=full)


def _optimizers(opt: torch.optim.Optimizer):
    return getattr(opt, "optimizers", opt)  # training.optim.Combined: each inner optimizer's state


def full_state(model: torch.nn.Module, opt: torch.optim.Optimizer) -> tuple[dict, dict]:
    """Unsharded model and optimizer state keyed by parameter name. A collective: call on every rank."""
    from torch.distributed.checkpoint.state_dict import get_state_dict

    return get_state_dict(model, _optimizers(opt), options=_options())


def sharded_state(model: torch.nn.Module, opt: torch.optim.Optimizer) -> dict:
    """This rank's model and optimizer state as DCP saves and loads it: keyed by parameter name, FSDP2's parameters
    as DTensors (its shards), DDP's whole. A collective: call on every rank."""
    from torch.distributed.checkpoint.state_dict import get_state_dict

    model_sd, optim_sd = get_state_dict(model, _optimizers(opt), options=_options(full=False))
    return {"model": model_sd, "optim": optim_sd}


def load_full_state(model: torch.nn.Module, opt: torch.optim.Optimizer, model_sd: dict, opt_sd: dict) -> None:
    from torch.distributed.checkpoint.state_dict import set_state_dict

    set_state_dict(model, _optimizers(opt), model_state_dict=model_sd, optim_state_dict=opt_sd, options=_options())


def load_model_weights(model: torch.nn.Module, model_sd: dict) -> None:
    """Weights only (fine-tuning from another run): every rank passes the full state dict."""
    from torch.distributed.checkpoint.state_dict import set_model_state_dict

    set_model_state_dict(model, model_sd, options=_options())


def _meta(state: dict, fmt: str, world: int, files: list[str]) -> dict:
    c = state["config"]
    return {
        "step": state["step"],
        "format": fmt,
        "world": world,
        "files": sorted(files),
        "tokenizer": state["tokenizer"]["name"],
        "tokenizer_sha256": state["tokenizer"].get("sha256"),
        "model": c["train"]["model"],
        "train": c["train"],  # what a resume with another recipe is checked against (driver.check_resume)
        "weights": recipe_weights(c),  # ... and a mixture's source weights, which the data section holds
        "run_dir": RunPaths(c["storage_path"], c["name"]).root,
    }


def _copy_tokenizer(directory: str, tokenizer_dir: str | None) -> list[str]:
    if tokenizer_dir is None:
        return []
    src = f"{tokenizer_dir}/{TOKENIZER}"
    fs, _ = fsspec.core.url_to_fs(src)
    if not fs.exists(src):
        return []
    copy_tokenizer(src, os.path.join(directory, TOKENIZER))
    return [f for f in (TOKENIZER, meta_path(TOKENIZER)) if os.path.exists(os.path.join(directory, f))]


def save_rng(directory: str, rank: int) -> None:
    """This rank's RNG states, `rng-{rank}.pt` in the checkpoint directory (`load_rng` reads them)."""
    torch.save(rng_state(), os.path.join(directory, f"rng-{rank}.pt"))


def save(directory: str, rank: int, state: dict | None, tokenizer_dir: str | None = None, world: int = 1) -> None:
    """A full checkpoint's part of this rank, into a local directory: its RNG states, and on rank 0 (`state` given:
    `full_state` plus the trainer's state) state.pt, the tokenizer files and, last, meta.json."""
    save_rng(directory, rank)
    if state is None:
        return
    torch.save(state, os.path.join(directory, STATE))
    files = [STATE, *(f"rng-{r}.pt" for r in range(world)), *_copy_tokenizer(directory, tokenizer_dir)]
    write_json(os.path.join(directory, META), _meta(state, "full", world, files), indent=None)


def save_sharded(directory: str, rank: int, world: int, state: dict, trainer: dict | None, tokenizer_dir: str | None = None, pg=None) -> None:
    """A sharded checkpoint's part of this rank, into a local directory (every rank its own; Ray Train gathers the
    ranks' directories into one): `state` (`sharded_state`) through DCP, written by every rank in parallel (a
    collective), its RNG states, and on rank 0 (`trainer` given) trainer.pt, the tokenizer files and, once DCP has
    written every rank's part, meta.json."""
    import torch.distributed.checkpoint as dcp

    save_rng(directory, rank)
    written = dcp.save(state, checkpoint_id=os.path.join(directory, DCP), process_group=pg)
    if trainer is not None:
        finish_sharded(directory, world, trainer, written, tokenizer_dir)


def finish_sharded(directory: str, world: int, trainer: dict, written, tokenizer_dir: str | None = None) -> None:
    """Rank 0's end of a sharded save, once DCP returned its Metadata (`written`): trainer.pt, the tokenizer files,
    then meta.json naming every file of every rank."""
    torch.save(trainer, os.path.join(directory, TRAINER))
    shards = sorted({f"{DCP}/{info.relative_path}" for info in written.storage_data.values()})
    files = [f"{DCP}/.metadata", *shards, TRAINER, *(f"rng-{r}.pt" for r in range(world)), *_copy_tokenizer(directory, tokenizer_dir)]
    write_json(os.path.join(directory, META), _meta(trainer, "sharded", world, files), indent=None)


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


def _check_keys(path: str, state: Any, keys: tuple[str, ...]) -> dict:
    missing = [k for k in keys if not isinstance(state, dict) or k not in state]
    if missing:
        raise CheckpointError(f"{path}: not a raylm checkpoint (it has no {', '.join(missing)})")
    return state


def read_trainer(directory: str) -> dict:
    """A sharded checkpoint's trainer.pt (CheckpointError when it is not raylm's)."""
    path = os.path.join(directory, TRAINER)
    return _check_keys(path, _torch_load(path), _TRAINER_KEYS)


def bare_model(state: dict) -> GPT:
    """A GPT of the checkpoint's design, freshly initialized (its weights are loaded next)."""
    train = TrainConfig.model_validate(state["config"]["train"])
    return GPT(GPTConfig.from_config(train.model, state["tokenizer"]["n_vocab"], state["tokenizer"].get("eot")))


def is_sharded(directory: str) -> bool:
    return os.path.exists(os.path.join(directory, TRAINER)) or os.path.isdir(os.path.join(directory, DCP))


def _cause(e: BaseException) -> str:
    """The first line of what went wrong, through DCP's CheckpointException (which wraps each rank's error)."""
    failures = getattr(e, "failures", None)
    if failures:
        e = next(iter(failures.values()))[0]  # (exception, traceback) of the first rank that failed
    return f"{type(e).__name__}: {(str(e).splitlines() or [''])[0][:200]}"


def load(directory: str, rank: int, device: torch.device | str = "cpu") -> tuple[dict[str, Any], dict | None]:
    """The checkpoint's state as a full checkpoint's state.pt holds it, and this rank's RNG states (None when the
    checkpoint was written by fewer ranks). A sharded checkpoint's model weights are read whole, without a process
    group (DCP's no_dist load into a bare GPT's state dict); its optimizer state is left out ("optimizer" absent)."""
    check_complete(directory)
    if is_sharded(directory):
        import torch.distributed.checkpoint as dcp
        from torch.distributed.checkpoint.api import CheckpointException

        state = read_trainer(directory)
        weights = {"model": bare_model(state).state_dict()}
        try:
            with warnings.catch_warnings():  # "assuming the intent is to load in a single process": it is
                warnings.filterwarnings("ignore", message=".*single process", category=UserWarning)
                dcp.load(weights, checkpoint_id=os.path.join(directory, DCP), no_dist=True)
        except (Exception, CheckpointException) as e:  # noqa: BLE001 - DCP's own (a BaseException), KeyError, ...
            raise CheckpointError(f"{directory}/{DCP}: cannot be read as this model's weights ({_cause(e)})") from None
        state = {**state, "model": {k: v.to(device) for k, v in weights["model"].items()}}
    else:
        path = os.path.join(directory, STATE)
        state = _check_keys(path, _torch_load(path, device), _STATE_KEYS)
    return state, load_rng(directory, rank)


def load_rng(directory: str, rank: int) -> dict | None:
    """This rank's RNG states (None when the checkpoint was written by fewer ranks)."""
    path = os.path.join(directory, f"rng-{rank}.pt")
    return _torch_load(path) if os.path.exists(path) else None


def restore_sharded(directory: str, model: torch.nn.Module, opt: torch.optim.Optimizer) -> dict:
    """Load a sharded checkpoint's model and optimizer state into this rank's (any world size, DDP or FSDP2: DCP
    reads the parts this rank holds); returns its trainer.pt. A collective: call on every rank."""
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.state_dict import set_state_dict

    trainer = read_trainer(directory)
    state = sharded_state(model, opt)  # the optimizer's state tensors exist already (get_state_dict creates them)
    dcp.load(state, checkpoint_id=os.path.join(directory, DCP))
    set_state_dict(model, _optimizers(opt), model_state_dict=state["model"], optim_state_dict=state["optim"], options=_options(full=False))
    return trainer


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


def missing(directory: str, meta: dict | None = None) -> list[str]:
    """The files of the checkpoint `directory` (local or URL) that its meta.json names and that are not there: a
    save still being written or uploaded, or one cut short. A checkpoint whose meta.json names no files (written
    before meta.json did) needs its state.pt."""
    fs, _ = fsspec.core.url_to_fs(directory)
    directory = directory.rstrip("/")
    if meta is None:
        if not fs.exists(f"{directory}/{META}"):
            return [META]
        meta = read_meta(f"{directory}/{META}")
    root = fs._strip_protocol(directory)
    have = {p[len(root) + 1 :] for p in fs.find(root)}
    return [f for f in meta.get("files") or [STATE] if f not in have]


def check_complete(directory: str) -> None:
    """CheckpointError naming what is missing when `directory` is not a whole raylm checkpoint."""
    gone = missing(directory)
    if gone:
        shown = ", ".join(gone[:3]) + (f" and {len(gone) - 3} more" if len(gone) > 3 else "")
        what = "not a raylm checkpoint" if gone == [META] else "an incomplete checkpoint (a save cut short, or a partial copy)"
        raise CheckpointError(f"{directory}: {what}: {shown} missing")


def latest(path: str) -> str:
    """A checkpoint directory from a run directory (its latest complete checkpoint, by step) or a checkpoint
    directory itself. Raises FileNotFoundError with what was looked for, CheckpointError when the run's
    checkpoints are all incomplete."""
    fs, _ = fsspec.core.url_to_fs(path)
    path = path.rstrip("/")
    if fs.exists(f"{path}/{META}") or fs.exists(f"{path}/{STATE}"):
        return path
    metas = fs.glob(f"{path}/train/checkpoint_*/{META}") + fs.glob(f"{path}/checkpoint_*/{META}")
    if not metas:
        raise FileNotFoundError(f"{path}: no checkpoint (looked for {META} there and train/checkpoint_*/{META} below)")
    metas = [fs.unstrip_protocol(m) for m in metas] if "://" in path else metas  # glob drops the protocol
    found = sorted(((read_meta(m), m.rsplit("/", 1)[0]) for m in metas), key=lambda x: -x[0]["step"])
    for meta, d in found:
        if not missing(d, meta):
            return d
    check_complete(found[0][1])  # raises, naming what the newest lacks
    return found[0][1]


def resolve(path: str) -> str:
    """A local directory holding the checkpoint that `path` names: a checkpoint directory, or a run
    directory's latest checkpoint (copied under /tmp when remote)."""
    return local_dir(latest(path))


class LoadedModel(NamedTuple):
    model: GPT
    enc: Any  # tiktoken.Encoding: the run's own tokenizer
    state: dict  # the checkpoint's state (`load`)
    path: str  # the local checkpoint directory it came from


def load_model(path: str, device: str = "cpu") -> LoadedModel:
    """The model (eval mode), tokenizer and state of the checkpoint `path` names (see `resolve`), either format."""
    ckpt = resolve(path)
    state, _ = load(ckpt, 0, device)
    model = bare_model(state)
    model.load_state_dict(state["model"])
    model.to(device).eval()
    return LoadedModel(model, load_encoding(run_tokenizer(state["tokenizer"], ckpt)), state, ckpt)
