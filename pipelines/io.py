"""File utilities over fsspec: the same calls for a local path and a URL (s3://, gs://, memory://)."""

from __future__ import annotations

import os
from collections.abc import Iterator

import fsspec


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
