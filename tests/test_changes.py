"""The one rule for which config changes refuse a data stage's rerun or a training run's resume (core/changes.py):
every key counts unless named safe, so a section added to the schema is covered without being listed anywhere."""

from __future__ import annotations

import pytest
from pydantic import create_model

from raylm.core.changes import changes, flat
from raylm.core.schema import ConfigError, Strict
from raylm.pipelines.config import DataConfig
from raylm.pipelines.run import RERUN_SAFE, changed_keys
from raylm.training.config import TrainConfig, TrainJob
from raylm.training.driver import RESUME_SAFE, check_resume, resume_changes


class Dummy(Strict):
    level: int = 1
    names: list[str] = []


# a recipe section nobody has listed anywhere, in each capability's section
DataWithDummy = create_model("DataWithDummy", __base__=DataConfig, dummy=(Dummy, Dummy()))
TrainWithDummy = create_model("TrainWithDummy", __base__=TrainConfig, dummy=(Dummy, Dummy()))


def test_flat_names_nested_keys_and_list_items():
    d = {"a": {"b": 1, "c": [2, {"d": 3}], "e": []}}
    assert flat(d, "x") == {"x.a.b": 1, "x.a.c[0]": 2, "x.a.c[1].d": 3, "x.a.e": []}
    assert flat(d, lists=False) == {"a.b": 1, "a.c": [2, {"d": 3}], "a.e": []}


def test_a_safe_pattern_covers_its_section_and_lists_and_nothing_beside():
    have = {"execution": {"workers": 1}, "executions": 1, "sources": {"w": {"weight": 1.0, "inputs": [{"path": "a"}]}}, "tags": ["a"]}
    want = {"execution": {"workers": 2}, "executions": 2, "sources": {"w": {"weight": 2.0, "inputs": [{"path": "b"}]}}, "tags": ["b"]}
    safe = ("d.execution", "d.sources.*.weight", "d.tags")
    assert changes(have, want, "d", safe) == {"d.executions": (1, 2), "d.sources.w.inputs[0].path": ("a", "b")}


def test_a_key_the_older_side_lacks_is_compared_as_its_default():
    assert changes({"s": {}}, {"s": {"k": 1}}, "d", defaults={"s": {"k": 1}}) == {}
    assert changes({"s": {}}, {"s": {"k": 2}}, "d", defaults={"s": {"k": 1}}) == {"d.s.k": (1, 2)}


def test_the_data_stage_refuses_a_rerun_for_a_new_section_no_list_names():
    assert not any("dummy" in p for p in RERUN_SAFE)
    finished = DataWithDummy().model_dump(mode="json")
    changed = DataWithDummy(dummy={"level": 2}).model_dump(mode="json")
    assert changed_keys(finished, changed, DataWithDummy) == ["data.dummy.level"]
    assert changed_keys(finished, DataWithDummy(dummy={"names": ["x"]}).model_dump(mode="json"), DataWithDummy) == [
        "data.dummy.names",
        "data.dummy.names[0]",
    ]


def test_a_data_stage_finished_before_a_new_section_existed_is_reused_at_its_default():
    older = DataConfig().model_dump(mode="json")
    assert changed_keys(older, DataWithDummy().model_dump(mode="json"), DataWithDummy) == []
    assert changed_keys(older, DataWithDummy(dummy={"level": 3}).model_dump(mode="json"), DataWithDummy) == ["data.dummy.level"]


def test_the_data_keys_that_may_change_are_execution_and_a_sources_weight():
    d = DataConfig().model_dump(mode="json")
    assert changed_keys(d, {**d, "execution": {**d["execution"], "workers": 7}}) == []
    every_other = [k for k in DataConfig.model_fields if k not in ("execution", "inputs", "sources")]
    assert all(changed_keys(d, {**d, k: {**d[k], "_probe": 1}}) == [f"data.{k}._probe"] for k in every_other)


def _checkpointed(tmp_path, train: TrainConfig) -> None:
    from raylm.training import checkpoint

    ckpt = tmp_path / "r" / "train" / "checkpoint_000000"
    ckpt.mkdir(parents=True)
    recipe = {"storage_path": str(tmp_path), "name": "r", "train": train.model_dump(mode="json")}
    checkpoint.save(str(ckpt), 0, {"step": 5, "tokenizer": {"name": "t", "sha256": "x"}, "config": recipe})


def _job(tmp_path, train: TrainConfig) -> TrainJob:
    from raylm.core.paths import RunPaths

    return TrainJob(train, RunPaths(str(tmp_path), "r"), {"storage_path": str(tmp_path), "name": "r", "train": train.model_dump(mode="json")})


def test_training_refuses_a_resume_for_a_new_section_no_list_names(tmp_path):
    assert not any("dummy" in p for p in RESUME_SAFE)
    _checkpointed(tmp_path, TrainWithDummy())
    check_resume(_job(tmp_path, TrainWithDummy()))  # the same recipe resumes
    with pytest.raises(ConfigError, match=r"train.dummy.level is 1 there, 2 here"):
        check_resume(_job(tmp_path, TrainWithDummy(dummy={"level": 2})))


def test_a_checkpoint_from_before_a_new_section_resumes_at_its_default():
    older = {"train": TrainConfig().model_dump(mode="json")}
    assert resume_changes(older, TrainWithDummy()) == []
    assert resume_changes(older, TrainWithDummy(dummy={"level": 2})) == ["train.dummy.level is 1 there, 2 here"]


RESUMABLE = ["max_steps", "max_nonfinite_losses", "eval", "checkpoint", "report_every", "log_every", "loggers", "scaling", "failure"]
RESUMABLE += ["parallelism", "precision", "compile", "init_from"]  # parallelism: checkpoints reshard between DDP and FSDP2


def test_the_train_keys_a_resume_may_change_are_exactly_these():
    meta = {"train": TrainConfig().model_dump(mode="json")}
    for key in TrainConfig.model_fields:
        probe = {**meta["train"], key: {"_probe": 1}}
        assert (resume_changes({"train": probe}, TrainConfig()) == []) == (key in RESUMABLE), key
