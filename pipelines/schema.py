"""The base every capability's config section is built on, and the errors a recipe can give.

Each package owns its section (`pipelines/config.py`, `training/config.py`, `tuning/config.py`);
`cluster/recipe.py` composes them. The helpers here are what every layer needs to report a bad
key: the valid field names at a dotted path (for "did you mean") and one line per validation error.
"""

from __future__ import annotations

import difflib
import typing

from pydantic import BaseModel, ConfigDict, ValidationError


class Strict(BaseModel):
    """Unknown keys are errors; assignments are validated too."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True)


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
        else:
            lines.append(f"{path}: {e['msg'].removeprefix('Value error, ')}")
    return "\n".join(lines)
