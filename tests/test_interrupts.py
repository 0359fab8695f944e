"""SIGTERM (what Kubernetes, Slurm and `timeout` send) ends a command as Ctrl-C does: exit 1, run.json
"interrupted", one line saying how to go on, no Ray C++ signal lines, the stage's lock given back; a search
campaign interrupted records the trials that never ran as such and says how to resume it."""

import csv
import json
import os
import signal
import subprocess
import sys
import time

import pytest

from raylm.pipelines.rundir import LOCK_PREFIX
from tests.conftest import ROOT

pytestmark = pytest.mark.slow


# `raylm ARGS` with SIGINT ignored, as a non-interactive shell starts a background job (CI runners, scripts,
# `cmd &`): the disposition survives exec, so only SIGTERM's own handling can end the command as interrupted
_SIGINT_IGNORED = (
    "import os, signal, sys; signal.signal(signal.SIGINT, signal.SIG_IGN); os.execv(sys.executable, [sys.executable, '-m', 'raylm', *sys.argv[1:]])"
)


def _start(args: list[str], ray=None, sigint_ignored: bool = False) -> subprocess.Popen:
    """`raylm ARGS`: a driver of the session's Ray instance `ray` when given (RAY_ADDRESS, as Ray Jobs starts one),
    else on a local instance of its own."""
    path = os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))  # the caller's too (benchmarks/train_runs.py)
    env = {**os.environ, "PYTHONPATH": path}
    if ray is not None:
        env["RAY_ADDRESS"] = ray.get_runtime_context().gcs_address
    cmd = [sys.executable, "-c", _SIGINT_IGNORED] if sigint_ignored else [sys.executable, "-m", "raylm"]
    return subprocess.Popen([*cmd, *args], cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _wait_for(path, proc, timeout: float = 240) -> None:
    deadline = time.time() + timeout
    while time.time() < deadline and proc.poll() is None:
        if path.exists() and path.stat().st_size:
            return
        time.sleep(0.3)
    raise AssertionError(f"{path} never appeared (rc {proc.poll()})")


def _terminate(proc) -> tuple[int, str]:
    """SIGTERM, then the exit code and stderr; stdout's tail and the child's signal masks join stderr when it
    does not end as interrupted, so that a failure says what the process was doing."""
    with open(f"/proc/{proc.pid}/status") as f:
        masks = " ".join(ln.strip() for ln in f if ln.startswith(("SigBlk", "SigIgn", "SigCgt")))
    alive = proc.poll() is None
    proc.send_signal(signal.SIGTERM)
    out, err = proc.communicate(timeout=120)
    if proc.returncode != 1:
        err += f"\n[test] at SIGTERM: alive {alive}, {masks}\n[test] stdout: {out[-1500:]}"
    return proc.returncode, err


def test_sigterm_ends_training_as_an_interrupt(ray_session, sample_shards, tmp_path):
    sets = [f"storage_path={tmp_path}", "name=term", f"train.data_path={sample_shards}", "train.max_steps=5000"]
    sets += ["train.model={n_layer: 1, n_head: 2, d_model: 32, seq_len: 32}", "train.batch={micro_batch_size: 2, global_batch_tokens: 128}"]
    sets += ["train.scaling.num_workers=1"]  # a second worker (~3 s of CPU to start) adds nothing to how the driver ends
    # SIGINT ignored: the SIGTERM alone ends it (with SIGINT's default handler the same path raises KeyboardInterrupt
    # by way of it: tests/test_signals.py). A driver of the session's Ray, as a Ray Jobs driver is: a local instance
    # of its own costs ~9 s more, and tests/test_cli_errors.py already starts those
    proc = _start(["train", str(ROOT / "cluster/recipes/local.yaml"), *[a for s in sets for a in ("--set", s)]], ray_session, sigint_ignored=True)
    _wait_for(tmp_path / "term" / "train" / "metrics.jsonl", proc)
    rc, err = _terminate(proc)
    rec = json.loads((tmp_path / "term" / "train" / "run.json").read_text())
    assert (rc, rec["status"]) == (1, "interrupted"), err
    assert err.strip().splitlines()[-1].startswith("raylm: interrupted; run the same command again"), err
    assert "SIGTERM" not in err and "***" not in err, err  # no C++ signal handler's stack lines
    assert not (tmp_path / "term" / f"{LOCK_PREFIX}train").exists()


def test_an_interrupted_campaign_says_so_and_how_to_resume(ray_session, sample_shards, tmp_path):
    """Three trials of one CPU each on 2 CPUs, all started by Tune: SIGTERM once one has trained; the third never
    got its workers (or, given them by the CPUs the first two gave back as Tune stopped them, did not train: the
    campaign was interrupted), and a fourth was never drawn. A driver of the session's Ray instance, as a Ray Jobs
    driver is (on a warm instance the third trial's workers start fastest)."""
    sets = [f"storage_path={tmp_path}", "name=cut", f"train.data_path={sample_shards}", "tune.num_samples=4", "tune.max_concurrent_trials=3"]
    sets += ["train.model={n_layer: 1, n_head: 2, d_model: 32, seq_len: 32}", "train.batch={micro_batch_size: 2, global_batch_tokens: 128}"]
    sets += ["train.max_steps=2000", "train.eval={every: 50, batches: 1}", "tune.scheduler={type: fifo}"]
    proc = _start(["tune", str(ROOT / "cluster/recipes/tune-local.yaml"), *[a for s in sets for a in ("--set", s)]], ray_session)
    trials = tmp_path / "cut" / "tune" / "trials"
    deadline = time.time() + 240
    while time.time() < deadline and not list(trials.glob("*/train/metrics.jsonl")):
        time.sleep(0.3)
    rc, err = _terminate(proc)
    with open(tmp_path / "cut" / "tune" / "results.csv") as f:
        status = sorted(r["status"] for r in csv.DictReader(f))
    assert (rc, len(status), set(status) <= {"interrupted", "not started"}, "not started" in status) == (1, 3, True, True), (status, err)
    assert "1 not yet drawn" in err and "with --resume" in err.strip().splitlines()[-1], err
    assert json.loads((tmp_path / "cut" / "tune" / "run.json").read_text())["status"] == "interrupted"
