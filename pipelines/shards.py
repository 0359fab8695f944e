"""Token shards (`.npy`, 1-D uint16/uint32) with a document index, and the manifest.

A shard is cut when it reaches `shard_tokens`; documents never straddle shards. The writer keeps
at most one shard in memory. The manifest is written last, atomically (tmp + rename).
"""
from __future__ import annotations

import hashlib
import json
from typing import Iterator

import fsspec
import numpy as np


def token_dtype(n_vocab: int) -> np.dtype:
    return np.dtype(np.uint16) if n_vocab <= 65536 else np.dtype(np.uint32)


def _save_npy(fs, path: str, arr: np.ndarray) -> str:
    """Write an .npy file; returns the sha256 of its bytes."""
    tmp = path + ".tmp"
    with fs.open(tmp, "wb") as f:
        h = _HashingWriter(f)
        np.save(h, arr, allow_pickle=False)
    fs.mv(tmp, path)
    return h.sha.hexdigest()


class _HashingWriter:
    def __init__(self, f):
        self.f, self.sha = f, hashlib.sha256()

    def write(self, b) -> int:
        self.sha.update(b)
        return self.f.write(b)


_COPY_CHUNK = 16 << 20


class ShardWriter:
    """Appends documents (token arrays starting with EOT) to `{root}/{split}/shard-NNNNNN.npy`.

    Tokens stream to a raw temp file as they come; closing a shard writes the .npy header and copies
    the data behind it (hashing as it goes), so memory stays at one input batch, not one shard."""

    def __init__(self, root: str, split: str, dtype: np.dtype, shard_tokens: int):
        self.fs, _ = fsspec.core.url_to_fs(root)
        self.root, self.split, self.dtype, self.limit = root, split, dtype, shard_tokens
        self.fs.makedirs(f"{root}/{split}", exist_ok=True)
        self.raw = None  # open temp file of the current shard
        self.lengths: list[int] = []
        self.n = 0
        self.shards: list[dict] = []
        self.tokens = 0
        self.docs = 0

    def _name(self) -> str:
        return f"{self.split}/shard-{len(self.shards):06d}"

    def _append(self, tokens: np.ndarray, lengths: np.ndarray) -> None:
        if self.raw is None:
            self.raw = self.fs.open(f"{self.root}/{self._name()}.raw.tmp", "wb")
        self.raw.write(np.ascontiguousarray(tokens, dtype=self.dtype).tobytes())
        self.lengths.extend(int(x) for x in lengths)
        self.n += len(tokens)

    def add(self, tokens: np.ndarray, lengths: np.ndarray) -> None:
        """Many documents at once: `tokens` is their concatenation, `lengths` their sizes."""
        if len(lengths) == 0:
            return
        ends = np.cumsum(lengths)
        start_doc, start_tok = 0, 0
        while start_doc < len(lengths):
            room = self.limit - self.n
            # how many whole docs fit; a single doc larger than a shard gets a shard of its own
            k = int(np.searchsorted(ends[start_doc:] - start_tok, room, side="right"))
            if k == 0 and self.n == 0:
                k = 1
            if k == 0:
                self.flush()
                continue
            stop_tok = int(ends[start_doc + k - 1])
            self._append(tokens[start_tok:stop_tok], lengths[start_doc:start_doc + k])
            start_doc += k
            start_tok = stop_tok
            if self.n >= self.limit:
                self.flush()

    def flush(self) -> None:
        if not self.lengths:
            return
        name = self._name()
        raw_path = f"{self.root}/{name}.raw.tmp"
        self.raw.close()
        self.raw = None
        path, tmp = f"{self.root}/{name}.npy", f"{self.root}/{name}.npy.tmp"
        with self.fs.open(tmp, "wb") as f, self.fs.open(raw_path, "rb") as src:
            out = _HashingWriter(f)
            np.lib.format.write_array_header_1_0(out, {"descr": np.lib.format.dtype_to_descr(self.dtype),
                                                       "fortran_order": False, "shape": (self.n,)})
            for chunk in iter(lambda: src.read(_COPY_CHUNK), b""):
                out.write(chunk)
        self.fs.mv(tmp, path)
        self.fs.rm(raw_path)
        offsets = np.concatenate([[0], np.cumsum(self.lengths)[:-1]]).astype(np.uint64)
        _save_npy(self.fs, f"{self.root}/{name}.idx.npy", offsets)
        self.shards.append({"path": f"{name}.npy", "tokens": self.n, "docs": len(self.lengths), "sha256": out.sha.hexdigest()})
        self.tokens += self.n
        self.docs += len(self.lengths)
        self.lengths, self.n = [], 0

    def close(self) -> dict:
        self.flush()
        return {"tokens": self.tokens, "docs": self.docs, "shards": self.shards}


def write_manifest(root: str, manifest: dict) -> None:
    fs, _ = fsspec.core.url_to_fs(root)
    tmp = f"{root}/manifest.json.tmp"
    with fs.open(tmp, "w") as f:
        json.dump(manifest, f, indent=1, sort_keys=False)
        f.write("\n")
    fs.mv(tmp, f"{root}/manifest.json")


def read_manifest(root: str) -> dict:
    fs, _ = fsspec.core.url_to_fs(root)
    with fs.open(f"{root}/manifest.json") as f:
        return json.load(f)


def is_local(fs) -> bool:
    """Whether an fsspec filesystem is this machine's disk (np.load can mmap its paths)."""
    return "file" in (fs.protocol if isinstance(fs.protocol, tuple) else (fs.protocol,))


def iter_documents(root: str, split: str) -> Iterator[np.ndarray]:
    """Every document of a split, in order, as its token array (EOT first). mmap'd when local."""
    man = read_manifest(root)
    fs, _ = fsspec.core.url_to_fs(root)
    local = is_local(fs)
    for shard in man["splits"][split]["shards"]:
        path = f"{root}/{shard['path']}"
        if local:
            tokens = np.load(path, mmap_mode="r")
            offsets = np.load(path[:-4] + ".idx.npy")
        else:
            with fs.open(path) as f:
                tokens = np.load(f)
            with fs.open(path[:-4] + ".idx.npy") as f:
                offsets = np.load(f)
        ends = np.r_[offsets[1:], len(tokens)].astype(np.int64)
        for s, e in zip(offsets.astype(np.int64), ends):
            yield tokens[s:e]


def rm_tree(path: str) -> None:
    fs, _ = fsspec.core.url_to_fs(path)
    if fs.exists(path):
        fs.rm(path, recursive=True)


def exists(path: str) -> bool:
    fs, _ = fsspec.core.url_to_fs(path)
    return fs.exists(path)


def makedirs(path: str) -> None:
    fs, _ = fsspec.core.url_to_fs(path)
    fs.makedirs(path, exist_ok=True)


__all__ = ["ShardWriter", "write_manifest", "read_manifest", "iter_documents", "token_dtype", "rm_tree", "exists", "makedirs", "is_local"]
