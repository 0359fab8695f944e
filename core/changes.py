"""Which keys of a recipe section differ between what made a result (a finished data stage, a checkpoint) and the
recipe asking for it again: the one rule behind refusing a data stage's rerun and a training run's resume.

Every key counts unless a pattern names it safe to change (deny by default): a section added to the schema is
covered the day it is added, without anyone listing it. A key the older side lacks (it was made before the key
existed) had its default's effect then, so it is compared as that default.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from typing import Any


def flat(d: Any, prefix: str = "", lists: bool = True) -> dict[str, Any]:
    """Nested dicts as dotted keys; with `lists`, a list's items are keys of their own (`a.b[0]`, an empty list its
    own value), else a list is one value."""
    if isinstance(d, dict):
        return {k: v for key, val in d.items() for k, v in flat(val, f"{prefix}.{key}" if prefix else str(key), lists).items()}
    if lists and isinstance(d, list):
        return {k: v for i, val in enumerate(d) for k, v in flat(val, f"{prefix}[{i}]", lists).items()} or {prefix: []}
    return {prefix: d}


def with_defaults(have: dict, defaults: dict) -> dict:
    """`have` with every key it lacks taken from `defaults`, section by section."""
    out = dict(have)
    for k, v in defaults.items():
        if k not in out:
            out[k] = v
        elif isinstance(v, dict) and isinstance(out[k], dict):
            out[k] = with_defaults(out[k], v)
    return out


def safe_matcher(patterns: Iterable[str]) -> re.Pattern:
    """A dotted key matches a pattern that names it or a section or list above it; `*` stands for one key."""
    alts = [re.escape(p).replace(r"\*", r"[^.\[]+") for p in patterns]
    return re.compile(rf"(?:{'|'.join(alts)})(?:$|[.\[])" if alts else r"(?!)")


def changes(have: dict, want: dict, prefix: str, safe: Iterable[str] = (), defaults: dict | None = None) -> dict[str, tuple[Any, Any]]:
    """The dotted keys (below `prefix`) whose value differs between `have`, what made the result, and `want`, the
    recipe now, each with (its value there, its value here), sorted; none that a `safe` pattern matches. A key
    `have` lacks is compared as its value in `defaults`."""
    a, b = flat(with_defaults(have, defaults or {}), prefix), flat(want, prefix)
    ok = safe_matcher(safe)
    return {k: (a.get(k), b.get(k)) for k in sorted(a.keys() | b.keys()) if a.get(k) != b.get(k) and not ok.match(k)}
