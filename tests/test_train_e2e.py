"""Ray Train end to end on the sample: 2 workers, a tiny model, checkpoints, metrics, resume."""
import json

import pytest

from cluster.config import load_config
from pipelines.run import run_data
from tests.conftest import ROOT
from training.trainer import run_train

pytestmark = pytest.mark.slow


def test_train_two_workers_then_resume(ray_session, tmp_path):
    over = [f"storage_path={tmp_path}", "name=tr", "train.model={n_layer: 2, n_head: 2, d_model: 64, seq_len: 64}",
            "train.batch={micro_batch_size: 4, global_batch_tokens: 1024}", "train.max_steps=12",
            "train.schedule.warmup_steps=2", "train.eval={every: 6, batches: 2}", "train.checkpoint={every: 6, keep: 2}",
            "train.scaling.num_workers=2"]
    cfg = load_config(ROOT / "cluster" / "recipes" / "local.yaml", over)
    run_data(cfg, summary=False)
    result = run_train(cfg)
    assert result.error is None and result.checkpoint is not None
    rows = [json.loads(x) for x in (tmp_path / "tr" / "train" / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == list(range(1, 13))
    assert rows[0]["tokens"] == 1024 and rows[-1]["loss"] < rows[0]["loss"]
    assert "val_loss" in rows[5] and "val_ppl" in rows[-1] and rows[0]["mfu"] is None
    # the same command with more steps resumes from step 12 instead of starting over
    cfg2 = load_config(ROOT / "cluster" / "recipes" / "local.yaml", [*over[:-1], "train.max_steps=18", "train.scaling.num_workers=2"])
    run_train(cfg2)
    rows = [json.loads(x) for x in (tmp_path / "tr" / "train" / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == list(range(1, 19))
