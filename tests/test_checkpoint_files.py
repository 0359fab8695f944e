"""Which directories count as checkpoints: meta.json, written last, lists the checkpoint's files, and only a
directory holding all of them is one. A run's latest checkpoint is its newest complete one; a truncated or
foreign directory given as a checkpoint exits 2 in one line naming what is missing."""

import json
import shutil

import pytest

from raylm.cluster.cli import main
from raylm.training import checkpoint
from tests.test_export import bpe, write_checkpoint  # noqa: F401 - bpe: the fixture write_checkpoint needs

MODEL = {"arch": "llama", "n_layer": 1, "n_head": 2, "d_model": 32, "seq_len": 16}


@pytest.fixture
def run(tmp_path, bpe):  # noqa: F811
    """A run directory with two sharded checkpoints, of steps 7 and 9."""
    for step in (7, 9):
        d = tmp_path / "r" / "train" / f"checkpoint_{step}"
        write_checkpoint(d, MODEL, bpe, fmt="sharded")
        meta = json.loads((d / "meta.json").read_text())
        (d / "meta.json").write_text(json.dumps({**meta, "step": step}))
    return tmp_path / "r"


def test_meta_json_lists_every_file_of_the_checkpoint(run):
    d = run / "train" / "checkpoint_9"
    listed = set(json.loads((d / "meta.json").read_text())["files"])
    assert listed == {str(p.relative_to(d)) for p in d.rglob("*") if p.is_file()} - {"meta.json"}


def test_the_latest_checkpoint_is_the_newest_complete_one(run):
    assert checkpoint.latest(str(run)).endswith("checkpoint_9")
    (run / "train" / "checkpoint_9" / "dcp" / "__0_0.distcp").unlink()  # an upload cut short
    assert checkpoint.latest(str(run)).endswith("checkpoint_7")


def test_a_truncated_checkpoint_exits_2_naming_the_missing_file(run, tmp_path, capsys):
    d = run / "train" / "checkpoint_9"
    (d / "trainer.pt").unlink()
    assert main(["export", str(d), "--format", "safetensors", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "trainer.pt missing" in err and "incomplete checkpoint" in err, err


def test_a_run_whose_checkpoints_are_all_incomplete_exits_2(run, tmp_path, capsys):
    for step in (7, 9):
        shutil.rmtree(run / "train" / f"checkpoint_{step}" / "dcp")
    assert main(["sample", str(run), "--prompt", "A", "--max-new-tokens", "2"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "checkpoint_9" in err and "dcp/.metadata" in err, err


def test_a_foreign_directory_with_a_meta_json_exits_2(tmp_path, capsys):
    (tmp_path / "x").mkdir()
    (tmp_path / "x" / "meta.json").write_text(json.dumps({"step": 3, "files": ["weights.bin"]}))
    assert main(["export", str(tmp_path / "x"), "--format", "safetensors", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "weights.bin missing" in err, err


def test_a_damaged_shard_exits_2_naming_the_checkpoint(run, tmp_path, capsys):
    shard = run / "train" / "checkpoint_9" / "dcp" / "__0_0.distcp"
    shard.write_bytes(shard.read_bytes()[:100])
    assert main(["export", str(run), "--format", "safetensors", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "checkpoint_9/dcp" in err, err
