import random

import numpy as np
import pyarrow as pa

from raylm.pipelines import dedup as D
from raylm.pipelines.config import MinHashConfig


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
    from raylm.pipelines.shards import ShardWriter

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


# ---------------------------------------------------------------- vectorized steps vs straightforward references
def _bucket_pairs_reference(bands: pa.Table, max_bucket_pairs: int) -> set[tuple[int, int, bool]]:
    """Bucket by bucket in Python (the loop bucket_pairs replaced): (a, b, exact) rows."""
    buckets: dict[int, list[tuple[int, int]]] = {}
    for k, u, h in zip(*(bands[c].to_pylist() for c in ("key", "uid", "hash"))):
        buckets.setdefault(k, []).append((u, h))
    pairs: dict[tuple[int, int], bool] = {}

    def add(x, y, ex):
        p = (min(x, y), max(x, y))
        pairs[p] = pairs.get(p, False) or ex

    for rows in buckets.values():
        rep: dict[int, int] = {}
        for u, h in sorted(rows):
            rep.setdefault(h, u)  # smallest uid of each text
        for u, h in rows:
            if rep[h] != u:
                add(rep[h], u, True)
        reps = sorted(rep.values())
        if len(reps) <= max_bucket_pairs:
            for i in range(len(reps)):
                for j in range(i + 1, len(reps)):
                    add(reps[i], reps[j], False)
        else:
            for j in range(1, len(reps)):
                add(reps[0], reps[j], False)
                if j > 1:
                    add(reps[j - 1], reps[j], False)
    return {(a, b, ex) for (a, b), ex in pairs.items()}


def _random_bands(rng: np.random.Generator, docs: int, bands: int, keys: int, texts: int) -> pa.Table:
    """Each doc has one row per band; few keys and texts, so buckets of all sizes with exact copies."""
    uid = np.repeat(rng.permutation(10 * docs)[:docs], bands)
    band = np.tile(np.arange(bands), docs)
    key = (band * keys + rng.integers(0, keys, len(uid))).astype(np.uint64)  # a uid is in a key at most once
    h = rng.integers(0, texts, docs).astype(np.uint64)[np.repeat(np.arange(docs), bands)]
    o = rng.permutation(len(uid))
    return pa.table({"key": key[o], "uid": uid[o], "hash": h[o]}, schema=D.BAND)


def _rows(t: pa.Table) -> list[tuple[int, int, bool]]:
    return sorted(zip(t["a"].to_pylist(), t["b"].to_pylist(), t["exact"].to_pylist()))


def test_bucket_pairs_matches_reference_on_random_buckets():
    rng = np.random.default_rng(5)
    for docs, keys, texts, cap in [(300, 40, 30, 64), (300, 15, 200, 8), (500, 200, 500, 64), (200, 3, 5, 4), (50, 1000, 50, 64)]:
        bands = _random_bands(rng, docs, 4, keys, texts)
        got = _rows(D.bucket_pairs(bands, cap))
        assert len(set(got)) == len(got)  # each pair once
        assert set(got) == _bucket_pairs_reference(bands, cap)
    assert D.bucket_pairs(D.BAND.empty_table(), 64).num_rows == 0
    one = pa.table({"key": np.array([1, 2], np.uint64), "uid": np.array([1, 2], np.int64), "hash": np.array([3, 3], np.uint64)}, schema=D.BAND)
    assert D.bucket_pairs(one, 64).num_rows == 0  # no shared key


def test_bucket_pairs_large_bucket_with_copies():
    # one bucket: 12 texts (above the cap of 4) with 3 copies each: copies star on their smallest uid,
    # the 12 representatives form a star plus a chain (2*12 - 3 pairs)
    uid = np.arange(36, dtype=np.int64)
    bands = pa.table({"key": np.zeros(36, np.uint64), "uid": uid, "hash": (uid % 12).astype(np.uint64)}, schema=D.BAND)
    got = _rows(D.bucket_pairs(bands, 4))
    assert set(got) == _bucket_pairs_reference(bands, 4)
    assert sum(ex for *_, ex in got) == 24 and sum(not ex for *_, ex in got) == 21


def test_s3_collapses_pairs_repeated_across_s2_partitions():
    plan = D.Plan(3, True, False, 0, 0, 0.8, 64)  # exact only: no signatures to attach, so no Ray
    p1 = pa.table({"a": [1, 1, 2], "b": [5, 6, 7], "exact": [False, True, False]}, schema=D.PAIR)
    p2 = pa.table({"a": [1, 2, 1], "b": [5, 7, 6], "exact": [True, False, False]}, schema=D.PAIR)
    *tables, n = D._s3_attach_a(plan, [], p1, p2, D.PAIR.empty_table())
    assert n == 3 and len(tables) == 3
    rows = _rows(pa.concat_tables(tables).select(["a", "b", "exact"]))
    assert rows == [(1, 5, True), (1, 6, True), (2, 7, False)]


def _star_step_reference(u: np.ndarray, v: np.ndarray, large: bool) -> set[tuple[int, int]]:
    """Large-star: each u links every larger neighbour to m = min(u, neighbours); small-star: each u
    links itself and every smaller neighbour to m = min(u, smaller neighbours). Self-loops dropped."""
    nbrs: dict[int, set[int]] = {}
    for a, b in zip(u.tolist(), v.tolist()):
        nbrs.setdefault(a, set()).add(b)
    out = set()
    for a, ns in nbrs.items():
        m = min(ns | {a})
        if large:
            out |= {(x, m) for x in ns if x > a}
        else:
            small = {x for x in ns if x < a}
            if small:
                m = min(small | {a})
                out |= {(x, m) for x in small | {a}}
    return {(x, y) for x, y in out if x != y}


def test_star_steps_match_reference_on_random_edges():
    rng = np.random.default_rng(7)
    for n_nodes, n_edges in [(20, 60), (200, 500), (1000, 300)]:
        u = rng.integers(0, n_nodes, n_edges).astype(np.int64)
        v = rng.integers(0, n_nodes, n_edges).astype(np.int64)
        u, v = np.r_[u, v, u[:50]], np.r_[v, u, v[:50]]  # both directions, with repeated rows
        du, dv = D.unique_edges(u, v)
        ref = np.unique(np.stack([u, v], axis=1), axis=0)  # what _s5_step used before
        assert np.array_equal(du, ref[:, 0]) and np.array_equal(dv, ref[:, 1])
        for large in (True, False):
            x, y = D.star_step(du, dv, large, presorted=True)
            got = list(zip(x.tolist(), y.tolist()))
            assert set(got) == _star_step_reference(u, v, large)
            x2, y2 = D.star_step(u, v, large)  # unsorted rows with repeats: same set
            assert set(zip(x2.tolist(), y2.tolist())) == set(got)
    e = np.zeros(0, np.int64)
    assert all(len(a) == 0 for a in D.unique_edges(e, e) + D.star_step(e, e, True) + D.star_step(e, e, False))


def test_s5_step_dedups_and_checksums_like_np_unique():
    plan = D.Plan(3, True, True, 9, 13, 0.8, 64)
    rng = np.random.default_rng(3)
    u, v = rng.integers(0, 50, 400), rng.integers(0, 50, 400)
    edges = pa.table({"u": u, "v": v}, schema=D.EDGE)
    ref = np.unique(np.stack([u, v], axis=1), axis=0)
    check = int(np.bitwise_xor.reduce(D.mix64(D.mix64(ref[:, 0].view(np.uint64)) ^ ref[:, 1].view(np.uint64))))
    for large in (True, False):
        *parts, stats = D._s5_step(plan, large, edges.slice(0, 150), edges.slice(150))
        assert stats == (len(ref), check)
        x, y = D.star_step(ref[:, 0], ref[:, 1], large)
        both = sorted(zip(np.r_[x, y].tolist(), np.r_[y, x].tolist()))
        assert sorted(r for p in parts for r in zip(p["u"].to_pylist(), p["v"].to_pylist())) == both
    *parts, stats = D._s5_step(plan, True, D.EDGE.empty_table())
    assert stats == (0, 0) and all(p.num_rows == 0 for p in parts)


def test_choose_kept_prefers_the_first_listed_source():
    # files 0-1 are source 0, files 2.. source 1 (source_starts): a component's copy in source 0 is kept even
    # though a copy in source 1 has a smaller id; within a source the smallest id still wins
    uid = [(3 << 32) | 5, (1 << 32) | 7, (0 << 32) | 2, (2 << 32) | 1]
    labels = pa.table({"root": [1, 1, 1, 1], "uid": uid, "id": ["a", "m", "z", "b"], "hash": np.array([5, 5, 5, 6], np.uint64)}, schema=D.LABEL)
    assert D.source_rank(np.array(uid), (0, 2)).tolist() == [1, 0, 0, 1]
    r = D.choose_kept(labels, exact_enabled=True, source_starts=(0, 2))
    got = sorted(zip(r["id"].to_pylist(), r["reason"].to_pylist(), r["kept_id"].to_pylist()))
    assert got == [("a", "exact", "m"), ("b", "near", "m"), ("z", "exact", "m")]
    # one source: the smallest id
    r = D.choose_kept(labels, exact_enabled=True)
    assert set(r["kept_id"].to_pylist()) == {"a"}
