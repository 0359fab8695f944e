"""File utilities over fsspec: the same calls for a local path and a URL (s3://, gs://, memory://)."""

from __future__ import annotations

import os

import fsspec


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
