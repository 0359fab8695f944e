"""manifest.json as a typed, versioned model (core/manifest.py): what the data stage writes reads back the same,
byte for byte; a manifest this code cannot read is refused in one line naming it. Real files, no Ray."""

from __future__ import annotations

import json

import pytest

from raylm.core.manifest import MANIFEST, Manifest, ManifestError, read_manifest, require_shards, write_manifest

# a manifest as the data stage writes it for a mixture of task sets with a trained tokenizer: every optional field
SHARD = {"path": "train/web/shard-000000.npy", "tokens": 120, "docs": 3, "sha256": "a" * 64, "mask_sha256": "b" * 64}
WEB = {"tokens": 120, "bytes": 480, "docs": 3, "shards": [SHARD]}
VAL = {"tokens": 0, "bytes": 0, "docs": 0, "shards": []}
COUNTS = {"records_in": 5, "docs_in": 4, "docs_kept": 3, "removed": {"exact": 1}, "skipped": {"skip:request": 1}, "bytes_in": 900, "tokens": 120}
FULL = {
    "format": "raylm-shards",
    "version": 1,
    "tokenizer": {"name": "rustbpe", "n_vocab": 400, "eot": 399, "sha256": None, "path": "tokenizer.tiktoken"},
    "dtype": "uint16",
    "loss_mask": True,
    "splits": {"train": {**WEB, "sources": {"web": WEB}}, "val": {**VAL, "sources": {"web": VAL}}},
    "sources": {"web": {"weight": 0.8, **COUNTS}},
    "stats": {"records_in": 5, "skipped": {"skip:request": 1}, "docs_in": 4, "docs_kept": 3, "removed": {"exact": 1}, "bytes_in": 900, "tokens": 120},
    "config": {"tokenizer": {"train": {"vocab_size": 400}}, "output": {"shard_tokens": 1000}},
}


def test_a_manifest_round_trips_byte_for_byte(tmp_path):
    write_manifest(str(tmp_path), FULL)
    assert (tmp_path / MANIFEST).read_text() == json.dumps(FULL, indent=1) + "\n"  # what the stage wrote as a plain dict
    man = read_manifest(str(tmp_path))
    assert man.as_json() == FULL
    (tmp_path / "again").mkdir()
    write_manifest(str(tmp_path / "again"), man)
    assert (tmp_path / "again" / MANIFEST).read_bytes() == (tmp_path / MANIFEST).read_bytes()


def test_fields_the_writer_had_no_value_for_stay_out_of_the_file(tmp_path):
    plain = {"format": "raylm-shards", "version": 1, "tokenizer": {"name": "t", "n_vocab": 100, "eot": 99}, "dtype": "uint16"}
    plain["splits"] = {"train": {"tokens": 0, "docs": 0, "shards": []}, "val": {"tokens": 0, "docs": 0, "shards": []}}
    write_manifest(str(tmp_path), plain)
    assert json.loads((tmp_path / MANIFEST).read_text()) == plain
    man = read_manifest(str(tmp_path))
    assert (man.loss_mask, man.sources, man.stats, man.tokenizer.sha256) == (False, None, None, None)


def test_typed_access_reaches_a_sources_own_split():
    man = Manifest.parse(FULL)
    assert man.split("train", "web").shards[0].mask_sha256 == "b" * 64
    assert man.sources["web"].weight == 0.8
    with pytest.raises(KeyError, match="no source 'books'"):
        man.split("train", "books")


def test_a_manifest_without_a_version_is_version_1():
    old = {k: v for k, v in FULL.items() if k != "version"}
    assert Manifest.parse(old).version == 1


@pytest.mark.parametrize(
    "change, message",
    [
        ({"version": 999}, "manifest version 999, but this raylm reads version 1"),
        ({"format": "other"}, "format 'other' is not 'raylm-shards'"),
        ({"shards_v2": []}, "shards_v2: Extra inputs are not permitted"),  # a new field is a new version
        ({"dtype": None}, "dtype: Input should be a valid string"),
    ],
)
def test_a_manifest_this_code_cannot_read_is_refused_naming_the_file(tmp_path, change, message):
    (tmp_path / MANIFEST).write_text(json.dumps({**FULL, **change}))  # as another raylm would write it
    with pytest.raises(ManifestError) as e:
        require_shards(str(tmp_path))
    assert str(e.value).startswith(f"{tmp_path}/{MANIFEST}: ") and message in str(e.value) and "\n" not in str(e.value)


def test_a_broken_manifest_is_refused_naming_the_file(tmp_path):
    (tmp_path / MANIFEST).write_text('{"format": "raylm-shards", ')
    with pytest.raises(ManifestError, match=f"{tmp_path}/{MANIFEST}: not a JSON file"):
        read_manifest(str(tmp_path))


def test_no_manifest_means_no_finished_data_stage(tmp_path):
    with pytest.raises(FileNotFoundError, match="run `raylm data` first"):
        require_shards(str(tmp_path))
