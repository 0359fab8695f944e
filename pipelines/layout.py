"""Where every kept document and every removed row goes, decided from counts alone, so that the write
stage's tasks can each write their own group of staging files and the output depends only on the
documents, in order, and the recipe: never on how the staging files were grouped, on how many nodes or
CPUs ran the tasks, or on which finished first.

Shards: the kept documents of a split, in input order, laid end to end; a document belongs to the window
`start // shard_tokens` of the token where it starts, so a shard holds the documents that start inside
its window (it ends within one document of `shard_tokens`, and a document longer than a window has a
shard of its own). The windows that hold a document, in order, are shards 0, 1, 2, ...

Streams: the shards are laid out per stream, each on its own: one stream per split, or, for a mixture
(data.sources), one per split and source (stream = split + 2 x source rank; shards under <split>/<source>/).

Tables (removed.parquet/, docs.parquet/): rows in input order; part j holds rows j*R .. (j+1)*R - 1.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from raylm.pipelines.staging import SPLIT_TRAIN, SPLIT_VAL

SPLITS = (SPLIT_TRAIN, SPLIT_VAL)
SPLIT_NAMES = {SPLIT_TRAIN: "train", SPLIT_VAL: "val"}


def streams(sources: list[str]) -> list[str]:
    """The directory (under data/) of each stream's shards: train, val; or train/<source>, val/<source>, ...
    for each source in order."""
    if not sources:
        return [SPLIT_NAMES[sp] for sp in SPLITS]
    return [f"{SPLIT_NAMES[sp]}/{name}" for name in sources for sp in SPLITS]


def stream_of(split: np.ndarray, source: int) -> np.ndarray:
    """The stream of documents of one source by their split."""
    return split.astype(np.int64) + len(SPLITS) * source


@dataclass(frozen=True)
class Counts:
    """What one group of staging files holds after dedup."""

    docs: tuple[int, ...]  # kept documents, per stream
    tokens: tuple[int, ...]  # their tokens, per stream
    removed: int  # rows of removed.parquet (documents not kept; skipped records are only counted)


@dataclass(frozen=True)
class Start:
    """Where a group's rows begin in the whole run's order: the sums of every group before it."""

    ordinal: tuple[int, ...]  # kept documents of each stream before the group
    token: tuple[int, ...]  # ... and their tokens
    kept: int  # kept documents of every stream before it: its first docs.parquet row
    removed: int  # its first removed.parquet row


def starts(counts: list[Counts]) -> list[Start]:
    """Each group's Start, from the counts of the groups in order (exclusive prefix sums)."""
    n = len(counts[0].docs) if counts else 0
    out, o, t, k, r = [], [0] * n, [0] * n, 0, 0
    for c in counts:
        out.append(Start(tuple(o), tuple(t), k, r))
        o = [o[s] + c.docs[s] for s in range(n)]
        t = [t[s] + c.tokens[s] for s in range(n)]
        k, r = k + sum(c.docs), r + c.removed
    return out


def windows(lengths: np.ndarray, token_start: int, shard_tokens: int) -> np.ndarray:
    """The window of each document (lengths in order; the first one starts at global token `token_start`)."""
    begin = token_start + np.concatenate([[0], np.cumsum(lengths, dtype=np.int64)[:-1]]) if len(lengths) else np.zeros(0, np.int64)
    return (begin // shard_tokens).astype(np.int64)


def firsts(win: np.ndarray, ordinal_start: int) -> tuple[np.ndarray, np.ndarray]:
    """The windows present among a group's documents and the ordinal (in the split) of the first one in each."""
    w, idx = np.unique(win, return_index=True)
    return w, ordinal_start + idx.astype(np.int64)


@dataclass(frozen=True)
class ShardMap:
    """The shards of one stream: shard n is window `windows[n]`, and its first document is `firsts[n]`."""

    windows: np.ndarray
    firsts: np.ndarray

    @classmethod
    def merge(cls, found: list[tuple[np.ndarray, np.ndarray]]) -> ShardMap:
        """From every group's (windows, firsts): a window that several groups share starts in the earliest."""
        if not found:
            return cls(np.zeros(0, np.int64), np.zeros(0, np.int64))
        w, f = np.concatenate([x[0] for x in found]), np.concatenate([x[1] for x in found])
        order = np.lexsort((f, w))
        w, f = w[order], f[order]
        first = np.r_[True, w[1:] != w[:-1]] if len(w) else np.zeros(0, bool)
        return cls(w[first], f[first])

    def place(self, win: np.ndarray, ordinals: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Each document's shard and its index in that shard, from its window and ordinal."""
        n = np.searchsorted(self.windows, win)
        return n, ordinals - self.firsts[n]

    def __len__(self) -> int:
        return len(self.windows)


def parts(row_start: int, n: int, rows_per_part: int) -> list[tuple[int, slice]]:
    """The table parts that rows row_start .. row_start + n - 1 fall in: (part, slice of those n rows)."""
    out, i = [], 0
    while i < n:
        j = (row_start + i) // rows_per_part
        stop = min(n, (j + 1) * rows_per_part - row_start)
        out.append((j, slice(i, stop)))
        i = stop
    return out
