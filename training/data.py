"""Token windows from `raylm data` shards, for data-parallel training.

The shards are memory-mapped (`np.load(mmap_mode="r")`); remote shards (s3://, gs://) are copied
once per node into a local cache keyed by their sha256. A window is `seq_len + 1` tokens at a stride
of `seq_len` inside one shard. Which windows a rank reads at a step is a pure function of
(seed, epoch, step, rank, world size): window ids go through a keyed bijection of [0, N) (a Feistel
network with cycle walking: O(1) memory, however large the corpus), and step s of rank r takes
positions [(s * world + r) * B, ... + B) of that order, so ranks never share a window in an epoch.
The loader's whole state is (epoch, step): it goes into checkpoints and resumes exactly.
Task sets carry a loss mask per shard (`shard-*.mask.npy`); a batch then has the mask of its targets.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import fsspec
import numpy as np
import torch

from raylm.core.hashing import mix64
from raylm.core.io import atomic_open, is_local
from raylm.core.manifest import read_manifest
from raylm.core.shards import mask_path

_ROUNDS = 4


def permute(i: np.ndarray, n: int, key: int) -> np.ndarray:
    """A keyed bijection of [0, n): balanced Feistel network on the next even number of bits,
    cycle-walking values that land outside the range (at most ~4x work in expectation)."""
    i = np.asarray(i, dtype=np.uint64)
    bits = max(2, int(n - 1).bit_length())
    bits += bits % 2
    half = bits // 2
    mask = np.uint64((1 << half) - 1)
    base = np.uint64((key * 0x9E3779B97F4A7C15) % 2**64)
    keys = [np.uint64(x) for x in mix64(np.arange(_ROUNDS, dtype=np.uint64) + base)]

    def once(x: np.ndarray) -> np.ndarray:
        left, right = x >> np.uint64(half), x & mask
        for k in keys:
            left, right = right, left ^ (mix64(right ^ k) & mask)
        return (left << np.uint64(half)) | right

    out = once(i)
    bad = out >= np.uint64(n)
    while bad.any():
        out[bad] = once(out[bad])
        bad = out >= np.uint64(n)
    return out.astype(np.int64)


def _open_array(url: str, sha256: str, local: bool, cache_dir: str) -> np.ndarray:
    return np.load(url if local else _local_copy(url, sha256, cache_dir), mmap_mode="r")


def _local_copy(url: str, sha256: str, cache_dir: str) -> str:
    """Remote shard -> local file, once per node (atomic rename, so concurrent ranks are safe)."""
    dst = Path(cache_dir) / f"{sha256}.npy"
    if not dst.exists():
        dst.parent.mkdir(parents=True, exist_ok=True)
        with fsspec.open(url, "rb") as src, atomic_open(str(dst)) as f:
            while chunk := src.read(16 << 20):
                f.write(chunk)
    return str(dst)


@dataclass
class LoaderState:
    epoch: int = 0
    step: int = 0  # steps taken within the epoch


class ShardWindows:
    """All windows of one split: `window(ids)` gathers them as an int64 array (len(ids), seq_len+1)."""

    def __init__(self, data_root: str, split: str, seq_len: int, cache_dir: str | None = None, source: str | None = None):
        """`source`: only that source's shards (a mixture's manifest, with `splits.<split>.sources`)."""
        man = read_manifest(data_root)
        fs, _ = fsspec.core.url_to_fs(data_root)
        local = is_local(fs)
        cache_dir = cache_dir or os.path.join(os.path.expanduser("~"), ".cache", "raylm", "shards")
        self.seq_len = seq_len
        self.arrays: list[np.ndarray] = []
        self.masks: list[np.ndarray] | None = [] if man.loss_mask else None
        counts = []
        for sh in man.split(split, source).shards:
            url = f"{data_root}/{sh.path}"
            arr = _open_array(url, sh.sha256, local, cache_dir)
            self.arrays.append(arr)
            if self.masks is not None:
                self.masks.append(_open_array(mask_path(url), sh.mask_sha256, local, cache_dir))
            counts.append(max(0, (len(arr) - 1) // seq_len))
        self.starts = np.concatenate([[0], np.cumsum(counts)]).astype(np.int64)
        self.n = int(self.starts[-1])
        if self.n == 0:
            raise ValueError(f"{data_root}: split {split!r}{f' of source {source!r}' if source else ''} has no window of {seq_len + 1} tokens")

    def window(self, ids: np.ndarray, arrays: list[np.ndarray] | None = None) -> np.ndarray:
        """Tokens (or, given `arrays=self.masks`, loss masks) of windows `ids`: (len(ids), seq_len + 1)."""
        arrays = self.arrays if arrays is None else arrays
        shard = np.searchsorted(self.starts, ids, side="right") - 1
        out = np.empty((len(ids), self.seq_len + 1), dtype=np.int64)
        for k, (s, i) in enumerate(zip(shard, ids)):
            off = int(i - self.starts[s]) * self.seq_len
            out[k] = arrays[s][off : off + self.seq_len + 1]
        return out

    def batch(self, ids: np.ndarray) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
        """Inputs, targets and (task sets) the targets' loss mask of windows `ids`."""
        arr = torch.from_numpy(self.window(ids))
        mask = torch.from_numpy(self.window(ids, self.masks)[:, 1:]) if self.masks is not None else None
        return arr[:, :-1], arr[:, 1:], mask


class TrainLoader:
    """Micro-batches of one rank: disjoint from other ranks, deterministic, resumable."""

    def __init__(self, windows: ShardWindows, micro_batch: int, rank: int, world: int, seed: int):
        if windows.n < micro_batch * world:
            raise ValueError(f"{windows.n} windows cannot fill one step of {world} x {micro_batch} sequences")
        self.w, self.B, self.rank, self.world, self.seed = windows, micro_batch, rank, world, seed
        self.steps_per_epoch = windows.n // (micro_batch * world)  # the remainder is dropped each epoch
        self.state = LoaderState()

    def ids_at(self, epoch: int, step: int) -> np.ndarray:
        first = (step * self.world + self.rank) * self.B
        return permute(np.arange(first, first + self.B), self.w.n, key=self.seed * 1_000_003 + epoch)

    def next(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
        """(inputs, targets, loss mask or None) of this rank's next micro-batch."""
        if self.state.step >= self.steps_per_epoch:
            self.state = LoaderState(self.state.epoch + 1, 0)
        out = self.w.batch(self.ids_at(self.state.epoch, self.state.step))
        self.state.step += 1
        return out

    def state_dict(self) -> dict:
        return {"epoch": self.state.epoch, "step": self.state.step, "world": self.world}

    def load_state_dict(self, d: dict) -> None:
        """A position saved by any number of ranks: step s of `world` ranks has taken positions [0, s * world * B)
        of the epoch's order, the same windows as step s * world / self.world here (a whole number: each optimizer
        step takes global_batch_tokens on any world)."""
        saved = int(d.get("world", self.world)) * int(d["step"])
        if saved % self.world:
            raise ValueError(f"a loader position of {saved} micro-batches over all ranks does not split over {self.world} ranks")
        self.state = LoaderState(int(d["epoch"]), saved // self.world)

    def layout_note(self, d: dict, saved_world: int) -> str:
        """What of the data position carries over from `saved_world` ranks to this loader's, in one line."""
        n, b = self.w.n, self.B
        epoch, pos = int(d["epoch"]), int(d["step"]) * saved_world * b
        ends = {w: n - n % (b * w) for w in (saved_world, self.world)}  # the windows an epoch takes on w ranks
        same = ends[saved_world] == ends[self.world]
        after = "every later epoch too" if same else f"then each epoch takes {ends[self.world]:,} of its windows, not {ends[saved_world]:,}"
        fresh = f"; ranks {saved_world}-{self.world - 1} start from seeded RNG states" if self.world > saved_world else ""
        return (
            f"a checkpoint of {saved_world} worker(s) resumes on {self.world}: model, optimizer, schedule and step exactly; the data "
            f"position exactly (window {pos:,} of epoch {epoch}'s order) to the epoch's end, {after}{fresh}"
        )


def val_windows(windows: ShardWindows, count: int) -> np.ndarray:
    """A fixed set of validation windows, evenly spread over the split (the same every evaluation)."""
    count = min(count, windows.n)
    return np.unique(np.linspace(0, windows.n - 1, count).round().astype(np.int64))


def unigram_entropy(data_root: str, split: str = "train") -> float:
    """Entropy (nats/token) of the split's token frequencies: the loss of the best model that ignores
    context, the bar a trained model's val loss must clear."""
    n_vocab = read_manifest(data_root).tokenizer.n_vocab
    counts = np.zeros(n_vocab, dtype=np.int64)
    for a in ShardWindows(data_root, split, seq_len=1).arrays:
        counts += np.bincount(np.asarray(a), minlength=n_vocab)[:n_vocab]
    p = counts[counts > 0] / counts.sum()
    return float(-(p * np.log(p)).sum())
