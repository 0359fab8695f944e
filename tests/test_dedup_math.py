import random

import numpy as np
import pyarrow as pa

from pipelines import dedup as D
from pipelines.config import MinHashConfig


def test_optimal_bands_matches_known_values():
    # datasketch's MinHashLSH picks (9, 13) for threshold 0.8 / 128 perms with equal weights
    assert D.optimal_bands(0.8, 128) == (9, 13)
    b, r = D.optimal_bands(0.5, 128)
    assert b * r <= 128 and 0.3 < (1 / b) ** (1 / r) < 0.7


def test_band_choice_is_an_s_curve_around_threshold():
    b, r = D.optimal_bands(0.8, 128)
    assert D.candidate_probability(0.95, b, r) > 0.99 and D.candidate_probability(0.5, b, r) < 0.01
    # the default weighs misses 9:1: candidates almost surely include every pair above the threshold
    b, r = D.bands_rows(MinHashConfig())
    assert (b, r) == (14, 9)
    assert D.candidate_probability(0.9, b, r) > 0.998 and D.candidate_probability(0.5, b, r) < 0.05


def test_shingles_word_ngrams():
    flat, off = D.shingle_hashes([["a", "b", "c", "d"], ["a", "b"], []], 3)
    assert list(np.diff(off)) == [2, 1, 1]
    # the same 3-gram hashes the same in any document
    f2, o2 = D.shingle_hashes([["x", "b", "c", "d"]], 3)
    assert flat[1] == f2[1] and flat[0] != f2[0]


def _true_jaccard(a, b, n=5):
    sa = {tuple(a[i : i + n]) for i in range(len(a) - n + 1)}
    sb = {tuple(b[i : i + n]) for i in range(len(b) - n + 1)}
    return len(sa & sb) / len(sa | sb)


def test_minhash_estimates_jaccard():
    rng = random.Random(0)
    vocab = [f"w{i}" for i in range(5000)]
    base = [rng.choice(vocab) for _ in range(600)]
    cfg = MinHashConfig(num_perm=256)
    for rate in (0.0, 0.02, 0.1, 0.3):
        other = [rng.choice(vocab) if rng.random() < rate else w for w in base]
        sig = D.signatures([" ".join(base), " ".join(other)], cfg)
        est = D.jaccard_estimate(sig[:1], sig[1:])[0]
        assert abs(est - _true_jaccard(base, other)) < 0.08


def test_signatures_case_insensitive_and_deterministic():
    cfg = MinHashConfig()
    a = D.signatures(["The Quick brown fox jumps over the lazy dog"], cfg)
    b = D.signatures(["the quick BROWN fox jumps over the lazy dog"], cfg)
    assert (a == b).all() and a.dtype == np.uint32 and a.shape == (1, 128)


def test_bucket_pairs_collapse_exact_copies():
    bands = pa.table(
        {
            "key": np.array([7, 7, 7, 7, 9], np.uint64),
            "uid": np.array([5, 3, 8, 1, 2], np.int64),
            "hash": np.array([100, 100, 100, 200, 300], np.uint64),
        },
        schema=D.BAND,
    )
    t = D.bucket_pairs(bands, max_bucket_pairs=64).sort_by([("a", "ascending"), ("b", "ascending")])
    rows = set(zip(t["a"].to_pylist(), t["b"].to_pylist(), t["exact"].to_pylist()))
    # 3,5,8 are copies (star on 3), 1 differs: one near candidate 1-3
    assert rows == {(3, 5, True), (3, 8, True), (1, 3, False)}


def test_large_buckets_star_plus_chain():
    n = 10
    bands = pa.table({"key": np.zeros(n, np.uint64), "uid": np.arange(n, dtype=np.int64), "hash": np.arange(n, dtype=np.uint64)}, schema=D.BAND)
    t = D.bucket_pairs(bands, max_bucket_pairs=4)
    assert t.num_rows == 2 * n - 3


def _cc_local(edges: list[tuple[int, int]], parts: int) -> dict[int, int]:
    """The same partitioned large/small-star loop as run_dedup, with plain calls instead of Ray tasks."""
    plan = D.Plan(parts, True, True, 9, 13, 0.8, 64)
    e = pa.table({"u": np.array([a for a, b in edges], np.int64), "v": np.array([b for a, b in edges], np.int64)}, schema=D.EDGE)
    sym = D._s4_symmetric(plan, e)
    current = [[t] for t in (sym if parts > 1 else (sym,))]
    current, rounds = D.connected_components(current, plan, lambda fn, *a: fn(*a), lambda x: x)
    assert rounds < 20
    labels = {}
    for p in range(parts):
        rows = pa.concat_tables(current[p])
        for u, v in zip(rows["u"].to_pylist(), rows["v"].to_pylist()):
            labels[u] = min(labels.get(u, u), v)
    return labels


def _union_find(edges):
    parent = {}

    def find(x):
        parent.setdefault(x, x)
        while parent[x] != x:
            parent[x] = parent[parent[x]]
            x = parent[x]
        return x

    for a, b in edges:
        ra, rb = find(a), find(b)
        if ra != rb:
            parent[max(ra, rb)] = min(ra, rb)
    return {x: find(x) for x in parent}


def test_connected_components_match_union_find():
    rng = random.Random(1)
    for parts in (1, 3, 5):
        nodes = rng.sample(range(10**6), 300)
        edges = [(rng.choice(nodes), rng.choice(nodes)) for _ in range(250)]
        edges += [(nodes[i], nodes[i + 1]) for i in range(100, 160)]  # a long chain: many rounds
        edges = [(a, b) for a, b in edges if a != b]
        assert _cc_local(edges, parts) == _union_find(edges)


def test_choose_kept_smallest_id_and_reasons():
    labels = pa.table(
        {"root": [1, 1, 1, 9], "uid": [1, 2, 3, 9], "id": ["b", "a", "c", "z"], "hash": np.array([5, 5, 6, 1], np.uint64)}, schema=D.LABEL
    )
    r = D.choose_kept(labels, exact_enabled=True)
    got = sorted(zip(r["id"].to_pylist(), r["reason"].to_pylist(), r["kept_id"].to_pylist()))
    assert got == [("b", "exact", "a"), ("c", "near", "a")]


def test_split_by_is_a_partition():
    t = pa.table({"uid": np.arange(1000, dtype=np.int64)})
    parts = D.split_by(t, "uid", 7)
    assert sum(p.num_rows for p in parts) == 1000
    assert sorted(np.concatenate([p["uid"].to_numpy() for p in parts])) == list(range(1000))


def test_shard_writer_cuts_at_windows(tmp_path):
    from pipelines.shards import ShardWriter

    w = ShardWriter(str(tmp_path), "train", np.dtype(np.uint16), shard_tokens=10)
    docs = [np.arange(n, dtype=np.uint32) + 1 for n in (3, 4, 5, 12, 2)]
    w.add(np.concatenate(docs[:3]), np.array([3, 4, 5]))
    w.add(np.concatenate(docs[3:]), np.array([12, 2]))
    out = w.close()
    # documents start at tokens 0, 3, 7, 12, 24: windows of 10 hold 3+4+5 | 12 | 2 (the one layout: pipelines/layout.py)
    assert [s["docs"] for s in out["shards"]] == [3, 1, 1]
    got = []
    for s in out["shards"]:
        arr = np.load(tmp_path / s["path"])
        idx = np.load(tmp_path / s["path"].replace(".npy", ".idx.npy"))
        assert arr.dtype == np.uint16 and len(arr) == s["tokens"]
        got += np.split(arr, idx[1:].astype(int))
    assert [list(g) for g in got] == [list(d) for d in docs]
    assert not list(tmp_path.rglob("*.tmp"))
