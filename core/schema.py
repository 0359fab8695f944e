"""The base every capability's config section is built on, and the errors a recipe can give.

Each package owns its section (`pipelines/config.py`, `training/config.py`, `tuning/config.py`);
`cluster/recipe.py` composes them. The helpers here are what every layer needs to report a bad
key: the valid field names at a dotted path (for "did you mean") and one line per validation error.
"""

from __future__ import annotations

import difflib
import math
import typing

from pydantic import BaseModel, ConfigDict, ValidationError, field_validator


def non_finite(value: typing.Any, where: str = "") -> str | None:
    """The dotted place of the first inf or nan inside plain data (dicts, lists, tuples), or None."""
    if isinstance(value, float) and not math.isfinite(value):
        return where
    items = value.items() if isinstance(value, dict) else enumerate(value) if isinstance(value, (list, tuple)) else ()
    for k, v in items:
        found = non_finite(v, f"{where}.{k}" if where else str(k))
        if found is not None:
            return found
    return None


class Strict(BaseModel):
    """Unknown keys are errors; assignments are validated too. No number in a recipe is inf or nan: a float
    field refuses them (allow_inf_nan), and so does free-form data (tune.param_space, ray.runtime_env), checked
    here once for every section. Every int and float field declares an upper bound too
    (tests/test_config_bounds.py walks the schema)."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True, allow_inf_nan=False)

    @field_validator("*", mode="after")
    @classmethod
    def _finite(cls, v: typing.Any) -> typing.Any:
        # typed floats are refused by pydantic already; this reaches the values of Any-typed fields
        if not isinstance(v, BaseModel):
            where = non_finite(v)
            if where is not None:
                raise ValueError(f"{where + ': ' if where else ''}not a finite number (inf and nan are refused)")
        return v


class ConfigError(ValueError):
    """A recipe problem the user must fix; the CLI prints it and exits 2."""


def fields_at(path: tuple, model: type[BaseModel]) -> list[str]:
    """Field names valid at a dotted path below `model`, for did-you-mean suggestions. A dict of sections
    (data.sources) takes any name as the part after it."""
    named = False
    for part in path:
        if named:
            named = False
            continue
        field = model.model_fields.get(str(part)) if isinstance(model, type) and issubclass(model, BaseModel) else None
        if field is None:
            return []
        ann = field.annotation
        named = typing.get_origin(ann) is dict
        # unwrap Optional[...] and list[...] to the model inside
        for arg in getattr(ann, "__args__", None) or (ann,):
            if isinstance(arg, type) and issubclass(arg, BaseModel):
                model = arg
                break
        else:
            if isinstance(part, int):
                continue
            return []
    return list(model.model_fields) if isinstance(model, type) and issubclass(model, BaseModel) else []


def did_you_mean(parts: tuple, model: type[BaseModel]) -> str:
    """' (did you mean 'a.b.c'?)' for the nearest valid last part of a dotted key, or ''."""
    near = difflib.get_close_matches(str(parts[-1]), fields_at(parts[:-1], model), n=1)
    return f" (did you mean '{'.'.join(str(p) for p in parts[:-1] + (near[0],))}'?)" if near else ""


def format_errors(err: ValidationError, model: type[BaseModel]) -> str:
    """One line per error: the dotted key, and what is wrong with it."""
    lines = []
    for e in err.errors():
        loc = tuple(p for p in e["loc"] if not (isinstance(p, str) and p.startswith(("function-", "literal["))))
        path = ".".join(str(p) for p in loc) or "(recipe)"
        if e["type"] == "extra_forbidden":
            lines.append(f"{path}: unknown key{did_you_mean(loc, model)}")
        elif e["type"] == "finite_number":
            lines.append(f"{path}: not a finite number (inf and nan are refused)")
        else:
            lines.append(f"{path}: {e['msg'].removeprefix('Value error, ')}")
    return "\n".join(lines)
