"""The shards on disk: what the data stage writes and training, evaluation and tuning read (with manifest.json,
core/manifest.py, which lists them).

    {split}/shard-NNNNNN.npy        1-D uint16/uint32 tokens (token_dtype), the documents one after another,
                                    each starting with the end-of-text token
    {split}/shard-NNNNNN.idx.npy    1-D uint64: each document's first token in the shard
    {split}/shard-NNNNNN.mask.npy   task sets: 1-D uint8, one entry per token, 1 where the token is a target the
                                    loss counts (completions), 0 elsewhere (prompts)

Documents never straddle shards. A split of a mixture (`data.sources`) has its sources' shards in
`{split}/{source}/`. Every file is written under a temporary name and renamed when whole (core/io.py).
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator

import fsspec
import numpy as np

from raylm.core.io import atomic_open, is_local
from raylm.core.manifest import read_manifest

_COPY_CHUNK = 16 << 20


def token_dtype(n_vocab: int) -> np.dtype:
    return np.dtype(np.uint16) if n_vocab <= 65536 else np.dtype(np.uint32)


def shard_path(split: str, n: int) -> str:
    """Shard number n of a split, relative to data/ (as the manifest and docs.parquet name it)."""
    return f"{split}/shard-{n:06d}.npy"


def index_path(shard: str) -> str:
    """A shard's document index, beside it."""
    return shard[: -len(".npy")] + ".idx.npy"


def mask_path(shard: str) -> str:
    """A shard's loss mask, beside it (task sets)."""
    return shard[: -len(".npy")] + ".mask.npy"


class _HashingWriter:
    def __init__(self, f):
        self.f, self.sha = f, hashlib.sha256()

    def write(self, b) -> int:
        self.sha.update(b)
        return self.f.write(b)


def npy_from_raw(fs, path: str, dtype: np.dtype, n: int, sources: list[str]) -> str:
    """An .npy of `n` values of `dtype` at `path`: the header, then the raw bytes of `sources` (files of `fs`)
    in order, copied in chunks (memory stays at one chunk, whatever the shard's size); returns its sha256."""
    with atomic_open(path) as f:
        out = _HashingWriter(f)
        np.lib.format.write_array_header_1_0(out, {"descr": np.lib.format.dtype_to_descr(dtype), "fortran_order": False, "shape": (n,)})
        for raw in sources:
            with fs.open(raw, "rb") as src:
                for chunk in iter(lambda: src.read(_COPY_CHUNK), b""):
                    out.write(chunk)
    return out.sha.hexdigest()


def save_index(path: str, lengths: np.ndarray) -> str:
    """A shard's document index (`.idx.npy`) at `path`: each document's first token, from the documents'
    lengths; returns its sha256."""
    with atomic_open(path) as f:
        h = _HashingWriter(f)
        np.save(h, np.concatenate([[0], np.cumsum(lengths)[:-1]]).astype(np.uint64), allow_pickle=False)
    return h.sha.hexdigest()


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
    for shard in man.splits[split].shards:
        path = f"{root}/{shard.path}"
        tokens = _load_npy(fs, path, local)
        offsets = _load_npy(fs, index_path(path), local)
        mask = _load_npy(fs, mask_path(path), local) if with_masks and man.loss_mask else None
        ends = np.r_[offsets[1:], len(tokens)].astype(np.int64)
        for s, e in zip(offsets.astype(np.int64), ends):
            if not with_masks:
                yield tokens[s:e]
            else:
                yield tokens[s:e], (mask[s:e] if mask is not None else np.ones(e - s, dtype=np.uint8))
