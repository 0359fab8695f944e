"""Data parallelism changes nothing but speed: 2 DDP workers, 2 FSDP2 workers and 1 worker with twice
the gradient accumulation see the same windows per optimizer step, so their per-step losses agree
(to float tolerance: only the order of the reductions differs)."""

import json

import pytest

from cluster.recipe import load_config
from tests.conftest import ROOT
from training.checkpoint import load_model
from training.sample import SampleOptions, sample
from training.trainer import run_train

pytestmark = pytest.mark.slow


def _run(tmp_path, shards, name, *over):
    cfg = load_config(
        ROOT / "cluster" / "recipes" / "local.yaml",
        [
            f"storage_path={tmp_path}",
            f"name={name}",
            "train.model={n_layer: 2, n_head: 2, d_model: 64, seq_len: 64}",
            "train.batch={micro_batch_size: 4, global_batch_tokens: 512}",
            "train.max_steps=8",
            "train.optim.lr=3e-3",
            "train.schedule.warmup_steps=2",
            "train.eval={every: 4, batches: 4}",
            "train.checkpoint={every: 8, keep: 1}",
            f"train.data_path={shards}",
            *over,
        ],
    )
    assert run_train(cfg.train_job()).error is None
    rows = [json.loads(x) for x in (tmp_path / name / "train" / "metrics.jsonl").read_text().splitlines()]
    return cfg, rows


def test_two_workers_equal_one_worker_with_double_accumulation(ray_session, sample_shards, tmp_path):
    _, one = _run(tmp_path, sample_shards, "one", "train.scaling.num_workers=1")
    _, ddp = _run(tmp_path, sample_shards, "ddp", "train.scaling.num_workers=2")
    cfg, fsdp = _run(tmp_path, sample_shards, "fsdp", "train.scaling.num_workers=2", "train.parallelism=fsdp")
    assert [r["tokens"] for r in one] == [r["tokens"] for r in ddp] == [512 * s for s in range(1, 9)]
    for other in (ddp, fsdp):
        for a, b in zip(one, other):
            assert b["loss"] == pytest.approx(a["loss"], rel=1e-5, abs=1e-5), (a["step"], a["loss"], b["loss"])
            assert b["grad_norm"] == pytest.approx(a["grad_norm"], rel=1e-4, abs=1e-5)
    assert one[-1]["loss"] < one[0]["loss"]
    assert ddp[-1]["val_loss"] == pytest.approx(one[-1]["val_loss"], rel=1e-5)
    # an FSDP checkpoint holds full, unsharded weights: it loads into a bare GPT on one process
    model, enc, state, _ = load_model(str(tmp_path / "fsdp"))
    assert state["step"] == 8 and state["config"]["train"]["parallelism"] == "fsdp"
    text = sample(model, enc, SampleOptions(prompt="KING", max_new_tokens=8))[0]
    assert text.startswith("KING")

    # a new run initialized from another's weights starts where that one ended, with a fresh optimizer
    _, ft = _run(tmp_path, sample_shards, "ft", "train.scaling.num_workers=1", f"train.init_from={tmp_path / 'one'}", "train.max_steps=2")
    assert ft[0]["loss"] < one[0]["loss"] - 0.5 and ft[0]["lr"] == one[0]["lr"]
