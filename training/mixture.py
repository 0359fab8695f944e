"""Sampling from several sources by weight (`train.mixture`): which source each window of a step
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
import torch

from raylm.core.manifest import Manifest
from raylm.training.data import ShardWindows, permute

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


class MixtureLoader:
    """A rank's micro-batches drawn from several sources by weight (TrainLoader's interface: next(),
    state_dict(), load_state_dict()). `accum` micro-batches make a step; the plan is made at a step's first."""

    def __init__(self, sources: dict[str, ShardWindows], schedule: list, micro_batch: int, rank: int, world: int, accum: int, seed: int):
        self.names, self.windows = list(sources), list(sources.values())
        self.B, self.rank, self.world, self.accum = micro_batch, rank, world, accum
        self.plan = MixturePlan([w.n for w in self.windows], self.names, schedule, seed, world * accum * micro_batch)
        self.step, self.micro, self.drawn = 0, 0, np.zeros(len(self.names), dtype=np.int64)
        self.src = self.ids = None
        self.counts = np.zeros(len(self.names), dtype=np.int64)  # windows of the last step, per source (all ranks)

    def next(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
        if self.micro == 0:
            self.src, self.ids, self.after = self.plan.step(self.step, self.drawn)
            self.counts = np.bincount(self.src, minlength=len(self.names))
        lo = (self.micro * self.world + self.rank) * self.B
        src, ids = self.src[lo : lo + self.B], self.ids[lo : lo + self.B]
        parts = [self.windows[k].batch(ids[src == k]) for k in range(len(self.names)) if (src == k).any()]
        order = np.argsort(np.concatenate([np.flatnonzero(src == k) for k in range(len(self.names)) if (src == k).any()]), kind="stable")
        x, y = (torch.cat([p[i] for p in parts])[order] for i in (0, 1))
        m = torch.cat([p[2] for p in parts])[order] if parts[0][2] is not None else None
        self.micro += 1
        if self.micro == self.accum:  # the step's windows are taken: the position moves on
            self.micro, self.step, self.drawn = 0, self.step + 1, self.after
        return x, y, m

    def state_dict(self) -> dict:
        """At a step's end (where checkpoints are taken): the step and the windows drawn from every source."""
        return {"step": self.step, "drawn": dict(zip(self.names, self.drawn.tolist()))}

    def layout_note(self, d: dict, saved_world: int) -> str:
        """What carries over from `saved_world` ranks: everything (a step's plan is drawn for all ranks at once)."""
        return (
            f"a checkpoint of {saved_world} worker(s) resumes on {self.world}: model, optimizer, schedule, step and the "
            f"mixture's draw exactly (each step's windows are planned for all ranks at once)"
        )

    def load_state_dict(self, d: dict) -> None:
        self.step, self.micro = int(d["step"]), 0
        self.drawn = np.array([int(d["drawn"].get(n, 0)) for n in self.names], dtype=np.int64)


def weighted_total(per: dict[str, dict], weights: dict[str, float]) -> dict | None:
    """The sources' val metrics (name -> {loss, bpb}) averaged with the mixture's weights at that step, over the
    sources with a weight and a val split: the loss of the distribution training draws from. None if none has."""
    w = {n: float(weights.get(n, 0.0)) for n in per if weights.get(n, 0.0) > 0}
    total = sum(w.values())
    if total <= 0:
        return None
    out = {"loss": sum(per[n]["loss"] * v for n, v in w.items()) / total}
    if all(per[n].get("bpb") is not None for n in w):
        out["bpb"] = sum(per[n]["bpb"] * v for n, v in w.items()) / total
    return {**out, "weights": {n: v / total for n, v in w.items()}}


def recipe_weights(recipe: dict) -> dict[str, float]:
    """The recipe's data.sources weights (name -> weight; empty without sources): what training draws by when
    train.mixture is unset."""
    return {n: float(src.get("weight", 1.0)) for n, src in ((recipe.get("data") or {}).get("sources") or {}).items()}


def schedule_of(train, manifest: Manifest, weights: dict[str, float] | None = None) -> list[tuple[int | None, dict[str, float]]]:
    """train.mixture as (until_step, weights) pairs, else the recipe's data.sources weights (`weights`,
    when it names every source of the shards: a weight changed since the data stage ran), else the weights the
    data stage recorded; a ValueError naming a source the shards do not have."""
    names, recorded = list(manifest.splits["train"].sources or {}), manifest.sources or {}
    if train.mixture is None:
        if weights and set(names) <= set(weights):
            return [(None, {n: float(weights[n]) for n in names})]
        return [(None, {n: recorded[n].weight if n in recorded else 1.0 for n in names})]
    unknown = sorted({k for st in train.mixture for k in st.weights} - set(names))
    if unknown:
        raise ValueError(f"train.mixture names {unknown}, which the shards do not have (their sources: {names})")
    return [(st.until_step, dict(st.weights)) for st in train.mixture]
