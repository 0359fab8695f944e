"""Exact and near-duplicate removal: MinHash LSH, confirmation, connected components, on Ray.

The math (pure, unit-tested): word n-gram shingle hashes, MinHash signatures (rensa), the band/row
choice that minimizes false-positive + false-negative area, band keys.

The distributed part is a chain of hash-partitioned map/reduce steps in Ray tasks whose tables
travel as object refs (the object store spills to disk), so no process holds every signature
and the connected-components rounds work on partitions of the edge list, never the whole graph:

  S1 per staging file: band rows (key, uid, hash) by key; node rows (uid, id, hash, sig) by uid
  S2 per key part:     buckets -> candidate pairs (exact copies collapse to a star)
  S3/S4:               one row per distinct pair (several bands find the same pair), attach the
                       signature of each side, keep pairs with est. Jaccard >= threshold
  S5 rounds:           large-star / small-star (Kiveris et al. 2014) until the edge set is stable:
                       every component becomes a star around its smallest uid
  S6:                  join members with their ids, keep the smallest id, label the rest exact|near
"""

from __future__ import annotations

import functools
import itertools
import math
import operator
from collections.abc import Sequence
from dataclasses import dataclass

import fsspec
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.dataset as pads
import pyarrow.parquet as pq
import ray
import rensa
import xxhash

from raylm.core.hashing import GOLDEN, mix64
from raylm.core.io import makedirs
from raylm.pipelines.config import DedupConfig, MinHashConfig
from raylm.pipelines.stage import Chunk, DataRun, Stage, Step
from raylm.pipelines.staging import split_of
from raylm.pipelines.stats import Stats

_M1 = GOLDEN


# ---------------------------------------------------------------- math
def text_hash(text: str) -> int:
    return xxhash.xxh3_64_intdigest(text.encode("utf-8"))


def _integrate(f, a: float, b: float, n: int = 200) -> float:
    x = np.linspace(a, b, n + 1)
    y = f(x)
    return float(np.sum((y[1:] + y[:-1]) * (x[1:] - x[:-1]) / 2))


def optimal_bands(threshold: float, num_perm: int, fp_weight: float = 0.5, fn_weight: float = 0.5) -> tuple[int, int]:
    """(bands, rows) with bands*rows <= num_perm minimizing the weighted false-positive area
    (P[candidate] below the threshold) plus false-negative area (1 - P[candidate] above it)."""
    best, best_err = (1, num_perm), math.inf
    for b in range(1, num_perm + 1):
        for r in range(1, num_perm // b + 1):
            p = lambda s, b=b, r=r: 1 - (1 - s**r) ** b  # noqa: E731
            fp = _integrate(p, 0.0, threshold)
            fn = _integrate(lambda s, p=p: 1 - p(s), threshold, 1.0)
            err = fp_weight * fp + fn_weight * fn
            if err < best_err:
                best, best_err = (b, r), err
    return best


def bands_rows(cfg: MinHashConfig) -> tuple[int, int]:
    if cfg.bands is not None:
        return cfg.bands, cfg.rows
    return optimal_bands(cfg.threshold, cfg.num_perm, 1 - cfg.false_negative_weight, cfg.false_negative_weight)


def candidate_probability(s: float, bands: int, rows: int) -> float:
    return 1 - (1 - s**rows) ** bands


def words_of(text: str) -> list[str]:
    return text.lower().split()


def shingle_hashes(word_lists: Sequence[list[str]], ngram: int) -> tuple[np.ndarray, np.ndarray]:
    """Flat uint64 hashes of every word n-gram of every document, and row offsets (len N+1).
    A document shorter than n words is one shingle of all its words; an empty one hashes to [0]."""
    word_hashes = rensa.RMinHash.hash_token_sets(word_lists)  # Rust: one u64 per word
    lens = np.fromiter(map(len, word_hashes), dtype=np.int64, count=len(word_hashes))
    flat = np.fromiter(itertools.chain.from_iterable(word_hashes), dtype=np.uint64, count=int(lens.sum()))
    starts = np.concatenate([[0], np.cumsum(lens)])[:-1]
    n_sh = np.maximum(lens - ngram + 1, 1)
    out_offsets = np.concatenate([[0], np.cumsum(n_sh)]).astype(np.uint64)
    out = np.zeros(int(n_sh.sum()), dtype=np.uint64)
    with np.errstate(over="ignore"):
        if len(flat) >= ngram:
            # win[j] combines words j..j+n-1 of the flat array; keep the windows inside one document
            win = flat[: len(flat) - ngram + 1].copy()
            for k in range(1, ngram):
                win = win * _M1 + flat[k : len(flat) - ngram + 1 + k]
            full = lens >= ngram
            counts = n_sh[full]
            dst = np.arange(int(counts.sum())) + np.repeat(out_offsets[:-1][full].astype(np.int64) - np.r_[0, np.cumsum(counts)[:-1]], counts)
            src = np.arange(int(counts.sum())) + np.repeat(starts[full] - np.r_[0, np.cumsum(counts)[:-1]], counts)
            out[dst] = win[src]
        for i in np.flatnonzero(lens < ngram):  # short documents: one shingle of all their words
            h = np.uint64(0)
            for x in flat[starts[i] : starts[i] + lens[i]]:
                h = h * _M1 + x
            out[out_offsets[i]] = h
    return mix64(out), out_offsets


def signatures(texts: Sequence[str], cfg: MinHashConfig) -> np.ndarray:
    """MinHash signatures, shape (N, num_perm), uint32."""
    return signatures_from_words([words_of(t) for t in texts], cfg)


def signatures_from_words(word_lists: Sequence[list[str]], cfg: MinHashConfig) -> np.ndarray:
    if not word_lists:
        return np.zeros((0, cfg.num_perm), dtype=np.uint32)
    flat, offsets = shingle_hashes(word_lists, cfg.ngram)
    m = rensa.RMinHash.digest_matrix_from_flat_token_hashes(flat, offsets, cfg.num_perm, cfg.seed)
    return np.asarray(m.to_rows(), dtype=np.uint32)


class ExactHash(Step):
    """The cleaned text's hash (exact dedup) and the document's split (from a hash of its id)."""

    name = "hash"

    def __call__(self, c: Chunk) -> None:
        b, out = c.block, self.cfg.output
        for r, t in zip(c.rows, c.texts):
            b.hashes[r] = text_hash(t)
            b.split[r] = split_of(b.ids[r], out.seed, out.val_fraction)


class MinHashSign(Step):
    """MinHash signatures of the word n-grams (data.dedup.minhash), for the LSH of the dedup stage."""

    name = "minhash"

    @classmethod
    def enabled(cls, cfg) -> bool:
        return cfg.dedup.minhash.enabled

    def __call__(self, c: Chunk) -> None:
        if c.rows:
            words = c.words if c.words is not None else [words_of(t) for t in c.texts]
            c.block.sig[c.rows] = signatures_from_words(words, self.cfg.dedup.minhash)


def band_keys(sigs: np.ndarray, bands: int, rows: int) -> np.ndarray:
    """(N, bands) uint64 bucket keys; the band index is mixed in so bands never collide."""
    n = sigs.shape[0]
    keys = np.empty((n, bands), dtype=np.uint64)
    s64 = sigs.astype(np.uint64)
    with np.errstate(over="ignore"):
        for b in range(bands):
            k = np.full(n, np.uint64(b + 1) * _M1, dtype=np.uint64)
            for j in range(b * rows, (b + 1) * rows):
                k = mix64(k ^ s64[:, j])
            keys[:, b] = k
    return keys


def jaccard_estimate(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Row-wise fraction of equal MinHash slots."""
    return (a == b).mean(axis=1)


# ---------------------------------------------------------------- partitioned tables
def part_of(values: np.ndarray, parts: int) -> np.ndarray:
    return (mix64(values.view(np.uint64) if values.dtype == np.int64 else values) % np.uint64(parts)).astype(np.int64)


def split_by(table: pa.Table, column: str, parts: int) -> list[pa.Table]:
    if parts == 1:
        return [table]
    p = part_of(table.column(column).to_numpy(), parts)
    order = np.argsort(p, kind="stable")
    bounds = np.searchsorted(p[order], np.arange(parts + 1))
    t = table.take(order)
    return [t.slice(bounds[i], bounds[i + 1] - bounds[i]) for i in range(parts)]


def _concat(tables: Sequence[pa.Table], schema: pa.Schema) -> pa.Table:
    tables = [t for t in tables if t.num_rows]
    return pa.concat_tables(tables).combine_chunks() if tables else schema.empty_table()


@functools.cache
def _remote_fn(fn):
    return ray.remote(fn)  # one RemoteFunction per step: Ray exports each function once, not per call


def _remote(fn, parts: int):
    return _remote_fn(fn).options(num_returns=parts, num_cpus=1)


def _out(tables: list):
    """A task with num_returns=1 must return the object itself, not a 1-tuple."""
    return tables[0] if len(tables) == 1 else tuple(tables)


def _as_list(refs, parts: int) -> list:
    return [refs] if parts == 1 else list(refs)


BAND = pa.schema([("key", pa.uint64()), ("uid", pa.int64()), ("hash", pa.uint64())])
PAIR = pa.schema([("a", pa.int64()), ("b", pa.int64()), ("exact", pa.bool_())])
EDGE = pa.schema([("u", pa.int64()), ("v", pa.int64())])
LABEL = pa.schema([("root", pa.int64()), ("uid", pa.int64()), ("id", pa.string()), ("hash", pa.uint64())])
REMOVED = pa.schema([("uid", pa.int64()), ("id", pa.string()), ("reason", pa.string()), ("kept_id", pa.string())])


@dataclass(frozen=True)
class Plan:
    parts: int
    exact: bool
    near: bool
    bands: int
    rows: int
    threshold: float
    max_bucket_pairs: int
    source_starts: tuple[int, ...] = (0,)  # the first file index of each source (files are numbered source by source)

    @classmethod
    def from_config(cls, cfg: DedupConfig, source_starts: tuple[int, ...] = (0,)) -> Plan:
        b, r = bands_rows(cfg.minhash) if cfg.minhash.enabled else (0, 0)
        return cls(cfg.partitions, cfg.exact.enabled, cfg.minhash.enabled, b, r, cfg.minhash.threshold, cfg.minhash.max_bucket_pairs, source_starts)


# S1 ------------------------------------------------------------------------
def _s1_map(paths: list[str], plan: Plan):
    import pyarrow.parquet as pq

    cols = ["uid", "id", "hash", "status"] + (["sig"] if plan.near else [])
    t = pa.concat_tables([pq.read_table(p, columns=cols) for p in paths])
    t = t.filter(pc.equal(t["status"], "kept"))
    uid = t["uid"].to_numpy()
    h = t["hash"].to_numpy()
    if plan.near:
        width = t.schema.field("sig").type.byte_width // 4
        sig = np.frombuffer(t["sig"].combine_chunks().buffers()[1], dtype=np.uint32, count=len(uid) * width).reshape(len(uid), width)
        keys = band_keys(sig, plan.bands, plan.rows)
        nb = plan.bands
    else:
        keys, nb = h.reshape(-1, 1), 1  # exact only: one bucket per text hash
    bands = pa.table({"key": keys.reshape(-1), "uid": np.repeat(uid, nb), "hash": np.repeat(h, nb)}, schema=BAND)
    nodes = t.drop_columns(["status"])
    return tuple(split_by(bands, "key", plan.parts) + split_by(nodes, "uid", plan.parts))


# S2 ------------------------------------------------------------------------
def _shared_key_rows(key: np.ndarray) -> np.ndarray:
    """Indices of the rows whose key occurs more than once: most keys are unique, so one plain sort
    on the key finds them and the three-key sort only has to order the few shared ones."""
    if len(key) < 2:
        return np.zeros(0, np.int64)
    order = np.argsort(key)
    dup = key[order[1:]] == key[order[:-1]]
    return order[np.r_[dup, False] | np.r_[False, dup]]


def _rep_pairs(key: np.ndarray, uid: np.ndarray, max_bucket_pairs: int) -> tuple[np.ndarray, np.ndarray]:
    """Pairs among one representative per text of each bucket (rows sorted by key, then uid): all
    pairs (i < j) in buckets of at most max_bucket_pairs, else a star on the first plus a chain."""
    start = np.flatnonzero(np.r_[True, key[1:] != key[:-1]])
    size = np.diff(np.r_[start, len(key)])
    k = np.repeat(size, size)  # bucket size of each row
    pos = np.arange(len(key)) - np.repeat(start, size)  # position in its bucket
    cnt = np.where((k > 1) & (k <= max_bucket_pairs), k - 1 - pos, 0)  # row i pairs with the rows after it
    src = np.repeat(np.arange(len(key)), cnt)
    step = np.arange(int(cnt.sum())) - np.repeat(np.cumsum(cnt) - cnt, cnt) + 1
    large = k > max_bucket_pairs
    star = np.flatnonzero(large & (pos > 0))
    chain = np.flatnonzero(large & (pos > 1))
    a = np.concatenate([uid[src], uid[star - pos[star]], uid[chain - 1]])
    b = np.concatenate([uid[src + step], uid[star], uid[chain]])
    return a, b


def bucket_pairs(bands: pa.Table, max_bucket_pairs: int) -> pa.Table:
    """Candidate pairs (a < b) from rows sharing a key. Copies with the same text hash form a
    star around their smallest uid (flagged exact); distinct texts pair all-to-all, or as a
    star plus chain in buckets larger than max_bucket_pairs. Each pair appears once (exact wins)."""
    key, uid, h = (bands[c].to_numpy() for c in ("key", "uid", "hash"))
    sub = _shared_key_rows(key)
    if len(sub) == 0:
        return PAIR.empty_table()
    key, uid, h = key[sub], uid[sub], h[sub]
    order = np.lexsort((uid, h, key))
    key, uid, h = key[order], uid[order], h[order]
    first = np.r_[True, (key[1:] != key[:-1]) | (h[1:] != h[:-1])]  # smallest uid of each (key, text)
    run_start = np.maximum.accumulate(np.where(first, np.arange(len(key)), 0))
    copies = np.flatnonzero(~first)
    rep = np.flatnonzero(first)
    o = np.lexsort((uid[rep], key[rep]))
    a_near, b_near = _rep_pairs(key[rep][o], uid[rep][o], max_bucket_pairs)
    a = np.concatenate([uid[run_start[copies]], a_near])
    b = np.concatenate([uid[copies], b_near])
    if len(a) == 0:
        return PAIR.empty_table()
    ex = np.r_[np.ones(len(copies), bool), np.zeros(len(a_near), bool)]
    return distinct_pairs(pa.table({"a": np.minimum(a, b), "b": np.maximum(a, b), "exact": ex}, schema=PAIR))


def distinct_pairs(pairs: pa.Table) -> pa.Table:
    """One row per (a, b); exact if any of its copies is."""
    if pairs.num_rows == 0:
        return PAIR.empty_table()
    return pairs.group_by(["a", "b"]).aggregate([("exact", "max")]).rename_columns(["a", "b", "exact"]).cast(PAIR)


def _s2_reduce(plan: Plan, *pieces: pa.Table):
    pairs = bucket_pairs(_concat(pieces, BAND), plan.max_bucket_pairs)
    return _out(split_by(pairs, "a", plan.parts))


# S3/S4 ---------------------------------------------------------------------
def _attach(pairs: pa.Table, nodes: pa.Table, side: str, out: str) -> pa.Table:
    look = nodes.select(["uid", "sig", "hash"]).rename_columns(["uid", out, f"hash_{side}"])
    return pairs.join(look, keys=side, right_keys="uid", join_type="inner")


def _nodes(refs: list) -> pa.Table:
    """The node rows of one partition: pieces from every S1 task, fetched inside the task (the
    refs come in a list so Ray does not resolve them), so no concatenated copy lives in the store."""
    tables = ray.get(refs)
    return pa.concat_tables([t for t in tables if t.num_rows] or tables[:1])


def _s3_attach_a(plan: Plan, node_refs: list, *pieces: pa.Table):
    """Pieces are partitioned by `a`, so every copy of a pair (found by several bands in different S2
    partitions) lands here: collapse them before attaching a 512 B signature to each. Returns the P
    tables by `b` and the number of distinct pairs."""
    pairs = distinct_pairs(_concat(pieces, PAIR))
    n = pairs.num_rows
    if plan.near:
        pairs = _attach(pairs, _nodes(node_refs), "a", "sig_a")
    return tuple(split_by(pairs, "b", plan.parts)) + (n,)


def _s4_confirm(plan: Plan, node_refs: list, *pieces: pa.Table):
    pairs = pa.concat_tables([p for p in pieces if p.num_rows]) if any(p.num_rows for p in pieces) else None
    if pairs is None:
        edges = EDGE.empty_table()
    elif plan.near:
        pairs = _attach(pairs, _nodes(node_refs), "b", "sig_b").combine_chunks()
        n = pairs.num_rows
        width = pairs.schema.field("sig_a").type.byte_width // 4
        sa = np.frombuffer(pairs["sig_a"].chunk(0).buffers()[1], np.uint32, n * width).reshape(n, width) if n else np.zeros((0, width), np.uint32)
        sb = np.frombuffer(pairs["sig_b"].chunk(0).buffers()[1], np.uint32, n * width).reshape(n, width) if n else np.zeros((0, width), np.uint32)
        keep = pairs["exact"].to_numpy(zero_copy_only=False) | (jaccard_estimate(sa, sb) >= plan.threshold)
        edges = pa.table({"u": pairs["a"].to_numpy()[keep], "v": pairs["b"].to_numpy()[keep]}, schema=EDGE)
    else:
        edges = pa.table({"u": pairs["a"], "v": pairs["b"]}, schema=EDGE)
    return _out(split_by(edges, "u", plan.parts))


# S5: connected components ---------------------------------------------------
def _directed(edges: pa.Table) -> tuple[np.ndarray, np.ndarray]:
    u, v = edges["u"].to_numpy(), edges["v"].to_numpy()
    return u, v


def unique_edges(u: np.ndarray, v: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The distinct rows (u, v), sorted by u then v (a lexsort of two int64 columns is ~4x faster
    than np.unique(axis=0), which sorts rows as a structured dtype)."""
    o = np.lexsort((v, u))
    u, v = u[o], v[o]
    keep = np.r_[True, (u[1:] != u[:-1]) | (v[1:] != v[:-1])] if len(u) else np.zeros(0, bool)
    return u[keep], v[keep]


def star_step(u: np.ndarray, v: np.ndarray, large: bool, presorted: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """One large-star or small-star step over the directed rows (u -> v) of the nodes u owned by
    this partition (every neighbour of such a u is present). Returns undirected edges (x, m).
    presorted: the rows are already sorted by u (as unique_edges returns them)."""
    if len(u) == 0:
        return u, v
    if not presorted:
        order = np.lexsort((v, u))
        u, v = u[order], v[order]
    if not large:  # small-star: only neighbours smaller than u, and u itself joins the star
        keep = v < u
        u, v = u[keep], v[keep]
        if len(u) == 0:
            return u, v
    starts = np.flatnonzero(np.r_[True, u[1:] != u[:-1]])
    node = u[starts]
    m = np.minimum(np.minimum.reduceat(v, starts), node)
    m_row = np.repeat(m, np.diff(np.r_[starts, len(u)]))
    if large:
        sel = v > u
        x, y = v[sel], m_row[sel]
    else:
        x = np.concatenate([v, node])
        y = np.concatenate([m_row, m])
    sel = x != y
    return x[sel], y[sel]


def _s5_step(plan: Plan, large: bool, *pieces: pa.Table):
    rows = _concat(pieces, EDGE)
    u, v = unique_edges(*_directed(rows))
    checksum = int(np.bitwise_xor.reduce(mix64(mix64(u.view(np.uint64)) ^ v.view(np.uint64)))) if len(u) else 0
    x, y = star_step(u, v, large, presorted=True)
    both = pa.table({"u": np.concatenate([x, y]), "v": np.concatenate([y, x])}, schema=EDGE)
    return tuple(split_by(both, "u", plan.parts)) + ((len(u), checksum),)


# S6: labels -------------------------------------------------------------------
def _s6_join(plan: Plan, node_refs: list, *pieces: pa.Table):
    """Rows (u -> root) of a converged star: every non-root u has exactly its root as neighbour
    with root < u. Roots label themselves. Attach id and hash of each member."""
    rows = _concat(pieces, EDGE)
    u, v = _directed(rows)
    member = np.r_[u[v < u], np.unique(u[v > u])]  # members, and roots (a root only has larger neighbours)
    root = np.r_[v[v < u], np.unique(u[v > u])]
    lab = pa.table({"uid": member, "root": root}).group_by(["uid"]).aggregate([("root", "min")]).rename_columns(["uid", "root"])
    if lab.num_rows == 0:
        return _out([LABEL.empty_table()] * plan.parts)
    lab = lab.join(_nodes(node_refs).select(["uid", "id", "hash"]), keys="uid", join_type="inner")
    return _out(split_by(lab.select(["root", "uid", "id", "hash"]).cast(LABEL), "root", plan.parts))


def source_rank(uid: np.ndarray, source_starts: tuple[int, ...]) -> np.ndarray:
    """The rank of each uid's source (data.sources in listed order) from its file index, uid >> 32."""
    return np.searchsorted(np.asarray(source_starts, dtype=np.int64), np.asarray(uid, dtype=np.int64) >> 32, side="right") - 1


def choose_kept(labels: pa.Table, exact_enabled: bool, source_starts: tuple[int, ...] = (0,)) -> pa.Table:
    """Per component the document of the first listed source, then the smallest id (then uid), is kept; the
    others are removed as exact duplicates of it (same text hash) or near duplicates."""
    if labels.num_rows == 0:
        return REMOVED.empty_table()
    df = labels.to_pandas()
    df["source"] = source_rank(df["uid"].to_numpy(), source_starts)
    df = df.sort_values(["root", "source", "id", "uid"], kind="stable")
    first = df.groupby("root", sort=False).head(1).set_index("root")
    df = df[~df["uid"].isin(first["uid"])]
    kept_id = first.loc[df["root"], "id"].to_numpy()
    kept_hash = first.loc[df["root"], "hash"].to_numpy()
    reason = np.where((df["hash"].to_numpy() == kept_hash) & exact_enabled, "exact", "near")
    return pa.table({"uid": df["uid"].to_numpy(), "id": df["id"].to_numpy(), "reason": reason, "kept_id": kept_id}, schema=REMOVED).sort_by("uid")


def _s6_choose(plan: Plan, *pieces: pa.Table) -> pa.Table:
    return choose_kept(_concat(pieces, LABEL), plan.exact, plan.source_starts)


def _s4_symmetric(plan: Plan, *pieces: pa.Table):
    both = [pa.concat_tables([x, x.rename_columns(["v", "u"]).select(["u", "v"])]) for x in pieces if x.num_rows]
    return _out(split_by(_concat(both, EDGE), "u", plan.parts))


@ray.remote
def _count_rows(*pieces: pa.Table) -> int:
    return sum(x.num_rows for x in pieces)


def connected_components(current: list[list], plan: Plan, submit, get) -> tuple[list[list], int]:
    """Alternate large-star and small-star rounds until the edge set entering large-star is the
    same twice (count and checksum): each component is then a star around its smallest uid.
    `current[p]` holds the pieces of partition p; `submit(fn, *args)` runs a step (a Ray task in
    run_dedup, a plain call in tests) and returns its P outputs plus (rows, checksum)."""
    P = plan.parts
    last, rounds = None, 0
    while rounds < 64:  # O(log n) rounds in theory; 64 only guards against a bug looping forever
        rounds += 1
        state = None
        for large in (True, False):
            outs = [submit(_s5_step, plan, large, *current[p]) for p in range(P)]
            stats = get([o[P] for o in outs])
            if large:
                state = (sum(n for n, _ in stats), functools.reduce(operator.xor, (c for _, c in stats), 0))
            current = [[outs[q][p] for q in range(P)] for p in range(P)]
        if state == last or state[0] == 0:
            break
        last = state
    return current, rounds


# driver ------------------------------------------------------------------------
@dataclass
class DedupResult:
    removed: list  # object refs of REMOVED tables, one per partition
    candidate_pairs: int
    confirmed_edges: int
    cc_rounds: int
    edges: list | None = None  # refs of confirmed edge tables (kept for inspection/tests)


def run_dedup(staging_files: list[str], cfg: DedupConfig, progress=None, source_starts: tuple[int, ...] = (0,)) -> DedupResult:
    """The steps S1..S6 as Ray tasks. The driver drops its refs to each step's outputs once their
    consumers are submitted, so Ray frees them when those finish instead of spilling them until the
    end; lineage (kept while refs to downstream objects live) still rebuilds them after a node loss."""
    plan = Plan.from_config(cfg, source_starts)
    P = plan.parts
    tick = progress or (lambda msg: None)

    # S1 tasks take groups of staging files, so the number of shuffle pieces is (4P groups) x P,
    # not (files x P), however many files a large corpus has
    n_groups = max(1, min(len(staging_files), 4 * P))
    groups = [staging_files[i::n_groups] for i in range(n_groups)]
    s1 = [_as_list(_remote(_s1_map, 2 * P).remote(g, plan), 2 * P) for g in groups if g]
    # node rows stay as per-partition lists of refs, fetched inside the tasks that need them (S3, S4, S6)
    nodes = [[m[P + p] for m in s1] for p in range(P)]
    tick("lsh buckets")
    s2 = [_as_list(_remote(_s2_reduce, P).remote(plan, *[m[p] for m in s1]), P) for p in range(P)]
    del s1
    ray.wait([r for row in s2 for r in row], num_returns=P * P, fetch_local=False)  # S2 done before the next tick: phases timed apart
    s3 = [_as_list(_remote(_s3_attach_a, P + 1).remote(plan, nodes[p], *[s2[q][p] for q in range(P)]), P + 1) for p in range(P)]
    del s2
    tick("confirm pairs")
    s4 = [_as_list(_remote(_s4_confirm, P).remote(plan, nodes[p], *[s3[q][p] for q in range(P)]), P) for p in range(P)]
    cand = ray.get([row[P] for row in s3])
    del s3
    confirmed_edges = [[s4[q][p] for q in range(P)] for p in range(P)]
    del s4
    n_edges = sum(ray.get([_count_rows.remote(*confirmed_edges[p]) for p in range(P)]))

    tick("connected components")
    submit = lambda fn, *a: _as_list(_remote(fn, P + 1).remote(*a), P + 1)  # noqa: E731
    current, rounds = connected_components(_symmetric(confirmed_edges, plan), plan, submit, ray.get)
    joined = [_as_list(_remote(_s6_join, P).remote(plan, nodes[p], *current[p]), P) for p in range(P)]
    removed = [_remote(_s6_choose, 1).remote(plan, *[joined[q][p] for q in range(P)]) for p in range(P)]
    return DedupResult(removed, int(sum(cand)), int(n_edges), rounds, edges=[r for row in confirmed_edges for r in row])


def _symmetric(confirmed_edges: list[list], plan: Plan) -> list[list]:
    """Undirected input to the first round: each edge from both ends. A function of its own so that
    run_dedup holds no ref to these tables while the rounds that consume them run."""
    P = plan.parts
    sym = [_as_list(_remote(_s4_symmetric, P).remote(plan, *confirmed_edges[p]), P) for p in range(P)]
    return [[sym[q][p] for q in range(P)] for p in range(P)]


# the stage ----------------------------------------------------------------------
@ray.remote
def _write_table(table: pa.Table, path: str) -> int:
    fs, _ = fsspec.core.url_to_fs(path)
    with fs.open(path, "wb") as f:
        pq.write_table(table, f, row_group_size=65536)
    return table.num_rows


class Dedup(Stage):
    """Which documents are exact or near duplicates of which: hash-partitioned Ray tasks over the staging
    files (run_dedup above), one parquet of (uid, id, reason, kept_id) per partition."""

    name = "dedup"
    reads = ("_work/docs/*.parquet",)
    writes = ("_work/dups/part-*.parquet",)

    def enabled(self, run: DataRun) -> bool:
        return run.data.dedup.exact.enabled or run.data.dedup.minhash.enabled

    def run(self, run: DataRun, stats: Stats) -> None:
        res = run_dedup([s["path"] for s in run.staging], run.data.dedup, lambda m: run.say(f"dedup: {m}"), run.source_starts)
        makedirs(run.dups_dir)
        dups = ray.get([_write_table.remote(r, f"{run.dups_dir}/part-{p:05d}.parquet") for p, r in enumerate(res.removed)])
        stats.counts.update(candidate_pairs=res.candidate_pairs, confirmed_edges=res.confirmed_edges, cc_rounds=res.cc_rounds, duplicates=sum(dups))
        run.say(
            f"dedup: {sum(dups):,} duplicates ({res.candidate_pairs:,} candidate pairs, {res.confirmed_edges:,} confirmed near-duplicate "
            f"edges, {res.cc_rounds} component rounds)"
        )
        run.dups = pads.dataset(run.dups_dir, format="parquet")
