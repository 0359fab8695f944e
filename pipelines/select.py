"""The select stage: `keep_fraction` of a quality score, over the whole corpus, after dedup.

    data.quality.fasttext: {train: {...}, keep_fraction: 0.5}      # the best-scored half
    data.quality.perplexity: {checkpoint: ..., keep_fraction: 0.7}  # the lowest 70% in bits per byte

The candidates are the documents that reached the classifier and survived every other step and dedup (task
records are never scored, so never candidates). The `k = round(keep_fraction x candidates)` best scored are kept
and the others removed as filter:quality:<name> (a row each in _work/dups/, which tokenize and write read as
they read dedup's). The threshold is exact, not estimated: each document's key is its score's float32 bits in
an order-preserving form (high 32 bits) above a hash of its uid (low 32 bits, so that equal scores are ordered by
the hash, not by input position), and the k-th largest key is found by radix selection in 4 passes of 16 bits.
Each pass is one Ray task per group of staging files, returning a 65,536-bin histogram of the next 16 bits among
the keys that share the bits chosen so far; the driver holds histograms, never anything per document. Keys are
unique unless two documents have the same score and the same 32-bit hash, so exactly k are kept (the rare tie at
the threshold keeps every tied document, and stats.json says how many more than k were kept: `error`). The keys
depend on the scores and uids alone, so the same documents are kept whatever the number of nodes, workers or
blocks."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import ray

from raylm.core.hashing import mix64
from raylm.core.io import makedirs
from raylm.pipelines.dedup import REMOVED as DUPS
from raylm.pipelines.stage import DataRun, Stage, gather
from raylm.pipelines.staging import groups_of, survivors
from raylm.pipelines.stats import Stats

BITS, PASSES = 16, 4  # 64-bit keys, 16 bits a pass: histograms of 65,536 bins


def order_keys(scores: np.ndarray, uids: np.ndarray, higher_is_better: bool = True) -> np.ndarray:
    """uint64 keys, larger for better documents: the float32 score in an order-preserving form (sign flipped for
    positive numbers, all bits for negative ones), then the top 32 bits of a hash of the uid."""
    s = np.asarray(scores, dtype=np.float32)
    bits = (s if higher_is_better else -s).view(np.uint32)
    ordered = np.where(bits >> np.uint32(31) == 1, ~bits, bits | np.uint32(0x80000000)).astype(np.uint64)
    return (ordered << np.uint64(32)) | (mix64(np.asarray(uids, dtype=np.int64).view(np.uint64)) >> np.uint64(32))


def histogram(keys: np.ndarray, prefix: int, depth: int) -> np.ndarray:
    """Counts of the 16 bits after the first `depth` x 16 among the keys whose first `depth` x 16 bits are `prefix`."""
    shift = np.uint64(64 - BITS * (depth + 1))
    if depth:
        keys = keys[(keys >> np.uint64(64 - BITS * depth)) == np.uint64(prefix)]
    return np.bincount(((keys >> shift) & np.uint64((1 << BITS) - 1)).astype(np.int64), minlength=1 << BITS)


def step_down(hist: np.ndarray, k: int) -> tuple[int, int]:
    """In a histogram of bins (higher bins hold larger keys): the bin holding the k-th largest key (k >= 1), and
    the rank of that key within its bin."""
    from_top = np.cumsum(hist[::-1])
    j = int(np.searchsorted(from_top, k))  # the first bin, from the top, where the running count reaches k
    b = len(hist) - 1 - j
    return b, k - int(from_top[j] - hist[b])


def kth_largest(histograms, k: int) -> int:
    """The k-th largest key, given `histograms(prefix, depth)`: the summed histogram over every part of the corpus."""
    prefix = 0
    for depth in range(PASSES):
        b, k = step_down(histograms(prefix, depth), k)
        prefix = (prefix << BITS) | b
    return prefix


def key_to_score(key: int, higher_is_better: bool = True) -> float:
    """The score a key was made from (its high 32 bits)."""
    ordered = np.uint32(key >> 32)
    bits = ordered & np.uint32(0x7FFFFFFF) if ordered >> np.uint32(31) else ~ordered
    s = float(np.array([bits], dtype=np.uint32).view(np.float32)[0])
    return s if higher_is_better else -s


def _keys(group: list[dict], dups_dir: str | None, column: str, higher_is_better: bool) -> tuple[pa.Table, np.ndarray]:
    """The candidates of a group of staging files (kept, not duplicates, scored): uid and id, and their keys."""
    import pyarrow.dataset as pads

    dups = pads.dataset(dups_dir, format="parquet") if dups_dir is not None else None
    parts = []
    for s in group:
        t, mask = survivors(s["path"], s["first_uid"], s["last_uid"], dups, ["id", column])
        keep = mask & t[column].is_valid().to_numpy(zero_copy_only=False)
        parts.append(t.filter(pa.array(keep)).select(["uid", "id", column]))
    t = pa.concat_tables(parts)
    return t, order_keys(t[column].to_numpy(zero_copy_only=False), t["uid"].to_numpy(), higher_is_better)


@ray.remote
def _histogram(group: list[dict], dups_dir: str | None, column: str, higher_is_better: bool, prefix: int, depth: int) -> np.ndarray:
    return histogram(_keys(group, dups_dir, column, higher_is_better)[1], prefix, depth)


@ray.remote
def _remove(group: list[dict], dups_dir: str | None, column: str, higher_is_better: bool, threshold: int, reason: str, path: str) -> int:
    """Writes the group's candidates below the threshold key to `path` as dedup's rows (uid, id, reason); their count."""
    from raylm.core.io import atomic_open

    t, keys = _keys(group, dups_dir, column, higher_is_better)
    gone = t.filter(pa.array(keys < np.uint64(threshold)))
    rows = pa.table(
        {"uid": gone["uid"], "id": gone["id"], "reason": [reason] * gone.num_rows, "kept_id": pa.nulls(gone.num_rows, pa.string())}, schema=DUPS
    )
    with atomic_open(path) as f:
        pq.write_table(rows, f)
    return gone.num_rows


def scorers(data) -> list[tuple[str, str, bool, float]]:
    """(name, column, higher is better, keep_fraction) of each quality score the recipe keeps a share of, in order."""
    q = data.quality
    out = [("fasttext", "quality_fasttext", True, q.fasttext.keep_fraction), ("perplexity", "quality_perplexity", False, q.perplexity.keep_fraction)]
    return [x for x in out if x[3] is not None]


class Select(Stage):
    """keep_fraction of data.quality.fasttext and data.quality.perplexity, applied once dedup has run (see the
    module's docstring); the second over the documents the first kept."""

    name = "select"
    reads = ("_work/docs/*.parquet", "_work/dups/part-*.parquet")
    writes = ("_work/dups/quality-*.parquet",)

    def enabled(self, run: DataRun) -> bool:
        return bool(scorers(run.data))

    def run(self, run: DataRun, stats: Stats) -> None:
        for name, column, higher, fraction in scorers(run.data):
            self._one(run, stats, name, column, higher, fraction)

    @staticmethod
    def _one(run: DataRun, stats: Stats, name: str, column: str, higher: bool, fraction: float) -> None:
        import pyarrow.dataset as pads

        groups = groups_of(run.staging, run.workers)
        dups_dir = run.dups_dir if run.dups is not None else None
        args = (column, higher)

        def histograms(prefix: int, depth: int) -> np.ndarray:
            return np.sum(gather([_histogram.remote(g, dups_dir, *args, prefix, depth) for g in groups]), axis=0)

        top = histograms(0, 0)
        n = int(top.sum())
        k = min(n, max(1, round(fraction * n))) if n else 0
        threshold = kth_largest(lambda p, d: top if d == 0 else histograms(p, d), k) if k else 0
        makedirs(run.dups_dir)
        reason = f"filter:quality:{name}"
        paths = [f"{run.dups_dir}/quality-{name}-{g:05d}.parquet" for g in range(len(groups))]
        removed = sum(gather([_remove.remote(g, dups_dir, *args, threshold, reason, p) for g, p in zip(groups, paths)]))
        run.dups = pads.dataset(run.dups_dir, format="parquet")
        kept = n - removed
        score = key_to_score(threshold, higher) if k else None
        entry = {"keep_fraction": fraction, "candidates": n, "kept": kept, "threshold": score, "error": kept - k, "method": "exact (radix selection)"}
        run.quality.setdefault(name, {}).update(entry)
        stats.counts.update({f"{name}.candidates": n, f"{name}.kept": kept, f"{name}.removed": removed})
        shown = f"{score:.6g}" if score is not None else "none"
        run.say(f"select: {name} keeps {kept:,} of {n:,} scored documents ({kept / max(n, 1):.2%}; keep_fraction {fraction:g}), threshold {shown}")
