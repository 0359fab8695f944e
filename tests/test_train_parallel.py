"""Data parallelism changes nothing but speed: 2 DDP workers (the session's pretrained run), 2 FSDP2 workers
and 1 worker with twice the gradient accumulation see the same windows per optimizer step, so their
per-step losses agree (to float tolerance: only the order of the reductions differs). The model is the
pretrained run's: the llama arch with grouped-query attention, under AdamW. The FSDP2 run saves asynchronously,
and a worker is killed while its second save is being written (tests/conftest.py delays asynchronous writes by
2 s): the run resumes from the first, and repeats the steps it had trained since bit for bit. A run initialized
from the pretrained run's weights starts where that run ended, with a fresh optimizer and schedule."""

import json
import os
import signal
import threading
import time

import pytest

from raylm.cluster.recipe import load_config
from raylm.training.checkpoint import load_model
from raylm.training.driver import run_train
from raylm.training.sample import SampleOptions, sample
from tests.conftest import PRETRAIN, ROOT, session_train_workers

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


def _registered(run_dir) -> list[int]:
    """Steps of the checkpoints Ray Train has registered (its controller's snapshot), oldest first."""
    snap = run_dir / "train" / "checkpoint_manager_snapshot.json"
    try:
        state = json.loads(snap.read_text() or "{}") if snap.exists() else {}
    except ValueError:  # caught mid-write
        return []
    return [r["metrics"].get("step", 0) for r in state.get("checkpoint_results", [])]


def _kill_mid_save(run_dir, th: threading.Thread) -> tuple[float, list[dict], list[int]]:
    """SIGKILL a Ray Train worker once step 4's checkpoint is registered and step 9 trained: step 8's asynchronous
    save is then being written. Returns when, the rows written before, and the checkpoints registered then."""
    deadline = time.time() + 300
    while th.is_alive() and time.time() < deadline:
        rows = _rows(run_dir) if (run_dir / "train" / "metrics.jsonl").exists() else []
        if rows and rows[-1]["step"] >= 9 and 4 in _registered(run_dir):
            registered = _registered(run_dir)
            os.kill(session_train_workers()[-1], signal.SIGKILL)
            return time.time(), rows, registered
        time.sleep(0.02)
    raise AssertionError("the run ended before its worker could be killed mid-save")


def test_two_workers_equal_one_worker_with_double_accumulation(pretrained, sample_shards, tmp_path):
    _, one = _run(tmp_path, sample_shards, "one", "train.scaling.num_workers=1")
    ddp = _rows(pretrained[0] / "tr")
    over = ["train.scaling.num_workers=2", "train.parallelism=fsdp", "train.checkpoint={every: 4, keep: 3, async: true}"]
    result = {}
    th = threading.Thread(target=lambda: result.setdefault("r", _run(tmp_path, sample_shards, "fsdp", *over)))
    th.start()
    killed_at, before, registered = _kill_mid_save(tmp_path / "fsdp", th)
    th.join(timeout=600)
    cfg, fsdp = result["r"]
    assert registered == [4], "at the kill, step 4's checkpoint is the latest: step 8's was still being written"
    assert [r["step"] for r in fsdp] == list(range(1, 13))
    assert min(r["step"] for r in fsdp if r["time"] > killed_at) == 5  # resumed from step 4's checkpoint
    redone = {r["step"]: r["loss"] for r in fsdp}
    assert [r["loss"] for r in before[4:]] == [redone[r["step"]] for r in before[4:]]  # the same steps, bit for bit
    assert [r["tokens"] for r in one] == [r["tokens"] for r in ddp] == [1024 * s for s in range(1, 13)]
    for other in (ddp, fsdp):
        for a, b in zip(one, other):
            assert b["loss"] == pytest.approx(a["loss"], rel=1e-5, abs=1e-5), (a["step"], a["loss"], b["loss"])
            assert b["grad_norm"] == pytest.approx(a["grad_norm"], rel=1e-4, abs=1e-5)
    assert one[-1]["loss"] < one[0]["loss"]
    assert ddp[-1]["val_loss"] == pytest.approx(one[-1]["val_loss"], rel=1e-5)
    # an FSDP2 checkpoint is sharded: it loads into a bare GPT on one process all the same
    model, enc, state, _ = load_model(str(tmp_path / "fsdp"))
    assert state["step"] == 12 and state["config"]["train"]["parallelism"] == "fsdp"
    text = sample(model, enc, SampleOptions(prompt="KING", max_new_tokens=8))[0]
    assert text.startswith("KING")


def test_a_run_initialized_from_another_starts_where_that_one_ended(pretrained, tracked_run):
    """tests/conftest.py's `tracked_run`: the pretrained run's recipe on one worker, train.init_from the pretrained run.
    Its first step's loss is far below the pretrained run's first (the weights are loaded) and its learning rate is
    the schedule's first (the optimizer and schedule start afresh)."""
    ft, ddp = _rows(tracked_run[0] / "trk"), _rows(pretrained[0] / "tr")
    assert ft[0]["loss"] < ddp[0]["loss"] - 0.5
    assert ft[0]["lr"] == ddp[0]["lr"]
