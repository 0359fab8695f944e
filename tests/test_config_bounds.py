"""Every number in the recipe schema has declared bounds (pydantic ge/gt/le/lt), and each bound holds at its
boundary: the boundary value itself validates (or not, for gt/lt) and the value just past it fails with its key."""

from __future__ import annotations

import math
import typing

import annotated_types as at
import pytest
from pydantic import BaseModel
from pydantic.fields import FieldInfo

# values some fields need beside the one under test, for cross-field rules to hold
from raylm.cluster.recipe import RunConfig, load_config
from raylm.core.schema import ConfigError

# values some fields need beside the one under test, for cross-field rules to hold
COMPANIONS = {
    "data.dedup.minhash.bands": {"rows": 1, "num_perm": 1024},
    "data.dedup.minhash.rows": {"bands": 1, "num_perm": 1024},
    "train.model.d_model": {"n_head": 1},
    "train.model.n_head": {"d_model": 2**16},
    "train.model.n_kv_head": {"n_head": 2**16, "d_model": 2**16},
    "train.batch.global_batch_tokens": {"micro_batch_size": 1},
    "data.sources.x.weight": {"inputs": [{"path": "x.jsonl"}]},
    "data.quality.fasttext.min_score": {"model": "m.bin", "label": "hq"},
    "data.quality.fasttext.keep_fraction": {"model": "m.bin", "label": "hq"},
    "data.quality.perplexity.max_bits_per_byte": {"checkpoint": "runs/ref"},
    "data.quality.perplexity.keep_fraction": {"checkpoint": "runs/ref"},
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


def _holds_numbers(inner) -> bool:
    """A tuple's or dict's value type is a number, bounded or not (not Any, not a list of strings)."""
    base = typing.get_args(inner)[0] if typing.get_origin(inner) is typing.Annotated else inner
    return base in (int, float)


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
        elif typing.get_origin(f.annotation) in (tuple, dict) and _holds_numbers(typing.get_args(f.annotation)[-1]):
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
    if parts[:-1] == ["data", "quality", "fasttext", "train"]:
        section["labels"] = {"good": ["a.jsonl"], "bad": ["b.txt"]}
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
def test_values_that_cannot_work_fail_validation(override):
    with pytest.raises(ConfigError):
        load_config(None, [override])


# ---------------------------------------------------------------- upper bounds, and no inf or nan
def _walk(ann, key: str, meta: tuple = ()):
    """(dotted key, leaf type, constraints) of every int, float and free-form (Any) value inside an annotation,
    through models, Optional/unions, Annotated, lists, tuples and dicts (a dict's values or a list's items as `*`);
    and (key, model, None) for every model reached."""
    origin, args = typing.get_origin(ann), typing.get_args(ann)
    if origin is typing.Annotated:
        yield from _walk(args[0], key, meta + tuple(args[1:]))
    elif ann in (int, float) or ann is typing.Any:
        yield key, ann, _bounds(meta)
    elif isinstance(ann, type) and issubclass(ann, BaseModel):
        yield key, ann, None
        for name, f in ann.model_fields.items():
            yield from _walk(f.annotation, f"{key}.{name}" if key else name, tuple(f.metadata))
    elif origin in (list, tuple, dict):
        for a in args[1:] if origin is dict else args:  # a dict's keys are names (str)
            yield from _walk(a, f"{key}.*", ())
    elif origin is not None and origin is not typing.Literal:  # a union: the field's constraints apply to each arm
        for a in args:
            yield from _walk(a, key, meta)


LEAVES = list(_walk(RunConfig, ""))


def test_every_count_and_float_of_the_recipe_has_an_upper_bound():
    numbers = [(k, b) for k, t, b in LEAVES if t in (int, float)]
    assert len(numbers) > 60 and any(k == "train.mixture.*.weights.*" for k, _ in numbers)  # the walk reaches lists and dicts
    unbounded = [k for k, b in numbers if not any(isinstance(x, (at.Le, at.Lt)) for x in b)]
    assert not unbounded, f"numbers of the recipe without an upper bound (le/lt): {unbounded}"


def test_every_section_refuses_inf_and_nan():
    models = {t for _, t, b in LEAVES if b is None}
    assert len(models) > 30
    assert not [m.__name__ for m in models if m.model_config.get("allow_inf_nan") is not False]


FLOATS = [n for n in NUMBERS if n[3] is float]


@pytest.mark.parametrize("value", [math.inf, -math.inf, math.nan], ids=["inf", "-inf", "nan"])
@pytest.mark.parametrize("key,kind,bounds,typ", FLOATS, ids=[n[0] for n in FLOATS])
def test_floats_refuse_non_finite_values(key, kind, bounds, typ, value):
    assert not _validates(key, value, kind)


FREE = sorted({k for k, t, _ in LEAVES if t is typing.Any})


@pytest.mark.parametrize("value", [".inf", "-.inf", ".nan"])
@pytest.mark.parametrize("key", FREE)
def test_free_form_sections_refuse_non_finite_values(key, value):
    assert FREE == ["ray.runtime_env.*", "tune.param_space.*"]
    with pytest.raises(ConfigError, match=rf"{key.removesuffix('.*')}: x.y.0: not a finite number"):
        load_config(None, [f"{key.removesuffix('.*')}={{x: {{y: [{value}]}}}}"])
