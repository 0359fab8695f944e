"""Who owns a run directory, and who writes into it now: the two guards that keep runs from destroying each other.

Ownership: the first command that writes into a run leaves `.raylm-run` at `{storage_path}/{name}/` (its name,
when, and the command). Runs never nest: a name below another run's directory (`nb/data` beside a run `nb`),
or one whose directory holds another run, is refused before anything is written, and a stage directory is
removed only when its own run made it, never when it holds another run (`holds_other_run`; the data stage's
check is pipelines/run.py `check_removable`).

Locks: a command holds one lock per stage directory it writes (`.raylm-lock-data`, `-train`, `-tune`, `-eval`
at the run's root) for as long as it runs. A lock is a lease: a small JSON file (holder, host, pid, expiry)
that the holder renews every LEASE_S / 3 seconds, so it works on a local disk and on object storage alike
(where a file cannot be created exclusively, a write is read back before it counts). A second command on the
same stage stops at once, naming the holder; a lock whose holder is gone (a process no longer alive on this
host, or a lease not renewed in time) is taken over with a message.
"""

from __future__ import annotations

import json
import os
import socket
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import datetime, timezone

import fsspec

from raylm.core.io import is_local, write_atomic, write_json
from raylm.core.paths import RUN_MARKER

LOCK_PREFIX = ".raylm-lock-"
LEASE_S = 60.0  # a lock not renewed for this long is stale (its holder's host died or lost the storage)
_SETTLE_S = 0.5  # object storage: how long a written lock must survive before it counts (another writer's wins)


class RunConflict(ValueError):
    """Another run or command is in the way: exit 2, one line naming it."""


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def _command() -> str:
    return " ".join(["raylm", *sys.argv[1:2]]) if sys.argv else "raylm"


# ---------------------------------------------------------------- ownership
def _read_json(fs, path: str) -> dict | None:
    try:
        return json.loads(fs.cat_file(path))
    except (OSError, ValueError):
        return None


def claim(storage_path: str, name: str) -> None:
    """Mark `{storage_path}/{name}` as the run `name`'s, refusing a name that nests inside another run or
    holds one. A no-op for a run that already has its marker."""
    fs, storage = fsspec.core.url_to_fs(storage_path)
    storage = storage.rstrip("/")
    parts = name.split("/")
    for i in range(1, len(parts)):
        outer = "/".join(parts[:i])
        if fs.exists(f"{storage}/{outer}/{RUN_MARKER}"):
            raise RunConflict(
                f"run name {name!r} lies inside the run {outer!r} ({storage_path.rstrip('/')}/{outer}); runs must not nest: choose a name outside it"
            )
    root = f"{storage}/{name}"
    if fs.exists(f"{root}/{RUN_MARKER}"):
        return
    shown = f"{storage_path.rstrip('/')}/{name}"
    held = holds_other_run(shown)
    if held is not None:
        raise RunConflict(f"{shown} holds the run {held!r}: a run named {name!r} would contain it; choose another name")
    fs.makedirs(root, exist_ok=True)
    write_json(f"{shown}/{RUN_MARKER}", {"name": name, "created": _now(), "command": _command()}, indent=None)


def holds_other_run(directory: str) -> str | None:
    """The name of a run whose directory lies inside `directory` (which raylm must then not remove, nor make a
    run of), or None; a marker that cannot be read is named by its directory, relative to `directory`."""
    fs, path = fsspec.core.url_to_fs(directory)
    if not fs.isdir(path):
        return None
    inner = next((p for p in fs.find(path) if p.rsplit("/", 1)[-1] == RUN_MARKER), None)
    if inner is None:
        return None
    return (_read_json(fs, inner) or {}).get("name") or inner[len(path.rstrip("/")) + 1 : -len(RUN_MARKER) - 1]


# ---------------------------------------------------------------- locks
def _alive_here(holder: dict) -> bool | None:
    """Whether the holder's process lives, when it ran on this host; None when that cannot be told here."""
    if holder.get("host") != socket.gethostname() or not isinstance(holder.get("pid"), int):
        return None
    try:
        os.kill(holder["pid"], 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    started = _process_start(holder["pid"])
    return started is None or holder.get("pid_start") in (None, started)  # a reused pid is another process


def _process_start(pid: int) -> int | None:
    """The process's start time in clock ticks since boot (Linux), which tells a reused pid apart."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            return int(f.read().rsplit(b")", 1)[1].split()[19])
    except (OSError, ValueError, IndexError):
        return None


def stale_reason(holder: dict, now: float | None = None) -> str | None:
    """Why a lock's holder no longer holds it (its process is gone, or its lease ran out), or None if it does."""
    alive = _alive_here(holder)
    if alive is False:
        return f"its process {holder.get('pid')} on this host is gone"
    if alive is None and float(holder.get("expires", 0)) < (time.time() if now is None else now):
        return f"its lease expired at {datetime.fromtimestamp(float(holder.get('expires', 0)), timezone.utc).isoformat(timespec='seconds')}"
    return None


class Lease:
    """One held lock: renewed by a daemon thread until `release`."""

    def __init__(self, fs, path: str, shown: str, stage: str, lease_s: float):
        self.fs, self.path, self.shown, self.lease_s = fs, path, shown, lease_s
        self.url = fs.unstrip_protocol(path)
        self.record = {
            "token": uuid.uuid4().hex,
            "stage": stage,
            "command": _command(),
            "host": socket.gethostname(),
            "pid": os.getpid(),
            "pid_start": _process_start(os.getpid()),
            "since": _now(),
        }
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def body(self) -> bytes:
        return json.dumps({**self.record, "expires": time.time() + self.lease_s}).encode()

    def start(self) -> None:
        self._thread = threading.Thread(target=self._renew, name=f"raylm-lease-{self.record['stage']}", daemon=True)
        self._thread.start()

    def _renew(self) -> None:
        while not self._stop.wait(self.lease_s / 3):
            try:
                if (_read_json(self.fs, self.path) or {}).get("token") != self.record["token"]:
                    print(f"raylm: warning: the lock {self.shown} was taken over by another command", file=sys.stderr, flush=True)
                    return
                write_atomic(self.url, self.body())  # a reader mid-renewal sees the old lease or the new, never a part
            except OSError:
                pass  # storage briefly unreachable: try again at the next renewal, within the lease

    def release(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
        try:
            if (_read_json(self.fs, self.path) or {}).get("token") == self.record["token"]:
                self.fs.rm_file(self.path)
        except OSError:
            pass  # left behind, it goes stale: the next command takes it over


def _create(fs, path: str, body: bytes) -> bool:
    """Write the lock file if none exists; whether this call created it."""
    if is_local(fs):
        try:
            fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        except FileExistsError:
            return False
        with os.fdopen(fd, "wb") as f:
            f.write(body)
        return True
    if fs.exists(path):
        return False
    fs.pipe_file(path, body)
    return True


def _won(fs, path: str, token: str) -> bool:
    """Object storage has no exclusive create: two writers may both write; the one whose file stays wins."""
    if is_local(fs):
        return True
    time.sleep(_SETTLE_S)
    return (_read_json(fs, path) or {}).get("token") == token


def acquire(run_root: str, stage: str, say: Callable[[str], None], lease_s: float = LEASE_S) -> Lease:
    """Take the run's lock for `stage`, or raise RunConflict naming its holder. A stale lock is taken over."""
    fs, root = fsspec.core.url_to_fs(run_root)
    fs.makedirs(root, exist_ok=True)
    path = f"{root}/{LOCK_PREFIX}{stage}"
    shown = f"{run_root.rstrip('/')}/{LOCK_PREFIX}{stage}"
    lease = Lease(fs, path, shown, stage, lease_s)
    for _ in range(3):
        if _create(fs, path, lease.body()) and _won(fs, path, lease.record["token"]):
            lease.start()
            return lease
        holder = _read_json(fs, path)
        if holder is None:  # released (or half-written) in between: look again
            time.sleep(0.1)
            continue
        why = stale_reason(holder)
        if why is None:
            raise RunConflict(
                f"{run_root.rstrip('/')}: `{holder.get('command', 'raylm')}` (pid {holder.get('pid')} on {holder.get('host')}, since "
                f"{holder.get('since')}) is running its {stage} stage; wait for it to end, or stop it (a lock it leaves behind is taken over)"
            )
        if (_read_json(fs, path) or {}).get("token") != holder.get("token"):
            continue  # someone took it over first: judge the new holder
        say(f"taking over the {stage} lock of {run_root.rstrip('/')} from `{holder.get('command', 'raylm')}`: {why}")
        fs.rm_file(path)
    raise RunConflict(f"{shown}: could not take the lock (another command keeps taking it); try again")


@contextmanager
def locked(run_root: str, stages: tuple[str, ...], say: Callable[[str], None]) -> Iterator[None]:
    """Hold the run's locks for `stages` inside the `with`."""
    held: list[Lease] = []
    try:
        for s in stages:
            held.append(acquire(run_root, s, say))
        yield
    finally:
        for lease in reversed(held):
            lease.release()
