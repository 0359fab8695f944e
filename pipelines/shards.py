"""Writing shards from the data stage: the large_binary codec of the staging files, and `ShardWriter`, the
sequential writer for shards made from Python, one document after another. The format itself (files, index,
loss masks) is core/shards.py; the manifest that lists the shards, core/manifest.py.

Documents never straddle shards: a shard holds the documents that start in its window of `shard_tokens`
tokens (pipelines/layout.py, the one definition; the write stage's tasks follow it from counts, and
`ShardWriter` sequentially).
"""

from __future__ import annotations

import fsspec
import numpy as np
import pyarrow as pa

from raylm.core.shards import index_path, mask_path, npy_from_raw, save_index, shard_path
from raylm.pipelines.layout import windows


# staging files carry each document's tokens (or loss mask) as one large_binary value: the codec and its inverse
def binary_column(parts: list[np.ndarray], n_rows: int, where: np.ndarray, itemsize: int) -> pa.Array:
    """One large_binary value per row: the bytes of parts[k] at row where[k], empty elsewhere."""
    lengths = np.zeros(n_rows, dtype=np.int64)
    lengths[where] = [len(p) * itemsize for p in parts]
    offsets = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64)
    data = np.concatenate(parts).tobytes() if parts else b""
    return pa.LargeBinaryArray.from_buffers(pa.large_binary(), n_rows, [None, pa.py_buffer(offsets), pa.py_buffer(data)])


def token_arrays(col: pa.Array, dtype: type = np.uint32) -> tuple[np.ndarray, np.ndarray]:
    """A large_binary column of `dtype` strings (tokens, or uint8 loss masks) -> (flat values, lengths)."""
    col = col.combine_chunks() if isinstance(col, pa.ChunkedArray) else col
    if len(col) == 0:
        return np.zeros(0, dtype), np.zeros(0, np.int64)
    offsets = np.frombuffer(col.buffers()[1], dtype=np.int64, count=len(col) + 1, offset=col.offset * 8)
    data = np.frombuffer(col.buffers()[2], dtype=np.uint8)[offsets[0] : offsets[-1]].view(dtype)
    return data, np.diff(offsets) // np.dtype(dtype).itemsize


class ShardWriter:
    """Appends documents (token arrays starting with EOT) to `{root}/{split}/shard-NNNNNN.npy`, one after
    another, cut where pipelines/layout.py cuts (the write stage's layout, sequentially).

    Tokens stream to a raw temp file as they come; closing a shard writes the .npy header and copies
    the data behind it (hashing as it goes), so memory stays at one input batch, not one shard."""

    def __init__(self, root: str, split: str, dtype: np.dtype, shard_tokens: int, masks: bool = False):
        self.fs, _ = fsspec.core.url_to_fs(root)
        self.root, self.split, self.dtype, self.limit = root, split, dtype, shard_tokens
        self.fs.makedirs(f"{root}/{split}", exist_ok=True)
        self.raw = None  # open temp file of the current shard
        self.masks = masks
        self.raw_mask = None  # ... and of its loss mask
        self.lengths: list[int] = []
        self.n = 0
        self.shards: list[dict] = []
        self.pos, self.window = 0, None  # the split's next token, and the window of the open shard (pipelines/layout.py)
        self.tokens = 0
        self.docs = 0

    def _name(self) -> str:
        return self.shard_path(len(self.shards))[: -len(".npy")]

    def _append(self, tokens: np.ndarray, lengths: np.ndarray, mask: np.ndarray | None) -> tuple[int, int]:
        """Writes whole documents to the current shard; (its number, the first one's index in it)."""
        if self.raw is None:
            self.raw = self.fs.open(f"{self.root}/{self._name()}.raw.tmp", "wb")
            if self.masks:
                self.raw_mask = self.fs.open(f"{self.root}/{self._name()}.mask.raw.tmp", "wb")
        self.raw.write(np.ascontiguousarray(tokens, dtype=self.dtype).tobytes())
        if self.masks:
            self.raw_mask.write(np.ascontiguousarray(mask, dtype=np.uint8).tobytes())
        first = len(self.lengths)
        self.lengths.extend(int(x) for x in lengths)
        self.n += len(tokens)
        return len(self.shards), first

    def add(self, tokens: np.ndarray, lengths: np.ndarray, mask: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
        """Many documents at once: `tokens` is their concatenation, `lengths` their sizes, `mask`
        their loss masks (concatenated likewise; required when the writer keeps masks). Returns where each
        document went: its shard's number and its index in that shard."""
        shard, index = np.zeros(len(lengths), dtype=np.int64), np.zeros(len(lengths), dtype=np.int64)
        if len(lengths) == 0:
            return shard, index
        if self.masks and (mask is None or len(mask) != len(tokens)):
            raise ValueError(f"{self.split}: a loss mask of {len(tokens)} entries is required")
        ends = np.cumsum(lengths)
        win = windows(lengths, self.pos, self.limit)
        runs = np.flatnonzero(np.r_[True, win[1:] != win[:-1]])  # documents starting in one window go together
        for a, b in zip(runs, np.r_[runs[1:], len(win)]):
            if self.window is not None and win[a] != self.window:
                self.flush()
            self.window = int(win[a])
            lo, hi = int(ends[a] - lengths[a]), int(ends[b - 1])
            n, first = self._append(tokens[lo:hi], lengths[a:b], mask[lo:hi] if self.masks else None)
            shard[a:b], index[a:b] = n, np.arange(first, first + b - a)
        self.pos += int(ends[-1])
        return shard, index

    def shard_path(self, n: int) -> str:
        """Shard number n's file, relative to data/ (as the manifest names it)."""
        return shard_path(self.split, n)

    def flush(self) -> None:
        if not self.lengths:
            return
        name = self._name()
        raw_path = f"{self.root}/{name}.raw.tmp"
        self.raw.close()
        self.raw = None
        sha = npy_from_raw(self.fs, f"{self.root}/{name}.npy", self.dtype, self.n, [raw_path])
        self.fs.rm(raw_path)
        entry = {"path": f"{name}.npy", "tokens": self.n, "docs": len(self.lengths), "sha256": sha}
        if self.masks:
            self.raw_mask.close()
            self.raw_mask = None
            raw_mask = f"{self.root}/{name}.mask.raw.tmp"
            entry["mask_sha256"] = npy_from_raw(self.fs, mask_path(f"{self.root}/{name}.npy"), np.dtype(np.uint8), self.n, [raw_mask])
            self.fs.rm(raw_mask)
        save_index(index_path(f"{self.root}/{name}.npy"), np.asarray(self.lengths))
        self.shards.append(entry)
        self.tokens += self.n
        self.docs += len(self.lengths)
        self.lengths, self.n = [], 0

    def close(self) -> dict:
        self.flush()
        return {"tokens": self.tokens, "docs": self.docs, "shards": self.shards}
