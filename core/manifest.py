"""manifest.json: the contract between the data stage, which writes it last (so its presence means "finished"),
and everything that reads shards (training, evaluation, tuning, `raylm runs`). This module is the only reader
and writer of the file.

A manifest says what the shards of a data directory are: the token dtype, the tokenizer that made them, each
split's shards (path relative to data/, tokens, documents, sha256; a loss mask's sha256 for task sets), each
source's own shards and counts when the recipe had `data.sources`, the stage's counts, and the data section that
made it. `version` is the layout of the file: a reader refuses one it does not know rather than guess.
A field the writer had no value for is left out of the file (not written as null), as it always was.
"""

from __future__ import annotations

import json
from typing import Any

import fsspec
from pydantic import BaseModel, ConfigDict, ValidationError

from raylm.core.io import exists, write_json

MANIFEST = "manifest.json"
FORMAT = "raylm-shards"
VERSION = 1  # the layout this code reads and writes
_REBUILD = "rebuild it with `raylm data --force` (or point train.data_path at shards this raylm made)"


class ManifestError(ValueError):
    """A manifest this raylm cannot read (another version, another format, a broken file): exit 2, one line."""


class _Part(BaseModel):
    # unknown keys are refused: a new field is a new version
    model_config = ConfigDict(extra="forbid")

    def as_json(self) -> dict:
        """As the file holds it: the fields given, in the declared order."""
        return self.model_dump(mode="json", exclude_unset=True)


class Shard(_Part):
    path: str  # relative to data/: `{split}/shard-NNNNNN.npy` (core/shards.py), beside .idx.npy (and .mask.npy)
    tokens: int
    docs: int
    sha256: str
    mask_sha256: str | None = None  # task sets: the loss mask's .mask.npy


class Split(_Part):
    tokens: int
    bytes: int | None = None  # UTF-8 bytes of the split's text (what bits per byte divide by)
    docs: int
    shards: list[Shard]
    sources: dict[str, Split] | None = None  # data.sources: each source's own part of the split


class Tokenizer(_Part):
    name: str
    n_vocab: int
    eot: int
    sha256: str | None = None  # of the ranks file; None for an encoding with no file raylm can read
    path: str | None = None  # a trained tokenizer: its file, relative to data/; a file tokenizer: where it came from


class Source(_Part):
    """One of `data.sources`: the weight training draws it at by default, and its own counts."""

    weight: float
    records_in: int | None = None
    docs_in: int | None = None
    docs_kept: int | None = None
    removed: dict[str, int] | None = None
    skipped: dict[str, int] | None = None
    bytes_in: int | None = None
    tokens: int | None = None


class Stats(_Part):
    records_in: int | None = None  # every input record: docs_in + skipped
    skipped: dict[str, int] | None = None  # records that are no documents (web input: requests, redirects, images)
    docs_in: int
    docs_kept: int
    removed: dict[str, int]
    bytes_in: int | None = None
    tokens: int | None = None


class Manifest(_Part):
    format: str = FORMAT
    version: int = VERSION
    tokenizer: Tokenizer
    dtype: str  # the shards' token dtype: uint16, or uint32 for a vocabulary over 65,536
    loss_mask: bool = False  # task sets: shard-*.mask.npy beside every shard
    splits: dict[str, Split]
    sources: dict[str, Source] | None = None
    stats: Stats | None = None
    # data.quality: each scorer's model (path, relative to data/ when the stage trained it, and sha256), its label,
    # and for keep_fraction the candidates, kept and the exact threshold (pipelines/select.py)
    quality: dict[str, dict[str, Any]] | None = None
    config: dict[str, Any] | None = None  # the data section that made it (a rerun with another one is refused)

    @classmethod
    def parse(cls, value: dict, where: str = "manifest") -> Manifest:
        """A manifest from its JSON form; a ManifestError naming `where` if this code cannot read it."""
        if not isinstance(value, dict):
            raise ManifestError(f"{where}: not a JSON object")
        version = value.get("version", VERSION)  # no version: the first layout, which had none to give
        if version != VERSION:
            raise ManifestError(f"{where}: manifest version {version!r}, but this raylm reads version {VERSION}: {_REBUILD}")
        if value.get("format", FORMAT) != FORMAT:
            raise ManifestError(f"{where}: format {value.get('format')!r} is not {FORMAT!r}")
        try:
            return cls.model_validate(value)
        except ValidationError as e:
            first = e.errors()[0]
            at = ".".join(str(p) for p in first["loc"])
            raise ManifestError(f"{where}: {at}: {first['msg']} ({e.error_count()} problem(s)); {_REBUILD}") from None

    def as_json(self) -> dict:
        """The file's content: the fields given, in the declared order; format and version always."""
        return {"format": self.format, "version": self.version, **self.model_dump(mode="json", exclude_unset=True, exclude={"format", "version"})}

    def split(self, name: str, source: str | None = None) -> Split:
        """A split, or one source's part of it (a KeyError naming it when the manifest has no such part)."""
        entry = self.splits[name]
        if source is None:
            return entry
        if not entry.sources or source not in entry.sources:
            raise KeyError(f"split {name!r} has no source {source!r}")
        return entry.sources[source]


def manifest_path(root: str) -> str:
    return f"{root.rstrip('/')}/{MANIFEST}"


def write_manifest(root: str, manifest: Manifest | dict) -> None:
    """Write `root`/manifest.json atomically (the data stage's last write: a reader never sees half of it)."""
    man = manifest if isinstance(manifest, Manifest) else Manifest.parse(manifest)
    write_json(manifest_path(root), man.as_json())


def read_manifest(root: str) -> Manifest:
    """The manifest of the data directory `root`; FileNotFoundError without one, ManifestError for one this
    code cannot read."""
    path = manifest_path(root)
    fs, _ = fsspec.core.url_to_fs(path)
    try:
        value = json.loads(fs.cat_file(path))
    except ValueError as e:  # not JSON (a JSONDecodeError, or bytes that are no text)
        raise ManifestError(f"{path}: not a JSON file ({e})") from None
    return Manifest.parse(value, path)


def has_manifest(root: str) -> bool:
    """Whether the data stage finished in `root` (the manifest is written last)."""
    return exists(manifest_path(root))


def require_shards(root: str, hint: str = "") -> Manifest:
    """The one check train, tune and eval make before reading shards: a finished data stage in `root`, with a
    manifest this code reads. Returns it."""
    if not has_manifest(root):
        raise FileNotFoundError(f"{root} has no {MANIFEST}: run `raylm data` first{hint}")
    return read_manifest(root)
