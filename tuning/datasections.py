"""Data ablations: a campaign whose tune.param_space holds data keys.

    tune:
      param_space:
        data.quality.fasttext.keep_fraction: {grid: [0.5, 0.7, 1.0]}

Each distinct data section the search can draw is built once, before any trial, and every trial drawing it trains
on it: a section is keyed by the sha256 of its canonical JSON (as Marin's executor keys its steps by their
config), under `{run}/data-sections/<key>/data`, so a rerun of the campaign (or another campaign of the same name)
finds it done. Data keys take `grid` or `choice` values only (a finite set of sections). Every trial is measured on
the same held-out data whatever its section kept: train.eval.data_path, by default the campaign's own data/ (the
recipe's data section as written), whose val split holds every document the sections' hash split sends to
validation, and the same downstream tasks. One tokenizer serves all: a recipe that trains one (data.tokenizer.train)
trains it in its own data/, and the sections read it from there (data.tokenizer.path).
"""

from __future__ import annotations

import hashlib
import itertools
import json
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from raylm.core.io import absolute
from raylm.core.paths import TOKENIZER, RunPaths
from raylm.core.schema import ConfigError
from raylm.tuning.config import Recipe
from raylm.tuning.space import apply_trial

DATA = "data."
SECTIONS = "data-sections"  # {run}/data-sections/<key>/data


@dataclass(frozen=True)
class Section:
    """One data section a campaign draws: the values of its data keys, the section, its key and where it is built."""

    values: dict[str, Any]
    data: Any  # the recipe type's validated data section
    key: str
    paths: RunPaths


def data_keys(cfg: Recipe) -> list[str]:
    """The data keys of the search space, in the order given."""
    return [k for k in cfg.tune.param_space if k.startswith(DATA)]


def check_data_keys(cfg: Recipe, space: dict[str, tuple[str, Any]]) -> None:
    """Data keys draw from a finite set (grid or choice), and the campaign builds its own shards."""
    for key in data_keys(cfg):
        if space[key][0] not in ("grid", "choice"):
            raise ConfigError(f"tune.param_space.{key}: a data key takes grid or choice values (each data section is built before the trials)")
    if data_keys(cfg) and cfg.train.data_path is not None:
        raise ConfigError("tune.param_space: data keys build their own shards; leave train.data_path unset")


def value_key(values: dict[str, Any]) -> str:
    """The data keys' values of a trial as one string: how a trial finds its section."""
    return json.dumps({k: v for k, v in sorted(values.items()) if k.startswith(DATA)}, sort_keys=True)


def section_key(data: dict) -> str:
    """The sha256 (first 16 hex digits) of a data section's canonical JSON."""
    return hashlib.sha256(json.dumps(data, sort_keys=True, separators=(",", ":")).encode()).hexdigest()[:16]


def _drawn(cfg: Recipe) -> Iterator[tuple[dict[str, Any], Any, str]]:
    """Each combination of the data keys' values: the values, the validated data section and its key."""
    keys = data_keys(cfg)
    base = cfg.model_dump(mode="json")
    if base["data"]["tokenizer"].get("train") is not None:  # the campaign's own data/ trains the one tokenizer
        base["data"]["tokenizer"] = {"name": None, "path": absolute(f"{cfg.paths.data}/{TOKENIZER}")}
    options = [cfg.tune.param_space[k].get("grid", cfg.tune.param_space[k].get("choice")) for k in keys]
    for combo in itertools.product(*options):
        values = dict(zip(keys, combo))
        data = type(cfg).model_validate(apply_trial(base, values)).data
        yield values, data, section_key(data.model_dump(mode="json"))


def _paths(cfg: Recipe, key: str) -> RunPaths:
    return RunPaths(absolute(cfg.storage_path), f"{cfg.name}/{SECTIONS}/{key}")  # trials do not share the driver's directory


def sections(cfg: Recipe) -> list[Section]:
    """Every distinct data section of the search space (none when it has no data keys)."""
    out: dict[str, Section] = {}
    for values, data, key in _drawn(cfg) if data_keys(cfg) else ():
        out.setdefault(key, Section(values, data, key, _paths(cfg, key)))
    return list(out.values())


def section_dirs(cfg: Recipe) -> dict[str, str]:
    """value_key of every combination of the data keys' values -> the data directory of its section."""
    return {value_key(values): _paths(cfg, key).data for values, _, key in (_drawn(cfg) if data_keys(cfg) else ())}
