"""Web input throughput: raylm against datatrove on the same WARC files and cores, in one sitting; and the
data stage's peak memory at 1x and 4x the WARC input.

    pip install -e ".[bench]"     # datatrove, warcio, trafilatura
    python benchmarks/web_throughput.py [--mb 40] [--scale 4] [--out bench-out]

First the readers alone, one process: raylm's framing with FastWARC's parser, FastWARC's and warcio's iterators.
The WARC: pages of a made-up theatre site (pipelines/web_sample.py's layout: navigation, cookie banner,
footer around scene-sized pieces of the sample, 35% of words replaced each round so no two pages are
alike), each with its request record, one gzip member a record (Common Crawl's layout), in as many files
as there are cores. Measured, wall time, HTML responses per second and WARC MB/s (compressed), on a Ray instance already up
and warmed by one run (datatrove starts its own processes, as it always does):
  raylm       the read and process stages of `raylm data` (pipelines.run.STAGES[:2]) with no tokenizer:
              read + extract (Resiliparse) + URL filter + normalize + language ID + PII + quality filters
              + exact hash, the kept text written to the staging parquet files (the work datatrove is asked to do)
  raylm data  the whole data stage as `raylm data` runs it: the above, then tokenizing (cl100k), the shards,
              docs.parquet, removed.parquet and the manifest (dedup off)
  datatrove   LocalPipelineExecutor, one task a file, as many workers as cores: WarcReader + Trafilatura
              (its default extractor), the documents counted at the end
The ratio printed is raylm's pages/s over datatrove's, for the same work.
"""

from __future__ import annotations

import argparse
import os
import random
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks.corpus import edit_words, pieces, vocabulary  # noqa: E402
from benchmarks.data_throughput import run_peak  # noqa: E402
from raylm.pipelines.web_sample import SITE, html_page, page, per_record_gzip, request  # noqa: E402


def build_warcs(out: Path, mb: float, files: int, seed: int = 0) -> tuple[int, int]:
    """About `mb` MB of compressed WARC in `files` files; returns (bytes, HTML responses)."""
    marker = out / "DONE"
    if marker.exists():
        b, n = marker.read_text().split()
        return int(b), int(n)
    out.mkdir(parents=True, exist_ok=True)
    rng, base = random.Random(seed), pieces()
    vocab = vocabulary(base)
    handles = [open(out / f"crawl-{i:02d}.warc.gz", "wb") for i in range(files)]
    total = pages = rnd = 0
    while total < mb * 1e6:
        for d in base:
            text = d["text"] if rnd == 0 else edit_words(d["text"], 0.35, rng, vocab)
            url = f"{SITE}/r{rnd}/{d['id'].replace('#', '/')}"
            data = per_record_gzip([request(url), page(url, html_page(d["id"], text))])
            handles[pages % files].write(data)
            total, pages = total + len(data), pages + 1
            if total >= mb * 1e6:
                break
        rnd += 1
    for h in handles:
        h.close()
    marker.write_text(f"{total} {pages}")
    return total, pages


def readers(warcs: Path) -> dict[str, tuple[float, int]]:
    """Seconds and HTTP 200 responses of each reader over the files, one process: raylm's framing plus FastWARC's
    parser (what the read stage does), FastWARC's own iterator, warcio's."""
    from fastwarc.warc import ArchiveIterator as FastIterator
    from fastwarc.warc import WarcRecordType

    from raylm.pipelines.streams import decompressed
    from raylm.pipelines.warc import frames, parse

    def raylm(path: Path) -> int:
        with open(path, "rb") as f:
            return sum(1 for fr in frames(decompressed(f, "gzip", resync=True), 1 << 26) if parse(fr, "warc").reason is None)

    def fastwarc(path: Path) -> int:
        with open(path, "rb") as f:
            it = FastIterator(f, record_types=WarcRecordType.response, parse_http=True)
            return sum(1 for r in it if r.http_headers.status_code == 200 and r.reader.read() is not None)

    def warcio(path: Path) -> int:
        from warcio.archiveiterator import ArchiveIterator

        with open(path, "rb") as f:
            return sum(1 for r in ArchiveIterator(f) if r.rec_type == "response" and r.content_stream().read() is not None)

    out = {}
    for name, fn in (("raylm framing + FastWARC", raylm), ("FastWARC ArchiveIterator", fastwarc), ("warcio ArchiveIterator", warcio)):
        t = time.perf_counter()
        n = sum(fn(p) for p in sorted(warcs.glob("*.warc.gz")))
        out[name] = (time.perf_counter() - t, n)
    return out


def _web_config(warcs: Path, out: Path, name: str):
    from raylm.cluster.recipe import load_config

    return load_config(
        ROOT / "cluster" / "recipes" / "web.yaml",
        [
            f"storage_path={out}",
            f"name={name}",
            f"data.inputs=[{{path: '{warcs}/*.warc.gz'}}]",
            "data.url_filter.block_domains=[]",
            "data.dedup={exact: {enabled: false}, minhash: {enabled: false}}",
            "data.tokenizer={name: cl100k_base}",
            "data.execution.batch_bytes=4000000",
        ],
    )


def run_raylm_data(warcs: Path, out: Path, name: str) -> float:
    """Seconds of the whole data stage (run_data, as `raylm data` runs it)."""
    from raylm.pipelines.run import run_data

    cfg = _web_config(warcs, out, name)
    t = time.perf_counter()
    run_data(cfg.data, cfg.paths, force=True, summary=False, say=lambda m: None)
    return time.perf_counter() - t


def run_raylm_process(warcs: Path, out: Path, name: str) -> tuple[float, int]:
    """Seconds of the read and process stages alone (tokenizing comes after dedup: the kept text goes to the
    staging files), and the documents they kept: what datatrove's WarcReader + Trafilatura is asked to do."""
    from raylm.core.io import makedirs, rm_tree
    from raylm.pipelines.run import STAGES, run_stages
    from raylm.pipelines.stage import DataRun

    cfg = _web_config(warcs, out, name)
    rm_tree(cfg.paths.data)
    run = DataRun(cfg.data, cfg.paths.data, say=lambda m: None, tokenizer=None)
    makedirs(run.docs_dir)
    t = time.perf_counter()
    stats = run_stages(run, STAGES[:2])
    return time.perf_counter() - t, stats["process"].counts["kept"]


def run_datatrove(warcs: Path, out: Path, files: int, workers: int) -> tuple[float, int]:
    from datatrove.executor import LocalPipelineExecutor
    from datatrove.pipeline.extractors import Trafilatura
    from datatrove.pipeline.readers import WarcReader

    kept = out / "datatrove-count"
    kept.mkdir(parents=True, exist_ok=True)

    def count(data, rank: int = 0, world_size: int = 1):
        n = sum(1 for _ in data)
        (kept / f"{rank}").write_text(str(n))
        return iter(())

    ex = LocalPipelineExecutor(
        pipeline=[WarcReader(str(warcs), glob_pattern="*.warc.gz"), Trafilatura(), count],
        tasks=files,
        workers=workers,
        logging_dir=str(out / f"datatrove-logs-{time.time_ns()}"),
        skip_completed=False,
    )
    t = time.perf_counter()
    ex.run()
    return time.perf_counter() - t, sum(int(p.read_text()) for p in kept.iterdir())


def peak_memory(warcs: Path, out: Path, name: str) -> tuple[int, int, float]:
    """Peak PSS of a whole `raylm data` run on web.yaml (its own Ray instance), of its driver alone, and its wall time."""
    sets = [f"storage_path={out}", f"name={name}", f"data.inputs=[{{path: '{warcs}/*.warc.gz'}}]", "data.tokenizer={name: cl100k_base}"]
    recipe = str(ROOT / "cluster" / "recipes" / "web.yaml")
    cmd = [sys.executable, "-m", "raylm", "data", recipe, "--force", *[a for s in sets for a in ("--set", s)]]
    return run_peak(cmd, name, cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT)})


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--mb", type=float, default=40.0, help="compressed WARC MB for the throughput runs and the 1x memory run")
    ap.add_argument("--scale", type=int, default=4)
    ap.add_argument("--out", default=str(ROOT / "bench-out"))
    ap.add_argument("--skip-memory", action="store_true")
    args = ap.parse_args()
    cores, out = os.cpu_count() or 1, Path(args.out)
    w1 = out / f"warc-{args.mb:g}mb"
    nbytes, pages = build_warcs(w1, args.mb, cores)
    print(f"WARC: {nbytes / 1e6:.1f} MB compressed in {cores} files, {pages:,} HTML responses (+ as many requests); {cores} cores")

    print(f"{'reader (one process)':26s} {'seconds':>8s} {'WARC MB/s':>10s} {'pages':>8s}")
    for name, (sec, n) in readers(w1).items():
        print(f"{name:26s} {sec:8.2f} {nbytes / 1e6 / sec:10.2f} {n:8,}")

    import ray

    ray.init(num_cpus=cores, include_dashboard=False, log_to_driver=False)
    import ray.data

    ray.data.DataContext.get_current().enable_progress_bars = False
    run_raylm_data(w1, out / "runs", "web-warmup")  # worker processes, imports, page cache
    t_raylm, kept = run_raylm_process(w1, out / "runs", "web-process")
    t_data = run_raylm_data(w1, out / "runs", "web-data")
    ray.shutdown()
    t_dt, dt_docs = run_datatrove(w1, out, cores, cores)
    print(f"{'':10s} {'seconds':>8s} {'WARC MB/s':>10s} {'pages/s':>9s}")
    for label, s in (("raylm", t_raylm), ("raylm data", t_data), ("datatrove", t_dt)):
        print(f"{label:10s} {s:8.2f} {nbytes / 1e6 / s:10.2f} {pages / s:9,.0f}")
    print(f"documents out: raylm {kept:,} (after its language and quality filters), datatrove {dt_docs:,}")
    print(f"raylm / datatrove pages/s, same work: {t_dt / t_raylm:.2f}x; the whole `raylm data` / datatrove: {t_dt / t_data:.2f}x")
    if not args.skip_memory:
        wN = out / f"warc-{args.mb * args.scale:g}mb"
        build_warcs(wN, args.mb * args.scale, cores)
        p1, d1, s1 = peak_memory(w1, out / "runs", "web-mem-1x")
        pN, dN, sN = peak_memory(wN, out / "runs", f"web-mem-{args.scale}x")
        print(f"peak PSS of `raylm data` (whole process tree): 1x {p1 / 2**20:,.0f} MiB ({s1:.0f}s), ", end="")
        print(f"{args.scale}x {pN / 2**20:,.0f} MiB ({sN:.0f}s): ratio {pN / p1:.2f}")
        print(f"peak PSS of its driver process alone: 1x {d1 / 2**20:,.0f} MiB, {args.scale}x {dN / 2**20:,.0f} MiB: ratio {dN / d1:.2f}")


if __name__ == "__main__":
    main()
