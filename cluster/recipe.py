"""The recipe: one YAML file describes a whole run. This module only composes the capabilities' own
sections (`pipelines/config.py` data, `training/config.py` train, `tuning/config.py` tune) with the run's
name, storage and Ray connection, loads YAML, applies `--set`, and formats errors.

Unknown keys are rejected with their dotted path and a "did you mean"; `--set a.b=c`
overrides are applied to the raw YAML before validation so they are checked the same way.
"""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError, field_validator

from raylm.core.paths import RunPaths
from raylm.core.schema import ConfigError, Strict, format_errors
from raylm.pipelines.config import DataConfig
from raylm.training.config import TrainConfig, TrainJob
from raylm.tuning.config import TuneConfig

__all__ = ["ConfigError", "RayConfig", "RecipeWarning", "RunConfig", "dump_config", "load_config", "read_recipe"]


class RayConfig(Strict):
    address: str | None = None  # null: RAY_ADDRESS, else a running `ray start`, else a local instance
    runtime_env: dict[str, Any] = {}


class RunConfig(Strict):
    name: str = "run"  # the run directory below storage_path (may contain '/', never leaves it)
    storage_path: str = "./runs"
    ray: RayConfig = RayConfig()
    data: DataConfig = DataConfig()
    train: TrainConfig = TrainConfig()
    tune: TuneConfig = TuneConfig()

    @field_validator("name")
    @classmethod
    def _inside_storage(cls, v: str) -> str:
        parts = v.split("/")
        if not v or v.startswith(("/", "~")) or "://" in v or "\\" in v or any(p in ("", ".", "..") for p in parts):
            raise ValueError(f"{v!r} must be a relative path below storage_path (no leading '/', '~', '..', '.' or empty parts)")
        return v

    @field_validator("name", "storage_path")
    @classmethod
    def _printable(cls, v: str) -> str:
        if any(ord(c) < 32 or ord(c) == 127 for c in v):
            raise ValueError(f"{v!r} holds a control character (newline, NUL, ...): not a usable path")
        return v

    @field_validator("storage_path")
    @classmethod
    def _no_parent_parts(cls, v: str) -> str:
        if not v.strip():
            raise ValueError("must not be empty")
        if ".." in v.replace("\\", "/").split("/"):
            raise ValueError(f"{v!r} contains '..': give an absolute path (or one below the current directory) instead")
        return v

    @property
    def paths(self) -> RunPaths:
        """Every path of this run (core/paths.py)."""
        return RunPaths.of(self)

    def train_job(self) -> TrainJob:
        """What training takes of this recipe (training/config.py), of its section as validated here."""
        return TrainJob(self.train, self.paths, self.model_dump(mode="json"))


class RecipeLoader(yaml.SafeLoader):
    """YAML as raylm reads a recipe: a key given twice in one mapping is an error (PyYAML keeps the last one
    silently). Keys beside a merge (`<<: *base`) still override the merged ones, as YAML means them to."""

    def construct_mapping(self, node: yaml.Node, deep: bool = False) -> dict:
        if isinstance(node, yaml.MappingNode):
            first: dict = {}
            for key_node, _ in node.value:
                if key_node.tag == "tag:yaml.org,2002:merge":
                    continue
                key = self.construct_object(key_node, deep=True)
                try:
                    seen = first.get(key)
                except TypeError:  # an unhashable key: PyYAML's own error names it
                    continue
                if seen is not None:
                    raise yaml.constructor.ConstructorError(None, None, f"duplicate key {key!r} (first on line {seen})", key_node.start_mark)
                first[key] = key_node.start_mark.line + 1
        return super().construct_mapping(node, deep)


def yaml_problem(e: yaml.YAMLError) -> str:
    """A YAML error in one line: where (line, column), the problem, and what was being parsed where."""
    mark, context_mark = getattr(e, "problem_mark", None), getattr(e, "context_mark", None)
    where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
    problem = getattr(e, "problem", None) or str(e).splitlines()[0]
    context = getattr(e, "context", None)
    if context and context_mark is not None:
        problem += f" ({context} at line {context_mark.line + 1}, column {context_mark.column + 1})"
    return f"invalid YAML{where}: {problem}"


def load_yaml(text: str):
    """The document of a recipe or of a --set value (RecipeLoader: no duplicate keys)."""
    return yaml.load(text, Loader=RecipeLoader)  # noqa: S506 - a SafeLoader subclass


class RecipeWarning(UserWarning):
    """A recipe that works but is probably not what was meant; the CLI prints it as one line."""


def parse_override(item: str) -> tuple[list[str], Any]:
    if "=" not in item:
        raise ConfigError(f"--set {item!r}: expected key=value")
    key, value = item.split("=", 1)
    if not key or any(not p for p in key.split(".")):
        raise ConfigError(f"--set {item!r}: bad key")
    try:
        return key.split("."), load_yaml(value) if value != "" else ""
    except yaml.YAMLError as e:
        problem = (getattr(e, "problem", None) or str(e).splitlines()[0]).replace("'\\x00'", "the end")
        # a duplicate key is no quoting matter
        hint = "" if isinstance(e, yaml.constructor.ConstructorError) else f"; quote it: --set '{key}=\"...\"'"
        raise ConfigError(f"--set {item!r}: the value is not valid YAML ({problem}){hint}") from None


# a recipe holds one of each pair: a --set of one replaces the other the recipe file has
_REPLACES = {("data", "sources"): ("data", "inputs"), ("data", "inputs"): ("data", "sources")}


def apply_overrides(raw: dict, overrides: list[str]) -> dict:
    for item in overrides:
        keys, value = parse_override(item)
        other = _REPLACES.get(tuple(keys[:2]))
        if other is not None and isinstance(raw.get(other[0]), dict):
            raw[other[0]].pop(other[1], None)
        node = raw
        for k in keys[:-1]:
            if not isinstance(node.get(k, {}), dict):
                raise ConfigError(f"--set {item!r}: '{k}' is not a section")
            node = node.setdefault(k, {})
        node[keys[-1]] = value
    return raw


def read_recipe(path: str | Path) -> dict:
    """The recipe file as a mapping; every way it can be unusable is a ConfigError naming the file."""
    try:
        text = Path(path).read_bytes().decode("utf-8")
    except OSError as e:
        raise ConfigError(f"cannot read recipe {path}: {e.strerror or e}") from None
    except UnicodeDecodeError as e:
        raise ConfigError(f"{path}: not UTF-8 text (byte {e.start}): a recipe is a YAML file") from None
    try:
        raw = load_yaml(text)
    except yaml.YAMLError as e:
        raise ConfigError(f"{path}: {yaml_problem(e)}") from None
    if raw is None:
        warnings.warn(f"{path} is empty: every key takes its default (raylm validate {path} prints them)", RecipeWarning, stacklevel=2)
        return {}
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: the recipe must be a mapping at the top level, not a {type(raw).__name__}")
    return raw


def load_config(path: str | Path | None = None, overrides: list[str] | None = None) -> RunConfig:
    raw = read_recipe(path) if path is not None else {}
    raw = apply_overrides(raw, overrides or [])
    try:
        return RunConfig.model_validate(raw)
    except ValidationError as e:
        raise ConfigError(format_errors(e, RunConfig)) from None


def dump_config(cfg: RunConfig) -> str:
    return yaml.safe_dump(cfg.model_dump(mode="json"), sort_keys=False)
