"""The search space of `tune.param_space`: dotted recipe keys mapped to one distribution each.

    tune:
      param_space:
        train.optim.lr: {loguniform: [1.0e-4, 1.0e-2]}
        train.optim.weight_decay: {uniform: [0.0, 0.2]}
        train.model.n_layer: {randint: [2, 6]}          # upper bound exclusive, as Ray Tune's
        train.batch.micro_batch_size: {choice: [8, 16]}
        train.schedule.decay: {grid: [cosine, wsd]}

A key that is not in the recipe schema, a spec other than the five above, or bounds that do not
make sense fail with the key's path (ConfigError: exit 2 from the CLI), before Ray starts.
"""

from __future__ import annotations

import copy
from typing import Any

from pydantic import ValidationError

from raylm.core.schema import ConfigError, did_you_mean, fields_at, format_errors
from raylm.tuning.config import Recipe

KINDS = ("loguniform", "uniform", "randint", "choice", "grid")


def _check_key(key: str, recipe: type) -> None:
    parts = tuple(key.split("."))
    if parts[0] == "tune":
        raise ConfigError(f"tune.param_space.{key}: the tune section itself cannot be searched")
    if parts[-1] not in fields_at(parts[:-1], recipe):
        raise ConfigError(f"tune.param_space.{key}: not a key of the recipe{did_you_mean(parts, recipe)}")


def _check_spec(key: str, spec: Any) -> tuple[str, Any]:
    where = f"tune.param_space.{key}"
    if not isinstance(spec, dict) or len(spec) != 1:
        raise ConfigError(f"{where}: expected one of {{{', '.join(KINDS)}: ...}}, got {spec!r}")
    ((kind, arg),) = spec.items()
    if kind not in KINDS:
        raise ConfigError(f"{where}: unknown distribution {kind!r} (one of {', '.join(KINDS)})")
    if kind in ("choice", "grid"):
        if not isinstance(arg, list) or not arg:
            raise ConfigError(f"{where}.{kind}: expected a non-empty list of values")
        return kind, arg
    if not (isinstance(arg, list) and len(arg) == 2 and all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in arg)):
        raise ConfigError(f"{where}.{kind}: expected [low, high], got {arg!r}")
    lo, hi = arg
    if not lo < hi:
        raise ConfigError(f"{where}.{kind}: low must be below high, got [{lo}, {hi}]")
    if kind == "loguniform" and lo <= 0:
        raise ConfigError(f"{where}.loguniform: bounds must be positive, got [{lo}, {hi}]")
    if kind == "randint" and not (float(lo).is_integer() and float(hi).is_integer()):
        raise ConfigError(f"{where}.randint: bounds must be integers, got [{lo}, {hi}]")
    return kind, arg


def set_key(recipe: dict, key: str, value: Any) -> dict:
    """A copy of the recipe dict with the dotted key set."""
    out = copy.deepcopy(recipe)
    node = out
    *parents, last = key.split(".")
    for p in parents:
        node = node.setdefault(p, {})
    node[last] = value
    return out


def validate_space(cfg: Recipe) -> dict[str, tuple[str, Any]]:
    """Every entry of cfg.tune.param_space checked: key in the schema, spec well formed, and every
    value a trial can draw (choice/grid values and the bounds) valid at that key."""
    space = {}
    base = cfg.model_dump(mode="json")
    for key, spec in cfg.tune.param_space.items():
        _check_key(key, type(cfg))
        kind, arg = _check_spec(key, spec)
        values = arg if kind in ("choice", "grid") else ([int(arg[0]), int(arg[1]) - 1] if kind == "randint" else arg)
        for v in values:
            try:
                type(cfg).model_validate(set_key(base, key, v))
            except ValidationError as e:
                raise ConfigError(f"tune.param_space.{key}: value {v!r} is not valid there:\n{format_errors(e, type(cfg))}") from None
        space[key] = (kind, arg)
    if not space:
        raise ConfigError("tune.param_space: empty; give at least one key to search, e.g. train.optim.lr: {loguniform: [1.0e-4, 1.0e-2]}")
    return space


def to_tune(space: dict[str, tuple[str, Any]]) -> dict[str, Any]:
    """Ray Tune search-space objects, keyed by the dotted recipe key."""
    from ray import tune

    make = {
        "loguniform": lambda a: tune.loguniform(*a),
        "uniform": lambda a: tune.uniform(*a),
        "randint": lambda a: tune.randint(int(a[0]), int(a[1])),
        "choice": tune.choice,
        "grid": tune.grid_search,
    }
    return {key: make[kind](arg) for key, (kind, arg) in space.items()}


def apply_trial(recipe: dict, trial_config: dict[str, Any]) -> dict:
    """The recipe with a trial's drawn values set at their dotted keys."""
    for key, value in trial_config.items():
        recipe = set_key(recipe, key, value)
    return recipe
