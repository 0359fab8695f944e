"""Training stops on losses that are not finite (train.max_nonfinite_losses) and never checkpoints weights that are
not finite: the Trainer driven without Ray (no report happens before it stops), and the driver's verdict."""

import json
import math

import pytest
import torch

from raylm.training.driver import TrainingDiverged, check_diverged
from raylm.training.metrics import read_metrics
from tests.conftest import tiny_trainer


def _poison(trainer) -> None:
    with torch.no_grad():
        next(trainer.model.parameters()).fill_(float("nan"))


def test_training_stops_after_consecutive_nonfinite_losses(tiny_shards):
    t = tiny_trainer(tiny_shards, max_steps=50, max_nonfinite_losses=3)
    _poison(t)
    t.fit()
    assert t.step == 3


def test_the_last_metrics_row_names_the_steps(tiny_shards):
    t = tiny_trainer(tiny_shards, max_steps=50, max_nonfinite_losses=3)
    _poison(t)
    t.fit()
    assert read_metrics(t.job.paths.metrics)[-1]["diverged"] == "the loss is not finite (nan) at step 3, and at every step since 1"


def test_weights_not_finite_at_a_checkpoint_step_stop_before_saving(tiny_shards):
    t = tiny_trainer(tiny_shards, max_steps=50, max_nonfinite_losses=100, checkpoint={"every": 2, "keep": 1})
    _poison(t)
    t.fit()  # step 2 would checkpoint (a ray.train.report outside Ray would raise): it stops there instead
    assert read_metrics(t.job.paths.metrics)[-1]["diverged"].startswith("the weights are no longer finite at step 2")


def test_a_finite_loss_resets_the_count(tiny_shards):
    t = tiny_trainer(tiny_shards, max_nonfinite_losses=3)
    verdicts = []
    for loss in (math.nan, math.inf, 1.0, math.nan, math.nan):
        t.step += 1
        verdicts.append(t.divergence({"loss": loss}))
    assert verdicts == [None] * 5


def test_finite_training_is_untouched(tiny_shards):
    t = tiny_trainer(tiny_shards, max_steps=3, checkpoint={"every": 1000, "keep": 1}, eval={"every": 1000, "batches": 1})
    rows = [t.train_step() for _ in range(3)]
    assert [t.divergence(r) for r in rows] == [None, None, None]


def test_the_driver_names_the_step_and_the_checkpoint_kept(tmp_path):
    from raylm.core.paths import RunPaths

    paths = RunPaths(str(tmp_path), "r")
    ckpt = tmp_path / "r" / "train" / "checkpoint_000000"
    ckpt.mkdir(parents=True)
    (ckpt / "state.pt").write_bytes(b"")
    (ckpt / "meta.json").write_text(json.dumps({"step": 40}))
    rows = [{"step": 41, "loss": 3.0}, {"step": 44, "loss": float("nan"), "diverged": "the loss is not finite (nan) at step 44"}]
    (tmp_path / "r" / "train" / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    with pytest.raises(TrainingDiverged, match="at step 44; the latest checkpoint, step 40, is the last with finite weights"):
        check_diverged(paths)
