"""Data parallelism changes nothing but speed: 2 DDP workers (the session's pretrained run), 2 FSDP2 workers
and 1 worker with twice the gradient accumulation see the same windows per optimizer step, so their
per-step losses agree (to float tolerance: only the order of the reductions differs). The model is the
pretrained run's: the llama arch with grouped-query attention, under AdamW."""

import json

import pytest

from raylm.cluster.recipe import load_config
from raylm.training.checkpoint import load_model
from raylm.training.driver import run_train
from raylm.training.sample import SampleOptions, sample
from tests.conftest import PRETRAIN, ROOT

pytestmark = pytest.mark.slow


def _rows(run_dir, max_steps=12):
    # steps 1..12: tests/test_train_e2e.py trains the pretrained run further, appending later steps
    rows = [json.loads(x) for x in (run_dir / "train" / "metrics.jsonl").read_text().splitlines()]
    return [r for r in rows if r["step"] <= max_steps]


def _run(tmp_path, shards, name, *over):
    # the pretrained run's training, on its shards
    cfg = load_config(
        ROOT / "cluster" / "recipes" / "local.yaml",
        [f"storage_path={tmp_path}", f"name={name}", *PRETRAIN, f"train.data_path={shards}", *over],
    )
    assert run_train(cfg.train_job()).error is None
    return cfg, _rows(tmp_path / name)


def test_two_workers_equal_one_worker_with_double_accumulation(pretrained, sample_shards, tmp_path):
    _, one = _run(tmp_path, sample_shards, "one", "train.scaling.num_workers=1")
    ddp = _rows(pretrained[0] / "tr")
    cfg, fsdp = _run(tmp_path, sample_shards, "fsdp", "train.scaling.num_workers=2", "train.parallelism=fsdp")
    assert [r["tokens"] for r in one] == [r["tokens"] for r in ddp] == [1024 * s for s in range(1, 13)]
    for other in (ddp, fsdp):
        for a, b in zip(one, other):
            assert b["loss"] == pytest.approx(a["loss"], rel=1e-5, abs=1e-5), (a["step"], a["loss"], b["loss"])
            assert b["grad_norm"] == pytest.approx(a["grad_norm"], rel=1e-4, abs=1e-5)
    assert one[-1]["loss"] < one[0]["loss"]
    assert ddp[-1]["val_loss"] == pytest.approx(one[-1]["val_loss"], rel=1e-5)
    # an FSDP checkpoint holds full, unsharded weights: it loads into a bare GPT on one process
    model, enc, state, _ = load_model(str(tmp_path / "fsdp"))
    assert state["step"] == 12 and state["config"]["train"]["parallelism"] == "fsdp"
    text = sample(model, enc, SampleOptions(prompt="KING", max_new_tokens=8))[0]
    assert text.startswith("KING")

    # a new run initialized from another's weights starts where that one ended, with a fresh optimizer
    _, ft = _run(tmp_path, sample_shards, "ft", "train.scaling.num_workers=1", f"train.init_from={tmp_path / 'one'}", "train.max_steps=2")
    assert ft[0]["loss"] < one[0]["loss"] - 0.5 and ft[0]["lr"] == one[0]["lr"]
