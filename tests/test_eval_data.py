"""train.eval.data_path: every evaluation reads another run's val split (one held-out set for runs trained on
different data); the Trainer without Ray, and the preflight check of its shards."""

import json
import shutil

import pytest

from benchmarks.corpus import random_shards
from raylm.core.manifest import read_manifest
from raylm.core.schema import ConfigError
from raylm.training.config import TrainJob
from raylm.training.driver import check_eval_data
from tests.conftest import tiny_trainer, write_tiny_shards


@pytest.fixture
def held(tmp_path):
    """tiny_shards, and other shards (10 train, 30 val documents) under tmp_path/held."""
    write_tiny_shards(tmp_path)
    random_shards(tmp_path / "held", (10, 30), (20, 60), shard_tokens=2000)
    return tmp_path


def test_the_val_split_of_eval_data_path_is_what_is_evaluated(held):
    other = tiny_trainer(held, eval={"data_path": str(held / "held"), "batches": 2})
    trained_there = tiny_trainer(held, data_path=str(held / "held"), eval={"batches": 2})  # the same initial weights
    assert other.evaluate()["loss"] == trained_there.evaluate()["loss"]


def test_without_it_the_training_shards_val_split_is_evaluated(held):
    own = tiny_trainer(held, eval={"batches": 2})
    other = tiny_trainer(held, eval={"data_path": str(held / "held"), "batches": 2})
    assert own.evaluate()["loss"] != other.evaluate()["loss"]


def _job(root, eval_path):
    return TrainJob.from_recipe(
        {"storage_path": str(root), "name": "g", "train": {"data_path": str(root / "data"), "eval": {"data_path": eval_path}}}
    )


def test_eval_shards_of_another_tokenizer_are_refused(held):
    shutil.copytree(held / "held", held / "other")
    m = json.loads((held / "other" / "manifest.json").read_text())
    m["tokenizer"]["sha256"] = "0" * 64
    (held / "other" / "manifest.json").write_text(json.dumps(m))
    with pytest.raises(ConfigError, match="train.eval.data_path: .* was tokenized with"):
        check_eval_data(_job(held, str(held / "other")), read_manifest(str(held / "data")))


def test_eval_shards_that_are_not_there_are_refused(held):
    with pytest.raises(FileNotFoundError, match="train.eval.data_path"):
        check_eval_data(_job(held, str(held / "none")), read_manifest(str(held / "data")))
