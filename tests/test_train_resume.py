"""Exact resume and worker-failure recovery: SIGKILL a Ray Train worker mid-run; the run recovers
from its last checkpoint and its per-step losses equal, bit for bit, those of a run never stopped."""

import json
import os
import signal
import threading
import time

import pytest

from cluster.recipe import load_config
from tests.conftest import ROOT
from training.trainer import run_train

pytestmark = pytest.mark.slow


def _cfg(tmp_path, name, shards):
    return load_config(
        ROOT / "cluster" / "recipes" / "local.yaml",
        [
            f"storage_path={tmp_path}",
            f"name={name}",
            f"train.data_path={shards}",
            "train.model={n_layer: 2, n_head: 2, d_model: 64, seq_len: 64}",
            "train.batch={micro_batch_size: 8, global_batch_tokens: 2048}",
            "train.max_steps=30",
            "train.schedule.warmup_steps=5",
            "train.eval={every: 10, batches: 2}",
            "train.checkpoint={every: 10, keep: 2}",
            "train.scaling.num_workers=2",
            "train.failure.max_failures=2",
            "train.optim.lr=3e-3",
        ],
    )


def _losses(tmp_path, name):
    rows = [json.loads(x) for x in (tmp_path / name / "train" / "metrics.jsonl").read_text().splitlines()]
    return [r["step"] for r in rows], [r["loss"] for r in rows]


def test_killed_worker_recovers_and_resume_is_bitwise_exact(ray_session, sample_shards, tmp_path):
    import psutil

    ref = _cfg(tmp_path, "ref", sample_shards)
    run_train(ref.train_job())
    ref_steps, ref_losses = _losses(tmp_path, "ref")
    assert ref_steps == list(range(1, 31))

    cfg = _cfg(tmp_path, "kill", sample_shards)
    result = {}
    th = threading.Thread(target=lambda: result.setdefault("r", run_train(cfg.train_job())))
    th.start()
    metrics = tmp_path / "kill" / "train" / "metrics.jsonl"
    killed_at = None
    deadline = time.time() + 300
    while th.is_alive() and time.time() < deadline and killed_at is None:
        if metrics.exists():
            lines = metrics.read_text().splitlines()
            if lines and json.loads(lines[-1])["step"] >= 13:
                workers = [p for p in psutil.process_iter(["cmdline"]) if "RayTrainWorker" in " ".join(p.info["cmdline"] or [])]
                assert workers, "no Ray Train worker process found"
                os.kill(workers[-1].pid, signal.SIGKILL)
                killed_at = json.loads(lines[-1])["step"]
        time.sleep(0.02)
    th.join(timeout=300)
    assert killed_at is not None and killed_at < 30, "the run ended before a worker could be killed"
    assert result["r"].error is None
    steps, losses = _losses(tmp_path, "kill")
    assert steps == ref_steps
    assert losses == ref_losses  # bitwise: floats compared exactly
