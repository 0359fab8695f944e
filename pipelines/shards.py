"""Token shards (`.npy`, 1-D uint16/uint32) with a document index, and the manifest.

Task sets (prompt/completion) add a loss mask per shard, `shard-NNNNNN.mask.npy`: 1-D uint8, one
entry per token, 1 where the token is a target the loss counts (completions), 0 elsewhere (prompts).

Documents never straddle shards: a shard holds the documents that start in its window of `shard_tokens`
tokens (pipelines/layout.py, the one definition; the write stage's tasks follow it from counts, and
`ShardWriter`, the sequential writer for shards made from Python, one document after another). The
manifest is written last, atomically (tmp + rename).
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterator

import fsspec
import numpy as np
import pyarrow as pa

from raylm.pipelines.io import exists, is_local
from raylm.pipelines.layout import windows
from raylm.pipelines.paths import MANIFEST


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


def shard_path(split: str, n: int) -> str:
    """Shard number n of a split, relative to data/ (as the manifest and docs.parquet name it)."""
    return f"{split}/shard-{n:06d}.npy"


class _HashingWriter:
    def __init__(self, f):
        self.f, self.sha = f, hashlib.sha256()

    def write(self, b) -> int:
        self.sha.update(b)
        return self.f.write(b)


_COPY_CHUNK = 16 << 20


def npy_from_raw(fs, path: str, dtype: np.dtype, n: int, sources: list[str]) -> str:
    """An .npy of `n` values of `dtype`: the header, then the raw bytes of `sources` in order, copied
    in chunks (memory stays at one chunk, whatever the shard's size); returns its sha256."""
    tmp = path + ".tmp"
    with fs.open(tmp, "wb") as f:
        out = _HashingWriter(f)
        np.lib.format.write_array_header_1_0(out, {"descr": np.lib.format.dtype_to_descr(dtype), "fortran_order": False, "shape": (n,)})
        for raw in sources:
            with fs.open(raw, "rb") as src:
                for chunk in iter(lambda: src.read(_COPY_CHUNK), b""):
                    out.write(chunk)
    fs.mv(tmp, path)
    return out.sha.hexdigest()


def save_index(fs, path: str, lengths: np.ndarray) -> str:
    """A shard's document index (`.idx.npy`): each document's first token, from the documents' lengths."""
    return _save_npy(fs, path, np.concatenate([[0], np.cumsum(lengths)[:-1]]).astype(np.uint64))


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
            entry["mask_sha256"] = npy_from_raw(self.fs, f"{self.root}/{name}.mask.npy", np.dtype(np.uint8), self.n, [raw_mask])
            self.fs.rm(raw_mask)
        save_index(self.fs, f"{self.root}/{name}.idx.npy", np.asarray(self.lengths))
        self.shards.append(entry)
        self.tokens += self.n
        self.docs += len(self.lengths)
        self.lengths, self.n = [], 0

    def close(self) -> dict:
        self.flush()
        return {"tokens": self.tokens, "docs": self.docs, "shards": self.shards}


def write_manifest(root: str, manifest: dict) -> None:
    fs, _ = fsspec.core.url_to_fs(root)
    tmp = f"{root}/{MANIFEST}.tmp"
    with fs.open(tmp, "w") as f:
        json.dump(manifest, f, indent=1, sort_keys=False)
        f.write("\n")
    fs.mv(tmp, f"{root}/{MANIFEST}")


def read_manifest(root: str) -> dict:
    fs, _ = fsspec.core.url_to_fs(root)
    with fs.open(f"{root}/{MANIFEST}") as f:
        return json.load(f)


def has_manifest(root: str) -> bool:
    """Whether the data stage finished in `root` (the manifest is written last)."""
    return exists(f"{root}/{MANIFEST}")


def require_shards(root: str, hint: str = "") -> None:
    """The one check train, tune and eval make before reading shards: a finished data stage in `root`."""
    if not has_manifest(root):
        raise FileNotFoundError(f"{root} has no {MANIFEST}: run `raylm data` first{hint}")


def _load_npy(fs, path: str, local: bool) -> np.ndarray:
    if local:
        return np.load(path, mmap_mode="r")
    with fs.open(path) as f:
        return np.load(f)


def iter_documents(root: str, split: str, with_masks: bool = False) -> Iterator:
    """Every document of a split, in order, as its token array (EOT first); with `with_masks`,
    (tokens, loss mask) pairs (the mask all ones where the shards have none). mmap'd when local."""
    man = read_manifest(root)
    fs, _ = fsspec.core.url_to_fs(root)
    local = is_local(fs)
    for shard in man["splits"][split]["shards"]:
        path = f"{root}/{shard['path']}"
        tokens = _load_npy(fs, path, local)
        offsets = _load_npy(fs, path[:-4] + ".idx.npy", local)
        mask = _load_npy(fs, path[:-4] + ".mask.npy", local) if with_masks and man.get("loss_mask") else None
        ends = np.r_[offsets[1:], len(tokens)].astype(np.int64)
        for s, e in zip(offsets.astype(np.int64), ends):
            if not with_masks:
                yield tokens[s:e]
            else:
                yield tokens[s:e], (mask[s:e] if mask is not None else np.ones(e - s, dtype=np.uint8))


__all__ = [
    "ShardWriter",
    "binary_column",
    "token_arrays",
    "has_manifest",
    "iter_documents",
    "read_manifest",
    "shard_path",
    "require_shards",
    "token_dtype",
    "write_manifest",
]
