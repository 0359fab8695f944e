"""Sampling from several sources by weight (issue #18's `train.mixture`): which source each window of a step
comes from, and which of that source's windows it is, as a pure function of (seed, step, rank, world size)
and the position reached in every source; resumable from that position alone.

A step has `slots = world x accum x micro_batch` windows, slot j of the whole run being step * slots + i. Slot j
goes to the source whose interval of [0, 1) (the weights at that step, cumulated in listed order) holds
frac(j x (sqrt(5) - 1) / 2): a low-discrepancy sequence, so over any run of n slots each source gets n x w +- O(log n)
windows (well within 1% of its weight over a few hundred steps), with no state. The n-th window drawn from a
source is its own window permute(n mod N) in epoch n // N (a keyed bijection, as the single-source loader
uses): a source that runs out starts its next epoch in its own order, the others go on. Every rank computes the
whole step's assignment (cheap) and takes its own slots: micro-batch m of rank r is slots [(m x world + r) x B, +B).
The position in every source (windows drawn so far) is the loader's state, which checkpoints hold."""

from __future__ import annotations

import math

import numpy as np

from training.data import permute

_PHI = (math.sqrt(5) - 1) / 2


def source_of_slots(first: int, count: int, weights: np.ndarray) -> np.ndarray:
    """Source index of slots first..first+count-1 under `weights` (non-negative, summing to > 0)."""
    w = np.asarray(weights, dtype=np.float64)
    edges = np.cumsum(w / w.sum())
    edges[-1] = 1.0  # rounding never leaves a gap at the top
    j = np.arange(first, first + count, dtype=np.float64)
    u = np.mod(j * _PHI, 1.0)
    return np.searchsorted(edges, u, side="right").clip(max=len(w) - 1)


def weights_at(schedule: list[tuple[int | None, dict[str, float]]], names: list[str], step: int) -> np.ndarray:
    """The weights in force at `step` (0-based): the first entry whose `until_step` is above it (None: for good)."""
    for until, weights in schedule:
        if until is None or step < until:
            return np.array([float(weights.get(n, 0.0)) for n in names])
    return np.array([float(schedule[-1][1].get(n, 0.0)) for n in names])


class MixturePlan:
    """Which window of which source each slot of a step reads (see the module docstring)."""

    def __init__(self, sizes: list[int], names: list[str], schedule: list, seed: int, slots: int):
        self.sizes, self.names, self.schedule, self.seed, self.slots = sizes, names, schedule, seed, slots

    def step(self, step: int, drawn: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """For global step `step` with `drawn[k]` windows already taken from source k: the source and window id of
        each slot of the step, and the new `drawn`."""
        src = source_of_slots(step * self.slots, self.slots, weights_at(self.schedule, self.names, step))
        ids = np.empty(self.slots, dtype=np.int64)
        drawn = drawn.copy()
        for k in np.unique(src):
            at = np.flatnonzero(src == k)
            n = drawn[k] + np.arange(len(at))  # the n-th window drawn from source k
            epoch, pos = n // self.sizes[k], n % self.sizes[k]
            for e in np.unique(epoch):
                sel = epoch == e
                ids[at[sel]] = permute(pos[sel], self.sizes[k], key=(self.seed * 1_000_003 + int(e)) * 1_009 + int(k))
            drawn[k] += len(at)
        return src, ids, drawn
