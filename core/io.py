"""File utilities over fsspec: the same calls for a local path and a URL (s3://, gs://, memory://)."""

from __future__ import annotations

import errno
import json
import os
import re
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from typing import IO

import fsspec

_NO_SPACE = os.strerror(errno.ENOSPC)  # "No space left on device"
# how a disk-full error reads in an error's text: a Ray worker's error whose cause did not survive pickling
# (Ray Data wraps it in a UserCodeException) keeps it only in its traceback text
_NO_SPACE_TEXT = re.compile(rf"\[Errno {errno.ENOSPC}\] {re.escape(_NO_SPACE)}(?:: '([^'\n]+)')?")


class RecordError(ValueError):
    """A user's file, or one of its records (a line), that its reader cannot take: why, and the line number."""

    def __init__(self, why: str, line: int | None = None):
        super().__init__(f"line {line}: {why}" if line is not None else why)
        self.why, self.line = why, line


def text_lines(f) -> Iterator[tuple[int, str]]:
    """(line number, text) of each line of a binary file object, decoded as UTF-8 (a byte-order mark at the start
    dropped); a line that is not UTF-8 is a RecordError naming it."""
    for n, raw in enumerate(f, 1):
        try:
            yield n, raw.decode("utf-8-sig" if n == 1 else "utf-8")
        except UnicodeDecodeError:
            raise RecordError("not UTF-8 text", n) from None


class NoSpace(OSError):
    """The disk filled while writing `filename` (a file, or the stage directory a command was writing into)."""

    def __init__(self, path: str):
        super().__init__(errno.ENOSPC, _NO_SPACE, path)


def is_local(fs) -> bool:
    """Whether an fsspec filesystem is this machine's disk (np.load can mmap its paths)."""
    return "file" in (fs.protocol if isinstance(fs.protocol, tuple) else (fs.protocol,))


def absolute(path: str) -> str:
    """A local path made absolute (Ray workers do not share the driver's working directory); URLs as given."""
    return path if "://" in path else os.path.abspath(path)


def exists(path: str) -> bool:
    fs, _ = fsspec.core.url_to_fs(path)
    return fs.exists(path)


def makedirs(path: str) -> None:
    fs, _ = fsspec.core.url_to_fs(path)
    fs.makedirs(path, exist_ok=True)


def rm_tree(path: str) -> None:
    fs, _ = fsspec.core.url_to_fs(path)
    if fs.exists(path):
        fs.rm(path, recursive=True)


def touch(path: str) -> None:
    """An empty file (a marker)."""
    fs, _ = fsspec.core.url_to_fs(path)
    fs.pipe_file(path, b"")


@contextmanager
def atomic_open(path: str, mode: str = "wb", fsync: bool = False) -> Iterator[IO]:
    """A file that a reader sees whole or not at all: written under a temporary name beside `path` (this
    process's own: two writers of one file do not mix), renamed over it when the block ends without error; an
    error removes the temporary file, and an OSError names `path`. `fsync`: on a local disk the bytes reach it
    before the rename, so a full disk fails here rather than leaving an empty or cut file behind later."""
    fs, local = fsspec.core.url_to_fs(path)
    tmp = f"{local}.{os.getpid()}.tmp"
    try:
        with fs.open(tmp, mode) as f:
            yield f
            if fsync and is_local(fs):
                f.flush()
                os.fsync(f.fileno())
        if is_local(fs):
            os.replace(tmp, local)
        else:
            fs.mv(tmp, local)
    except BaseException as e:
        with suppress(OSError):
            if fs.exists(tmp):
                fs.rm_file(tmp)
        if isinstance(e, OSError) and e.filename is None:
            e.filename = path
        raise


def write_atomic(path: str, data: str | bytes) -> None:
    """Write a whole small file so that a reader sees the old content or the new, never a part (atomic_open,
    synced); on object storage an object is written whole anyway, in one request."""
    raw = data.encode() if isinstance(data, str) else data
    fs, _ = fsspec.core.url_to_fs(path)
    if not is_local(fs):
        with naming(path):
            fs.pipe_file(path, raw)
        return
    with atomic_open(path, "wb", fsync=True) as f:
        f.write(raw)


def write_json(path: str, value, indent: int | None = 1, default=None) -> None:
    """A JSON file (any fsspec URL), written atomically: `value` with `indent`, then a newline. The one way
    raylm writes JSON beside a run; `default` turns what JSON has no type for into something it has."""
    write_atomic(path, json.dumps(value, indent=indent, default=default) + "\n")


@contextmanager
def naming(path: str) -> Iterator[None]:
    """An OSError raised inside that names no file (a write to an open file: a full disk) is given `path`."""
    try:
        yield
    except OSError as e:
        if e.filename is None:
            e.filename = path
        raise


def _chain(e: BaseException) -> Iterator[BaseException]:
    """An error and every error behind it: its cause and context, and a Ray task error's own cause."""
    todo, seen = [e], set()
    while todo:
        x = todo.pop(0)
        if x is None or id(x) in seen:
            continue
        seen.add(id(x))
        yield x
        todo += [getattr(x, "cause", None), x.__cause__, x.__context__]


def no_space(e: BaseException) -> str | None:
    """If `e` is, or was caused by, a full disk (ENOSPC, in this process or in a Ray worker): the file being
    written ("" when no error names one); else None."""
    found = None
    for x in _chain(e):
        if isinstance(x, OSError) and x.errno == errno.ENOSPC:
            if x.filename:
                return str(x.filename)
            found = ""
        for m in _NO_SPACE_TEXT.finditer(str(x)):
            if m.group(1):
                return m.group(1)
            found = ""
    return found
