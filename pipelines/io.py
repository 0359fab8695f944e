"""File utilities over fsspec: the same calls for a local path and a URL (s3://, gs://, memory://)."""

from __future__ import annotations

import errno
import os
import re
from collections.abc import Iterator
from contextlib import contextmanager

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


def write_atomic(path: str, data: str | bytes) -> None:
    """Write a whole small file so that a reader sees the old content or the new, never a part: on a local disk
    into a temporary name beside it, then renamed over it (a failed write, a full disk, leaves no empty or cut
    file); on object storage an object is written whole anyway. An OSError names the file."""
    raw = data.encode() if isinstance(data, str) else data
    fs, local = fsspec.core.url_to_fs(path)
    if not is_local(fs):
        fs.pipe_file(path, raw)
        return
    path = local  # a file:// URL too
    tmp = f"{path}.tmp-{os.getpid()}"
    try:
        with open(tmp, "wb") as f:
            f.write(raw)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except OSError as e:
        if os.path.exists(tmp):
            os.remove(tmp)
        if e.filename is None:
            e.filename = path
        raise


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
