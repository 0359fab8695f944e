"""Every number in the recipe schema has declared bounds (pydantic ge/gt/le/lt), and each bound holds at its
boundary: the boundary value itself validates (or not, for gt/lt) and the value just past it fails with its key."""

from __future__ import annotations

import typing

import annotated_types as at
import pytest
from pydantic import BaseModel
from pydantic.fields import FieldInfo

# values some fields need beside the one under test, for cross-field rules to hold
from cluster.recipe import RunConfig, load_config
from pipelines.schema import ConfigError

# values some fields need beside the one under test, for cross-field rules to hold
COMPANIONS = {
    "data.dedup.minhash.bands": {"rows": 1},
    "data.dedup.minhash.rows": {"bands": 1},
    "train.model.d_model": {"n_head": 1},
    "train.model.n_head": {"d_model": 64},
    "train.batch.global_batch_tokens": {"micro_batch_size": 1},
    "data.sources.x.weight": {"inputs": [{"path": "x.jsonl"}]},
}
# ... and in other sections
OTHERS = {"train.batch.global_batch_tokens": {"train": {"model": {"seq_len": 1}, "scaling": {"num_workers": 1}}}}


def _model_of(ann) -> type[BaseModel] | None:
    for a in typing.get_args(ann) or (ann,):
        if isinstance(a, type) and issubclass(a, BaseModel):
            return a
    return None


def _is_number(ann) -> bool:
    args = [a for a in (typing.get_args(ann) or (ann,)) if a is not type(None)]
    return bool(args) and all(a in (int, float) for a in args)


def _bounds(metadata) -> list:
    flat = [x for m in metadata for x in (m.metadata if isinstance(m, FieldInfo) else [m])]
    return [m for m in flat if isinstance(m, (at.Gt, at.Ge, at.Lt, at.Le))]


def _numbers(model: type[BaseModel] = RunConfig, prefix: str = ""):
    """(dotted key, kind, bounds, required siblings) of every numeric leaf of the schema."""
    for name, f in model.model_fields.items():
        key = f"{prefix}{name}"
        sub = _model_of(f.annotation)
        if sub is not None and typing.get_origin(f.annotation) is dict:  # named sections (data.sources): one named x
            yield from _numbers(sub, key + ".x.")
        elif sub is not None and typing.get_origin(f.annotation) is not list:
            yield from _numbers(sub, key + ".")
        elif _is_number(f.annotation):
            yield key, "scalar", _bounds(f.metadata), int if int in typing.get_args(f.annotation) + (f.annotation,) else float
        elif typing.get_origin(f.annotation) in (tuple, dict) and typing.get_args(f.annotation)[-1] is not typing.Any:
            inner = typing.get_args(f.annotation)[-1]
            yield key, typing.get_origin(f.annotation).__name__, _bounds(getattr(inner, "__metadata__", ())), float


NUMBERS = list(_numbers())


def _raw(key: str, value, kind: str) -> dict:
    """A recipe setting `key` (and what its section needs) to `value`."""
    parts = key.split(".")
    value = {"tuple": [value, 0.5], "dict": {"CPU": value}}.get(kind, value)
    section = {parts[-1]: value, **COMPANIONS.get(key, {})}
    if parts[:-1] == ["data", "tokenizer", "train"] and parts[-1] != "vocab_size":
        section["vocab_size"] = 4096
    if parts[:-1] == ["data", "clean", "chars"] or parts[:-1] == ["data", "clean", "words"] or parts[-2:-1] == ["mean_word_length"]:
        section.setdefault("min" if parts[-1] == "max" else "max", None)
    raw: dict = section
    for p in reversed(parts[:-1]):
        raw = {p: raw}
    if parts[:2] == ["data", "sources"]:  # a second source with a weight: x's may then be 0
        raw["data"]["sources"]["y"] = {"inputs": [{"path": "y.jsonl"}]}
    for top, sub in OTHERS.get(key, {}).items():
        for name, values in sub.items():
            raw[top][name] = values
    return raw


def _validates(key, value, kind) -> bool:
    try:
        RunConfig.model_validate(_raw(key, value, kind))
        return True
    except Exception as e:  # noqa: BLE001
        assert key.rsplit(".", 1)[-1] in str(e), (key, value, str(e)[:300])
        return False


def test_every_number_has_bounds():
    assert len(NUMBERS) > 40
    unbounded = [k for k, _, b, _ in NUMBERS if not b]
    assert not unbounded, f"numeric recipe keys without bounds: {unbounded}"


@pytest.mark.parametrize("key,kind,bounds,typ", NUMBERS, ids=[n[0] for n in NUMBERS])
def test_bounds_hold_at_their_boundary(key, kind, bounds, typ):
    for b in bounds:
        edge = next(getattr(b, a) for a in ("gt", "ge", "lt", "le") if hasattr(b, a))
        step = 1 if typ is int else max(abs(edge) * 1e-6, 1e-9)
        inside = {at.Gt: edge + step, at.Ge: edge, at.Lt: edge - step, at.Le: edge}[type(b)]
        outside = {at.Gt: edge, at.Ge: edge - step, at.Lt: edge, at.Le: edge + step}[type(b)]
        assert _validates(key, inside, kind), (key, inside)
        assert not _validates(key, outside, kind), (key, outside)


@pytest.mark.parametrize(
    "override",
    [
        "train.batch.micro_batch_size=0",
        "train.max_steps=0",
        "train.max_steps=-5",
        "train.eval.every=0",
        "train.checkpoint.every=0",
        "train.optim.lr=-1e-3",
        "train.scaling.num_workers=0",
        "train.batch.global_batch_tokens=0",
        "storage_path=runs/../../x",
        'name="a\\x00b"',
        'name="a\\nb"',
        "data.clean.chars={min: 500, max: 100}",
    ],
)
def test_values_that_cannot_work_fail_validation(override):  # defect 8
    with pytest.raises(ConfigError):
        load_config(None, [override])
