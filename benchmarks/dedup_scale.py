"""The distributed dedup at scale, simulated: synthetic MinHash signatures for N documents (10M by default)
with a planted duplicate structure, through run_dedup's Ray steps S1..S6 (pipelines/dedup.py) on this machine.

    python benchmarks/dedup_scale.py [--docs 10000000] [--partitions 16] [--out bench-out]

The planted structure. Every value is a counter-based hash of (kind, structure, member, position), so any row's
signature is computed on its own and the generator writes one staging file at a time (2 processes), never
holding all signatures:
  unique         most documents: random signatures and text hashes
  near clusters  sizes 2..1000, P(size k) ~ 1/k^2: member 0 is the base, member v > 0 replaces 6 of its 128
                 positions (any two members agree on >= 116/128 = 0.906 > 0.8, and share >= 2 untouched bands);
                 every 4th member is an exact copy (same text hash and signature) of the member before it
  exact groups   sizes 2..1000: one text hash and signature for all members
  chains         lengths log-uniform in 10..20,000 (the first one the longest): member t+1 replaces 3 positions of
                 member t (125/128 = 0.977), sweeping the signature one row of every band at a time, so members up to
                 4 steps apart share a band (candidates), 6 and more share none, 9 and more agree on < 0.8:
                 only connected components join a chain's ends
  1 in 50 rows of unique documents and clusters has status "reject:synthetic" and must take no part.
Rows are shuffled over the corpus; ids are a scrambled permutation of uids, so the kept document (smallest
id) is rarely the first of its component.

Prints the wall time of run_dedup (total, and per phase from its progress callback); for each step, the CPU
seconds of the workers running it and their peak RSS and private memory (RssAnon: what the worker allocated,
without the object store's shared pages it maps), sampled every ~0.2 s; the driver's peak RSS; the object
store's peak use and spill; and checks every document's kept document, id and reason against a union-find
over the planted links. The driver's peak is taken before the check (which holds arrays of N int64 here).
Results also go to OUT/dedup_scale-<docs>-p<partitions>.json. Figures and their scaling: docs/dedup.md.
"""

from __future__ import annotations

import argparse
import functools
import json
import math
import multiprocessing as mp
import os
import shutil
import sys
import threading
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

NUM_PERM = 128
UNIQUE, NEAR, EXACT, CHAIN = 0, 1, 2, 3
KINDS = ("unique", "near", "exact", "chain")
NEAR_EDITS = 6  # positions a near-cluster member replaces
CHAIN_STEP = 3  # positions a chain step replaces
DROP_ONE_IN = 50
ID_PREFIX = "crawl-2024-10/"  # ids are ID_PREFIX + a 12-digit key: string order is key order
GIB = 2**30

# murmur3's fmix64 (not dedup.mix64, so the generator shares nothing with the code under test)
_F1, _F2, _GOLD = np.uint64(0xFF51AFD7ED558CCD), np.uint64(0xC4CEB9FE1A85EC53), np.uint64(0x9E3779B97F4A7C15)


def chash(*parts) -> np.ndarray:
    """A 64-bit hash of integer arrays (broadcast together): the same inputs give the same value in any file."""
    x = np.uint64(0x243F6A8885A308D3)
    with np.errstate(over="ignore"):
        for p in parts:
            x = x ^ (np.asarray(p).astype(np.uint64) * _GOLD)
            x = x ^ (x >> np.uint64(33))
            x = x * _F1
            x = x ^ (x >> np.uint64(33))
            x = x * _F2
            x = x ^ (x >> np.uint64(33))
    return x


def _u32(x: np.ndarray) -> np.ndarray:
    return (x >> np.uint64(32)).astype(np.uint32)


# ---------------------------------------------------------------- layout and truth
def _sizes(budget: int, draw, rng: np.random.Generator) -> np.ndarray:
    """Structure sizes (each >= 2) from `draw(rng, count)` summing to at most `budget`."""
    sizes = draw(rng, budget // 2 + 1)
    cut = int(np.searchsorted(np.cumsum(sizes), budget, side="right"))
    sizes = sizes[:cut]
    rest = budget - int(sizes.sum())
    return np.r_[sizes, rest] if rest >= 2 else sizes


def _cluster_draw(max_size: int):
    # floor(2/U) has P(k) ~ 1/k^2 for k >= 2; U from [2/(max+1), 1] caps it at max_size
    return lambda rng, m: np.floor(2 / rng.uniform(2 / (max_size + 1), 1, m)).astype(np.int64)


def _chain_draw(max_len: int, budget: int):
    def draw(rng, m):
        lens = np.exp(rng.uniform(math.log(10), math.log(max_len), m)).astype(np.int64)
        return np.r_[min(max_len, budget), lens]  # the first chain is the longest

    return draw


def plan_layout(n: int, fractions: dict[str, float], max_cluster: int, max_chain: int, seed: int) -> dict:
    """(kind, structure, member) of every uid; planted structures spread over the corpus at random."""
    rng = np.random.default_rng(seed)
    parts, counts = [], {}
    for kind, draw in ((NEAR, _cluster_draw(max_cluster)), (EXACT, _cluster_draw(max_cluster)), (CHAIN, None)):
        budget = int(fractions[KINDS[kind]] * n)
        sizes = _sizes(budget, draw or _chain_draw(max_chain, budget), rng) if budget >= 2 else np.zeros(0, np.int64)
        total = int(sizes.sum())
        starts = np.repeat(np.cumsum(sizes) - sizes, sizes)
        parts.append((np.full(total, kind, np.int8), np.repeat(np.arange(len(sizes)), sizes), (np.arange(total) - starts).astype(np.int32)))
        counts[KINDS[kind]] = {"structures": len(sizes), "docs": total, "largest": int(sizes.max(initial=0))}
    planted = sum(len(p[0]) for p in parts)
    parts.append((np.zeros(n - planted, np.int8), np.full(n - planted, -1, np.int64), np.zeros(n - planted, np.int32)))
    counts["unique"] = {"docs": n - planted}
    perm = rng.permutation(n)
    kind, struct, member = (np.concatenate([p[i] for p in parts])[perm] for i in range(3))
    return {"kind": kind, "struct": struct, "member": member, "counts": counts}


def variant_of(kind: np.ndarray, member: np.ndarray) -> np.ndarray:
    """A near-cluster member's variant: every 4th member is an exact copy of the one before it."""
    return np.where((kind == NEAR) & (member % 4 == 3), member - 1, member)


def text_hashes(uid: np.ndarray, kind: np.ndarray, struct: np.ndarray, member: np.ndarray, seed: int) -> np.ndarray:
    """Text hash of each row: its own for unique documents, shared by a structure's copies of one variant."""
    own = chash(seed, UNIQUE, uid)
    shared = chash(seed, kind, struct, np.where(kind == EXACT, 0, variant_of(kind, member)), 3)
    return np.where(kind == UNIQUE, own, shared)


def dropped_rows(uid: np.ndarray, kind: np.ndarray, seed: int) -> np.ndarray:
    """Rows with a non-kept status; never chain members (a gap would cut a chain: the truth stays planted)."""
    return (kind != CHAIN) & (chash(seed, 7, uid) % np.uint64(DROP_ONE_IN) == 0)


def id_keys(n: int) -> tuple[int, int]:
    """key = (a * uid + b) mod n, a bijection that scatters the smallest id over the input order."""
    a = 2654435761 % n or 1
    while math.gcd(a, n) != 1:
        a += 1
    return a, n // 3


def key_of(uid: np.ndarray, n: int) -> np.ndarray:
    a, b = id_keys(n)
    return (uid.astype(np.int64) * a + b) % n


def uid_of(key: np.ndarray, n: int) -> np.ndarray:
    a, b = id_keys(n)
    return ((key.astype(np.int64) - b) % n) * pow(a, -1, n) % n


def union_find(n: int, a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Root of each node (the smallest node of its component), vectorized: hook every root that has an edge
    to a smaller root under the smallest such root, compress paths fully, repeat until no edge spans two trees."""
    parent = np.arange(n)
    while True:
        while True:  # full path compression: parent pointers only ever point to smaller nodes
            grand = parent[parent]
            if np.array_equal(grand, parent):
                break
            parent = grand
        ra, rb = parent[a], parent[b]
        split = ra != rb
        if not split.any():
            return parent
        np.minimum.at(parent, np.maximum(ra[split], rb[split]), np.minimum(ra[split], rb[split]))


def planted_truth(layout: dict, n: int, seed: int) -> tuple[np.ndarray, np.ndarray, int]:
    """Expected kept uid of every uid (itself if not removed), whether its removal is `exact`, and the number
    of planted links: consecutive kept members of each structure (all near-cluster members are similar to each
    other; chain members t and t+1 are), joined by union-find, kept = smallest id of the component."""
    kind, struct, member = layout["kind"], layout["struct"], layout["member"]
    uid = np.arange(n)
    live = np.flatnonzero((kind != UNIQUE) & ~dropped_rows(uid, kind, seed))
    live = live[np.lexsort((member[live], struct[live], kind[live]))]
    same = (kind[live[1:]] == kind[live[:-1]]) & (struct[live[1:]] == struct[live[:-1]])
    root = union_find(n, live[:-1][same], live[1:][same])
    key = key_of(uid, n)
    best = np.full(n, n, np.int64)
    np.minimum.at(best, root, key)
    kept = uid_of(best[root], n)
    h = text_hashes(uid, kind, struct, member, seed)
    exact = (h == h[kept]) & (kept != uid)
    return kept, exact, int(same.sum())


# ---------------------------------------------------------------- staging files
@functools.cache
def sweep_order() -> np.ndarray:
    """Each position's turn in a chain's sweep: row 0 of every band, then row 1, ..., so consecutive edits
    land in different bands (bands x rows as DedupConfig's default chooses); unused positions come last."""
    from raylm.pipelines.config import MinHashConfig
    from raylm.pipelines.dedup import bands_rows

    bands, rows = bands_rows(MinHashConfig(num_perm=NUM_PERM))
    p = np.arange(NUM_PERM)
    return np.where(p < bands * rows, (p % rows) * bands + p // rows, p)


def signatures(uid: np.ndarray, kind: np.ndarray, struct: np.ndarray, member: np.ndarray, seed: int) -> np.ndarray:
    """(n, 128) uint32 signatures of one file's rows (see the module docstring for the structure)."""
    j = np.arange(NUM_PERM)
    sig = np.empty((len(uid), NUM_PERM), np.uint32)
    u = kind == UNIQUE
    if u.any():  # the bulk: a fast generator seeded by the file's first uid
        sig[u] = np.random.default_rng([seed, int(uid[0])]).integers(0, 2**32, (int(u.sum()), NUM_PERM), dtype=np.uint32)
    e = kind == EXACT
    sig[e] = _u32(chash(seed, EXACT, struct[e, None], j))
    c = kind == NEAR
    if c.any():
        s, v = struct[c], variant_of(kind[c], member[c])
        near = _u32(chash(seed, NEAR, s[:, None], j))
        k = np.arange(NEAR_EDITS)
        pos = (chash(seed, NEAR, s[:, None], v[:, None], 1, k) % np.uint64(NUM_PERM)).astype(np.int64)
        vals = _u32(chash(seed, NEAR, s[:, None], v[:, None], 2, k))
        edited = v > 0  # member 0 is the base
        rows = near[edited]
        np.put_along_axis(rows, pos[edited], vals[edited], axis=1)
        near[edited] = rows
        sig[c] = near
    c = kind == CHAIN
    if c.any():
        s, t = struct[c], member[c].astype(np.int64)
        off = (chash(seed, CHAIN, s, 9) % np.uint64(NUM_PERM)).astype(np.int64)
        sweep = (sweep_order()[None, :] - off[:, None]) % NUM_PERM  # when each position is edited in a sweep
        gen = (t[:, None] * CHAIN_STEP - sweep + NUM_PERM - 1) // NUM_PERM  # times position j was edited by step t
        sig[c] = _u32(chash(seed, CHAIN, s[:, None], gen, j))
    return sig


def write_file(data: str, lo: int, hi: int, n: int, seed: int) -> int:
    """One staging file (the columns run_dedup reads, types as staging_schema) for uids lo..hi-1; its bytes."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    kind, struct, member = (np.load(f"{data}/layout_{c}.npy", mmap_mode="r")[lo:hi] for c in ("kind", "struct", "member"))
    uid = np.arange(lo, hi)
    sig = signatures(uid, kind, struct, member, seed)
    key = key_of(uid, n)
    table = pa.table(
        {
            "uid": uid,
            "id": pa.array([f"{ID_PREFIX}{k:012d}" for k in key.tolist()], pa.string()),
            "hash": text_hashes(uid, kind, struct, member, seed),
            "status": np.where(dropped_rows(uid, kind, seed), "reject:synthetic", "kept"),
            "sig": pa.FixedSizeBinaryArray.from_buffers(pa.binary(4 * NUM_PERM), len(uid), [None, pa.py_buffer(sig)]),
        }
    )
    path = f"{data}/{lo:012d}.parquet"
    pq.write_table(table, path, compression="zstd")  # as the process stage writes staging files
    return os.path.getsize(path)


def write_truth(data: str, n: int, fractions: dict, max_cluster: int, max_chain: int, seed: int) -> dict:
    layout = plan_layout(n, fractions, max_cluster, max_chain, seed)
    for c in ("kind", "struct", "member"):
        np.save(f"{data}/layout_{c}.npy", layout[c])
    kept, exact, links = planted_truth(layout, n, seed)
    np.save(f"{data}/truth_kept.npy", kept)
    np.save(f"{data}/truth_exact.npy", exact)
    removed = int((kept != np.arange(n)).sum())
    return {"structures": layout["counts"], "planted_links": links, "expected_removed": removed, "expected_exact": int(exact.sum())}


def generate(data: Path, args: argparse.Namespace) -> dict:
    """Writes the layout, the truth and the staging files in 2 spawned processes (the driver under test
    never holds the generator's arrays); reuses a finished data dir with the same parameters."""
    params = {"docs": args.docs, "rows_per_file": args.rows_per_file, "seed": args.seed, "fractions": args.fractions}
    params |= {"max_cluster": args.max_cluster, "max_chain": args.max_chain}
    done = data / "DONE.json"
    if done.exists() and json.loads(done.read_text())["params"] == params:
        return json.loads(done.read_text())
    shutil.rmtree(data, ignore_errors=True)
    data.mkdir(parents=True)
    t = time.perf_counter()
    with ProcessPoolExecutor(2, mp_context=mp.get_context("spawn")) as pool:
        info = pool.submit(write_truth, str(data), args.docs, args.fractions, args.max_cluster, args.max_chain, args.seed).result()
        bounds = range(0, args.docs, args.rows_per_file)
        sizes = list(pool.map(write_file, *zip(*[(str(data), lo, min(lo + args.rows_per_file, args.docs), args.docs, args.seed) for lo in bounds])))
    info |= {"params": params, "files": len(sizes), "bytes": sum(sizes), "seconds": time.perf_counter() - t}
    done.write_text(json.dumps(info))
    return info


# ---------------------------------------------------------------- measuring
def proc_memory(pid: int | str) -> dict[str, int]:
    """rss, and its private part (RssAnon: what the process allocated itself, without the object store's
    shared pages it maps, which a worker keeps mapped after reading objects zero-copy), from /proc/<pid>/status."""
    fields = {"VmRSS:": "rss", "RssAnon:": "private", "RssShmem:": "shmem"}
    out = dict.fromkeys(fields.values(), 0)
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key = line.split(":", 1)[0] + ":"
        if key in fields:
            out[fields[key]] = int(line.split()[1]) * 1024
    return out


class Sampler(threading.Thread):
    """Samples every ~0.2 s the memory and CPU time of the driver and of every process Ray started (the driver's
    descendants; a worker's process title names the task it runs, ray::<function>), and the object store's use."""

    def __init__(self, gcs_address: str, interval: float = 0.2):
        super().__init__(daemon=True)
        self.gcs_address, self.interval, self.halt = gcs_address, interval, threading.Event()
        self.peaks: dict[str, dict[str, int]] = {}  # step or process name -> peak rss/private/shmem
        self.spans: dict[str, list[float]] = {}  # step -> [first seen, last seen, CPU seconds]
        self.last_cpu: dict[int, float] = {}
        self.tree_private = self.store_used = self.store_fallback = self.samples = 0
        self.sample_cost = self.tree_cpu = 0.0

    def run(self) -> None:
        import psutil

        me, last_store = psutil.Process(), 0.0
        while not self.halt.is_set():
            t, cpu = time.perf_counter(), time.thread_time()
            self._sample(me, t, psutil)
            if t - last_store >= 1.0:  # a gRPC round trip to the raylet: once a second is enough
                self._store()
                last_store = t
            cost = time.thread_time() - cpu
            self.sample_cost += cost
            self.samples += 1
            self.halt.wait(max(self.interval, 9 * cost))  # the sampler's own CPU: at most ~10% of one core

    def _sample(self, me, now: float, psutil) -> None:
        total = 0
        for p in [me] + me.children(recursive=True):
            try:
                title = p.cmdline()[0] if p.pid != me.pid else "driver"
                m = proc_memory(p.pid)
                cpu = sum(p.cpu_times()[:2])
            except (psutil.Error, OSError, IndexError):
                continue
            name = title[5:] if title.startswith("ray::") else os.path.basename(title)
            peak = self.peaks.setdefault(name, dict.fromkeys(m, 0))
            for k in peak:
                peak[k] = max(peak[k], m[k])
            total += m["private"]
            # CPU since the last sample goes to what the process runs now (a task switch in between is rare)
            used, self.last_cpu[p.pid] = cpu - self.last_cpu.get(p.pid, cpu), cpu
            self.tree_cpu += used
            if name.startswith("_"):  # a dedup step (or _count_rows) running now
                span = self.spans.setdefault(name, [now, now, 0.0])
                span[1], span[2] = now, span[2] + used
        self.tree_private = max(self.tree_private, total)

    def _store(self) -> None:
        from ray._private.internal_api import get_memory_info_reply, get_state_from_address

        if not hasattr(self, "_state"):
            self._state = get_state_from_address(self.gcs_address)
        s = get_memory_info_reply(self._state).store_stats
        self.store_used = max(self.store_used, s.object_store_bytes_used)
        self.store_fallback = max(self.store_fallback, s.object_store_bytes_fallback)

    def step_spans(self, t0: float) -> dict:
        """Each step's first and last sighting (seconds from t0) and the CPU seconds its workers used."""
        return {k: {"first_s": a - t0, "last_s": b - t0, "cpu_s": c} for k, (a, b, c) in self.spans.items()}

    def stop(self) -> None:
        self.halt.set()
        self.join()


def store_totals(gcs_address: str) -> dict:
    from ray._private.internal_api import get_memory_info_reply, get_state_from_address

    s = get_memory_info_reply(get_state_from_address(gcs_address)).store_stats
    fields = ("spilled_bytes_total", "spilled_objects_total", "restored_bytes_total", "restored_objects_total", "spill_time_total_s")
    return {f: getattr(s, f) for f in fields + ("restore_time_total_s", "cumulative_created_bytes")}


def reset_peak_rss() -> bool:
    """Linux: writing 5 to clear_refs resets this process's VmHWM, so the driver's peak covers run_dedup only."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
        return True
    except OSError:
        return False


def peak_rss() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024
    return 0


def machine_busy() -> float:
    """CPU seconds all processes of this machine have used (the benchmark competes with whatever else runs)."""
    import psutil

    t = psutil.cpu_times()
    return sum(t) - t.idle - getattr(t, "iowait", 0.0)


def run_once(files: list[str], partitions: int) -> tuple[dict, list]:
    """run_dedup until every REMOVED table is computed (not fetched: the Dedup stage writes them from tasks)."""
    import ray

    from raylm.pipelines.config import DedupConfig
    from raylm.pipelines.dedup import run_dedup

    gcs = ray.get_runtime_context().gcs_address
    sampler = Sampler(gcs)
    reset_ok = reset_peak_rss()
    sampler.start()
    ticks: list[tuple[str, float]] = []
    busy0, t0 = machine_busy(), time.perf_counter()
    res = run_dedup(files, DedupConfig(partitions=partitions), progress=lambda m: ticks.append((m, time.perf_counter())))
    t_ret = time.perf_counter()
    ray.wait(res.removed, num_returns=len(res.removed), fetch_local=False)
    t_end = time.perf_counter()
    driver_hwm = peak_rss() if reset_ok else 0
    sampler.stop()
    busy = machine_busy() - busy0
    marks = [("start", t0)] + ticks + [("returned", t_ret), ("done", t_end)]
    names = {"start": "S1 submit", "lsh buckets": "S1 map + S2 buckets", "confirm pairs": "S3 attach + S4 confirm"}
    names |= {"connected components": "S4 symmetric + S5 rounds", "returned": "S6 labels + choose"}
    phases = {names.get(a, a): b_t - a_t for (a, a_t), (_, b_t) in zip(marks, marks[1:])}
    out = {"wall_s": t_end - t0, "phases_s": phases, "candidate_pairs": res.candidate_pairs, "confirmed_edges": res.confirmed_edges}
    out |= {"cc_rounds": res.cc_rounds, "driver_peak_rss": driver_hwm, "store_peak_used": sampler.store_used}
    out |= {"store_peak_fallback": sampler.store_fallback, "tree_peak_private": sampler.tree_private, "memory": sampler.peaks}
    out |= {"steps": sampler.step_spans(t0), "cpu_s": sampler.tree_cpu, "machine_busy_s": busy, "loadavg": os.getloadavg()}
    out |= {"samples": sampler.samples, "sampler_cpu_s": sampler.sample_cost, "store": store_totals(gcs)}
    return out, ray.get(res.removed)


# ---------------------------------------------------------------- checking
def check(removed: list, data: Path, n: int) -> dict:
    """Every uid's kept uid (itself if not removed) equals the union-find truth; ids, reasons and kept ids match."""
    import pyarrow as pa
    import pyarrow.compute as pc

    kept, exact = np.load(data / "truth_kept.npy"), np.load(data / "truth_exact.npy")
    t = pa.concat_tables(removed)
    uid = t["uid"].to_numpy()

    def key(col: str) -> np.ndarray:
        return pc.cast(pc.utf8_slice_codeunits(t[col], len(ID_PREFIX)), pa.int64()).to_numpy()

    got = np.arange(n)
    got[uid] = uid_of(key("kept_id"), n)
    wrong = np.flatnonzero(got != kept)
    reason_wrong = int(((t["reason"].to_numpy(zero_copy_only=False) == "exact") != exact[uid]).sum())
    out = {"removed": len(uid), "expected_removed": int((kept != np.arange(n)).sum()), "uids_unique": len(np.unique(uid)) == len(uid)}
    out |= {"kept_mismatches": len(wrong), "first_mismatches": [(int(u), int(got[u]), int(kept[u])) for u in wrong[:5]]}
    out |= {"id_mismatches": int((key("id") != key_of(uid, n)).sum()), "reason_mismatches": reason_wrong, "exact": int(exact.sum())}
    out["ok"] = out["uids_unique"] and not (out["kept_mismatches"] or out["id_mismatches"] or reason_wrong)
    return out


# ---------------------------------------------------------------- report
def _gib(b: float) -> str:
    return f"{b / GIB:.2f} GiB"


def print_report(gen: dict, r: dict, chk: dict, n: int, partitions: int) -> None:
    s = gen["structures"]
    print(f"input: {n:,} docs in {gen['files']} staging files, {_gib(gen['bytes'])} on disk (generated in {gen['seconds']:.0f}s)")
    print(
        f"    planted: {s['near']['structures']:,} near clusters ({s['near']['docs']:,} docs, largest {s['near']['largest']}), "
        f"{s['exact']['structures']:,} exact groups ({s['exact']['docs']:,}, largest {s['exact']['largest']}), "
        f"{s['chain']['structures']:,} chains ({s['chain']['docs']:,}, longest {s['chain']['largest']:,}); {gen['planted_links']:,} links"
    )
    print(f"run_dedup, {partitions} partitions: {r['wall_s']:.1f}s wall, until every REMOVED table is computed")
    for name, sec in r["phases_s"].items():
        print(f"    {name:28s} {sec:8.1f}s")
    print(f"    candidate pairs {r['candidate_pairs']:,}, confirmed edges {r['confirmed_edges']:,}, connected-components rounds {r['cc_rounds']}")
    print(
        f"    CPU: {r['cpu_s']:.0f}s in the driver and Ray's processes (the sampler thread {r['sampler_cpu_s']:.0f}s of it); "
        f"the machine's CPUs were busy {r['machine_busy_s']:.0f}s "
        f"of {r['wall_s'] * os.cpu_count():.0f}s (load average at the end: {r['loadavg'][0]:.1f})"
    )
    print("each step: when it ran (s from start), CPU seconds, and the peak RSS and private memory (RssAnon) of a worker running it:")
    for name, span in sorted(r["steps"].items(), key=lambda kv: kv[1]["first_s"]):
        m = r["memory"][name]
        when = f"{span['first_s']:6.1f}-{span['last_s']:6.1f}s"
        print(f"    {name:14s} {when}  CPU {span['cpu_s']:6.1f}s   RSS {_gib(m['rss']):>10s}  private {_gib(m['private']):>10s}")
    d = r["memory"]["driver"]
    print(f"    driver: peak RSS {_gib(r['driver_peak_rss'])} (VmHWM over run_dedup), private {_gib(d['private'])}")
    print(f"    all of Ray's processes and the driver: peak sum of private memory {_gib(r['tree_peak_private'])} (plus the object store)")
    st = r["store"]
    print(
        f"object store: peak used {_gib(r['store_peak_used'])} (fallback {_gib(r['store_peak_fallback'])}), "
        f"created {_gib(st['cumulative_created_bytes'])}; "
        f"spilled {_gib(st['spilled_bytes_total'])} in {st['spilled_objects_total']:,} objects ({st['spill_time_total_s']:.0f}s), "
        f"restored {_gib(st['restored_bytes_total'])} in {st['restored_objects_total']:,} ({st['restore_time_total_s']:.0f}s)"
    )
    verdict = "OK" if chk["ok"] else "FAILED"
    print(
        f"check against union-find: {verdict}: {chk['removed']:,} removed (expected {chk['expected_removed']:,}, {chk['exact']:,} exact), "
        f"kept mismatches {chk['kept_mismatches']}, id mismatches {chk['id_mismatches']}, reason mismatches {chk['reason_mismatches']}"
    )
    if chk["first_mismatches"]:
        print(f"    first (uid, got kept, expected kept): {chk['first_mismatches']}")


def parse_args() -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--docs", type=int, default=10_000_000)
    # 16 for 10M on 24 GiB: fewer partitions cost less CPU, but S3/S4 hold the candidate pairs of a partition
    ap.add_argument("--partitions", type=int, default=16, help="DedupConfig.partitions")
    ap.add_argument("--rows-per-file", type=int, default=100_000, help="rows of each staging file")
    ap.add_argument("--near", type=float, default=0.08, help="fraction of documents in near-duplicate clusters")
    ap.add_argument("--exact", type=float, default=0.05, help="fraction of documents in exact-copy groups")
    ap.add_argument("--chain", type=float, default=0.02, help="fraction of documents in chains")
    ap.add_argument("--max-cluster", type=int, default=1000)
    ap.add_argument("--max-chain", type=int, default=20_000)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--cpus", type=int, default=os.cpu_count())
    ap.add_argument("--object-store-gb", type=float, default=4.0)
    ap.add_argument("--data", default="/tmp/raylm-dedup-scale", help="staging files go to DATA/<docs>-s<seed> (reused when the parameters match)")
    ap.add_argument("--keep-data", action="store_true", help="keep the staging files for another run")
    ap.add_argument("--out", default=str(ROOT / "bench-out"))
    args = ap.parse_args()
    args.fractions = {"near": args.near, "exact": args.exact, "chain": args.chain}
    return args


def main() -> None:
    args = parse_args()
    data = Path(args.data) / f"{args.docs}-s{args.seed}"
    gen = generate(data, args)
    files = sorted(str(p) for p in data.glob("*.parquet"))

    import ray

    spill = Path(args.data) / f"spill-{os.getpid()}"  # on disk, next to the staging files (not /dev/shm)
    store = int(args.object_store_gb * GIB)
    ray.init(num_cpus=args.cpus, object_store_memory=store, include_dashboard=False, log_to_driver=False, object_spilling_directory=str(spill))
    run, removed = run_once(files, args.partitions)
    chk = check(removed, data, args.docs)
    del removed
    ray.shutdown()
    shutil.rmtree(spill, ignore_errors=True)
    print_report(gen, run, chk, args.docs, args.partitions)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    result = {"args": {k: v for k, v in vars(args).items()}, "input": gen, "run": run, "check": chk, "cpus": args.cpus}
    (out / f"dedup_scale-{args.docs}-p{args.partitions}.json").write_text(json.dumps(result, indent=1))
    if not args.keep_data:
        shutil.rmtree(data, ignore_errors=True)
    sys.exit(0 if chk["ok"] else 1)


if __name__ == "__main__":
    main()
