"""Run directories that never destroy each other (pipelines/rundir.py): ownership markers, no nesting, one
command per stage at a time (a lease on local disk and on object storage). Pure logic, no Ray; the CLI
tests at the end stop before Ray starts."""

import json
import os
import socket
import subprocess
import sys
import time

import fsspec
import pytest

from raylm.core.manifest import MANIFEST
from raylm.core.paths import RUN_MARKER, STAGE_MARKER
from raylm.pipelines.run import check_removable
from raylm.pipelines.rundir import LOCK_PREFIX, RunConflict, acquire, claim, locked, stale_reason
from tests.conftest import ROOT


def _finished_legacy_run(storage, name: str) -> str:
    """A finished data stage as raylm wrote it before ownership markers: data/manifest.json and a shard."""
    data = storage / name / "data"
    (data / "train").mkdir(parents=True)
    (data / MANIFEST).write_text("{}")
    (data / "train" / "shard-000000.npy").write_bytes(b"tokens")
    return str(data)


def test_claim_writes_the_marker(tmp_path):
    claim(str(tmp_path), "a")
    assert json.loads((tmp_path / "a" / RUN_MARKER).read_text())["name"] == "a"


def test_claim_again_is_a_no_op(tmp_path):
    claim(str(tmp_path), "a")
    claim(str(tmp_path), "a")
    assert (tmp_path / "a" / RUN_MARKER).exists()


def test_a_name_inside_another_run_is_refused(tmp_path):
    claim(str(tmp_path), "nb")
    with pytest.raises(RunConflict, match="inside the run 'nb'"):
        claim(str(tmp_path), "nb/data")


def test_a_name_containing_another_run_is_refused(tmp_path):
    claim(str(tmp_path), "nb/data")
    with pytest.raises(RunConflict, match="holds the run 'nb/data'"):
        claim(str(tmp_path), "nb")


def test_sibling_names_are_fine(tmp_path):
    claim(str(tmp_path), "exp/a")
    claim(str(tmp_path), "exp/b")
    assert (tmp_path / "exp" / "b" / RUN_MARKER).exists()


def test_data_dir_holding_a_run_is_not_removable(tmp_path):
    claim(str(tmp_path), "nb/data")
    with pytest.raises(RunConflict, match="holds the run 'nb/data'"):
        check_removable(str(tmp_path / "nb" / "data"))


def test_a_directory_raylm_did_not_make_is_not_removable(tmp_path):
    d = tmp_path / "x" / "data"
    d.mkdir(parents=True)
    (d / "my-notes.txt").write_text("mine")
    with pytest.raises(RunConflict, match="not made by raylm's data stage"):
        check_removable(str(d))


def test_a_data_dir_the_stage_made_is_removable(tmp_path):
    d = tmp_path / "x" / "data"
    d.mkdir(parents=True)
    (d / STAGE_MARKER).write_text("")
    (d / "_work").mkdir()
    check_removable(str(d))


def test_a_finished_run_from_before_markers_is_removable(tmp_path):
    check_removable(_finished_legacy_run(tmp_path, "old"))


# ---------------------------------------------------------------- locks
def _quiet(msg: str) -> None:
    pass


def test_second_holder_is_refused_naming_the_first(tmp_path):
    lease = acquire(str(tmp_path / "r"), "train", _quiet)
    try:
        with pytest.raises(RunConflict, match=f"pid {os.getpid()}"):
            acquire(str(tmp_path / "r"), "train", _quiet)
    finally:
        lease.release()


def test_other_stages_do_not_conflict(tmp_path):
    with locked(str(tmp_path / "r"), ("train",), _quiet), locked(str(tmp_path / "r"), ("eval",), _quiet):
        assert (tmp_path / "r" / f"{LOCK_PREFIX}eval").exists()


def test_release_frees_the_lock(tmp_path):
    with locked(str(tmp_path / "r"), ("data",), _quiet):
        pass
    assert not (tmp_path / "r" / f"{LOCK_PREFIX}data").exists()


def _dead_pid() -> int:
    p = subprocess.Popen([sys.executable, "-c", "pass"])
    p.wait()
    return p.pid


def _write_lock(root, stage: str, **holder) -> None:
    root.mkdir(parents=True, exist_ok=True)
    (root / f"{LOCK_PREFIX}{stage}").write_text(json.dumps({"token": "old", "command": "raylm train", **holder}))


def test_lock_of_a_dead_process_is_taken_over_with_a_message(tmp_path):
    _write_lock(tmp_path / "r", "train", host=socket.gethostname(), pid=_dead_pid(), expires=time.time() + 3600)
    said = []
    acquire(str(tmp_path / "r"), "train", said.append).release()
    assert "is gone" in said[0]


def test_unexpired_lease_of_another_host_holds(tmp_path):
    _write_lock(tmp_path / "r", "train", host="elsewhere", pid=1, expires=time.time() + 3600)
    with pytest.raises(RunConflict, match="on elsewhere"):
        acquire(str(tmp_path / "r"), "train", _quiet)


def test_expired_lease_of_another_host_is_taken_over(tmp_path):
    _write_lock(tmp_path / "r", "train", host="elsewhere", pid=1, expires=time.time() - 1)
    said = []
    acquire(str(tmp_path / "r"), "train", said.append).release()
    assert "lease expired" in said[0]


def test_stale_reason_none_for_a_live_local_holder():
    holder = {"host": socket.gethostname(), "pid": os.getpid(), "expires": 0}
    assert stale_reason(holder) is None


def test_lease_is_renewed_while_held(tmp_path):
    lease = acquire(str(tmp_path / "r"), "tune", _quiet, lease_s=0.3)
    try:
        first = json.loads((tmp_path / "r" / f"{LOCK_PREFIX}tune").read_text())["expires"]
        time.sleep(0.5)
        assert json.loads((tmp_path / "r" / f"{LOCK_PREFIX}tune").read_text())["expires"] > first
    finally:
        lease.release()


def test_object_storage_lock_refuses_a_second_holder():
    """memory:// stands for object storage: no exclusive create, the lease written and read back."""
    root = "memory://bucket/rundir-test"
    lease = acquire(root, "data", _quiet)
    try:
        with pytest.raises(RunConflict, match="running its data stage"):
            acquire(root, "data", _quiet)
    finally:
        lease.release()
    assert not fsspec.filesystem("memory").exists(f"/bucket/rundir-test/{LOCK_PREFIX}data")


# ---------------------------------------------------------------- the commands
def _raylm(*args: str, cwd) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "raylm", *args], cwd=cwd, capture_output=True, text=True, timeout=300)


def test_a_run_never_deletes_another_runs_output(tmp_path):
    """A finished run `nb/data` (made before markers existed) survives `raylm data` on a run named `nb`, which is
    refused before Ray starts."""
    data = _finished_legacy_run(tmp_path, "nb/data")
    r = _raylm("data", str(ROOT / "cluster/recipes/local.yaml"), "--set", f"storage_path={tmp_path}", "--set", "name=nb", cwd=ROOT)
    assert (r.returncode, os.path.exists(f"{data}/{MANIFEST}")) == (2, True), r.stderr
    assert "ray: started" not in r.stdout, r.stdout  # refused before Ray starts


def test_a_second_command_on_the_same_stage_exits_2_in_one_line(tmp_path):
    lease = acquire(str(tmp_path / "busy"), "train", _quiet)  # held by this (live) process, as a running `raylm train`
    try:
        r = _raylm("train", str(ROOT / "cluster/recipes/local.yaml"), "--set", f"storage_path={tmp_path}", "--set", "name=busy", cwd=ROOT)
    finally:
        lease.release()
    assert (r.returncode, len(r.stderr.strip().splitlines()), "running its train stage" in r.stderr) == (2, 1, True), r.stderr
