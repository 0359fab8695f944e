"""run.json: what produced a stage's output, written into the stage's directory (data/, train/, tune/,
eval/) by the command that ran it. The command line, the resolved recipe, the code (git commit, dirty or
not), the versions that matter, the cluster it ran on, when it started and ended, and how it ended.
Written when the stage starts (status "running") and again when it ends, so `raylm runs` sees a stage
in progress too; a data stage writes it when it ends (it starts by wiping an unfinished data/)."""

from __future__ import annotations

import json
import platform
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import datetime, timezone
from importlib import metadata
from pathlib import Path

import fsspec

from raylm.core.io import NoSpace, no_space, write_json

RUN_JSON = "run.json"
PACKAGES = ("raylm", "ray", "torch", "tiktoken", "numpy", "pyarrow")
_SOURCE = Path(__file__).resolve().parents[1]  # the raylm source tree (a git checkout, or an unpacked job dir)
_COMMAND: list[str] = []  # the command line being run, as `raylm` main() got it (set_command)


def set_command(argv: list[str]) -> None:
    _COMMAND[:] = ["raylm", *argv]


def now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def git_state(where: Path = _SOURCE) -> dict | None:
    """The commit of the raylm checkout that runs, and whether it had uncommitted changes; None outside a
    git checkout (an installed package, a Ray Jobs working_dir)."""
    try:
        run = lambda *a: subprocess.run(["git", *a], cwd=where, capture_output=True, text=True, timeout=10)  # noqa: E731
        head = run("rev-parse", "HEAD")
        if head.returncode:
            return None
        dirty = run("status", "--porcelain", "--untracked-files=no")
        return {"commit": head.stdout.strip(), "dirty": bool(dirty.stdout.strip())}
    except (OSError, subprocess.SubprocessError):
        return None


def versions() -> dict[str, str | None]:
    out = {"python": platform.python_version()}
    for p in PACKAGES:
        try:
            out[p] = metadata.version(p)
        except metadata.PackageNotFoundError:
            out[p] = None
    return out


def cluster_resources() -> dict | None:
    """The nodes, CPUs and GPUs (with their accelerator types) of the Ray this process is connected to."""
    import ray

    if not ray.is_initialized():
        return None
    nodes = [n for n in ray.nodes() if n.get("Alive")]
    res = [n.get("Resources", {}) for n in nodes]
    gpus = sorted({k.removeprefix("accelerator_type:") for r in res for k in r if k.startswith("accelerator_type:")})
    return {
        "nodes": len(nodes),
        "cpus": int(sum(r.get("CPU", 0) for r in res)),
        "gpus": int(sum(r.get("GPU", 0) for r in res)),
        "gpu_types": gpus,
    }


def write_run_json(stage_dir: str, record: dict) -> None:
    """Atomic: a failed write (a full disk) leaves the previous run.json, never an empty or cut one."""
    fs, _ = fsspec.core.url_to_fs(stage_dir)
    fs.makedirs(stage_dir, exist_ok=True)
    write_json(f"{stage_dir}/{RUN_JSON}", record, default=str)


def read_run_json(stage_dir: str) -> dict | None:
    fs, _ = fsspec.core.url_to_fs(stage_dir)
    path = f"{stage_dir}/{RUN_JSON}"
    try:
        return json.loads(fs.cat(path)) if fs.exists(path) else None
    except (OSError, ValueError):
        return None


@contextmanager
def recorded(
    stage_dir: str, stage: str, recipe: dict, at_start: bool = True, code_of: Callable[[BaseException], int] = lambda e: 1
) -> Iterator[dict]:
    """Records the stage run inside the `with`: its run.json says "running" (when `at_start`), then
    "succeeded", "failed" (an exception: exit code `code_of(e)`, or a non-zero `record["exit_code"]` the
    body set) or "interrupted". The body may add fields to the record it gets (the resolved layout, results).
    A full disk that names no file is raised as NoSpace naming the stage directory; a run.json that cannot be
    written at the end never hides the body's own error."""
    rec = {"stage": stage, "command": list(_COMMAND) or ["raylm", *sys.argv[1:]], "recipe": recipe, "git": git_state(), "versions": versions()}
    rec.update(cluster=cluster_resources(), started=now(), ended=None, status="running", exit_code=None)
    t0 = time.monotonic()
    if at_start:
        write_run_json(stage_dir, rec)
    try:
        yield rec
        rec["exit_code"] = rec["exit_code"] or 0
        rec["status"] = "succeeded" if rec["exit_code"] == 0 else "failed"
    except KeyboardInterrupt:
        rec.update(status="interrupted", exit_code=1)
        _record_end(stage_dir, rec, t0, failed=True)
        raise
    except BaseException as e:
        rec.update(status="failed", exit_code=code_of(e), error=f"{type(e).__name__}: {e}"[:2000])
        _record_end(stage_dir, rec, t0, failed=True)
        if no_space(e) == "":
            raise NoSpace(stage_dir) from e
        raise
    _record_end(stage_dir, rec, t0, failed=False)


def _record_end(stage_dir: str, rec: dict, t0: float, failed: bool) -> None:
    """The record of how the stage ended. When the stage failed, its error is what the command reports: a
    run.json that cannot be written then (the same full disk) stays as it was."""
    rec.update(ended=now(), seconds=round(time.monotonic() - t0, 1), cluster=rec["cluster"] or cluster_resources())
    try:
        write_run_json(stage_dir, rec)
    except OSError:
        if not failed:
            raise
