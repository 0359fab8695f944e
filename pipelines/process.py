"""The process stage: every input record through the per-document steps (STEPS, in order) in Ray Data
tasks (steps built once per worker process: process_block), written as one staging parquet per block
(pipelines/staging.py), kept documents with their cleaned text. Tokenizing waits for dedup (the tokenize
stage): a duplicate is never tokenized.

  url filter, extract (web pages) -> normalize -> language -> PII -> filter -> decontaminate -> quality
  classifier -> hash (+ split) -> minhash

A step that drops a document records why (reject:..., filter:...); the row stays in staging with that
status, so the write stage can account for it. The columns a step declares (Step.columns) are in every
staging file and, unless staging-only, in docs.parquet; what it counts is in stats.json: adding a step is
its module and its place in STEPS.
"""

from __future__ import annotations

import json
import time
from collections import Counter

import fsspec
import numpy as np
import pyarrow as pa
import pyarrow.compute  # noqa: F401 - pa.compute
import pyarrow.parquet as pq

from raylm.core.io import atomic_open
from raylm.pipelines.clean import Filter, Normalize
from raylm.pipelines.config import DataConfig
from raylm.pipelines.decontaminate import Decontaminate
from raylm.pipelines.dedup import ExactHash, MinHashSign
from raylm.pipelines.extract import Extract
from raylm.pipelines.language import Language
from raylm.pipelines.perplexity import Perplexity
from raylm.pipelines.pii import RedactPii
from raylm.pipelines.quality import Classify
from raylm.pipelines.stage import Block, Chunk, DataRun, Stage, Step, built_once, columns_of
from raylm.pipelines.staging import SKIP, staging_schema
from raylm.pipelines.stats import Stats
from raylm.pipelines.url_filter import UrlFilter

# the per-document steps, in order; each is timed under its name (stats.json: stages.process.seconds.cpu.<name>, summed over workers)
STEPS = (UrlFilter, Extract, Normalize, Language, RedactPii, Filter, Decontaminate, Classify, ExactHash, MinHashSign)
LATER = (Perplexity,)  # stages that fill a per-document column of the staging files after processing
COLUMNS = columns_of((*STEPS, *LATER))  # the per-document columns: staging files and docs.parquet (pipelines/write.py)
_CHUNK = 256  # documents that go through the steps together: word lists live for one chunk


def _block(batch: pa.Table, cfg: DataConfig, columns: tuple) -> Block:
    n, mh = batch.num_rows, cfg.dedup.minhash
    return Block(
        ids=batch["id"].to_pylist(),
        prompt_chars=batch["prompt_chars"].to_pylist(),
        status=["kept"] * n,
        hashes=np.zeros(n, dtype=np.uint64),
        split=np.zeros(n, dtype=np.int8),
        sig=np.zeros((n, mh.num_perm), dtype=np.uint32) if mh.enabled else None,
        urls=batch["url"].to_pylist() if cfg.has_web else [None] * n,
        payloads=batch["payload"].to_pylist() if cfg.has_web else [None] * n,
        charsets=batch["charset"].to_pylist() if cfg.has_web else [None] * n,
        meta={c.name: [None] * n for c in columns},
    )


class DocProcessor:
    """The process stage's work on one block: its rows in, one staging file and its summary row out."""

    def __init__(self, cfg: DataConfig, staging_dir: str, steps: tuple[type[Step], ...] = STEPS, assets: dict[str, str] | None = None):
        self.cfg, self.staging_dir = cfg, staging_dir
        self.fs, _ = fsspec.core.url_to_fs(staging_dir)
        self.steps = [S(cfg) for S in steps if S.enabled(cfg)]
        for step in self.steps:
            step.assets = dict(assets or {})
        self.columns = columns_of((*steps, *LATER))  # a later stage's column is written null, filled in by it
        self.schema = staging_schema(cfg, self.columns)

    def _chunk(self, b: Block, raw: list, rejects: list, lo: int, hi: int, stats: Stats) -> None:
        rows = [i for i in range(lo, hi) if rejects[i] is None]
        for i in range(lo, hi):
            if rejects[i] is not None:  # the reader's verdict (bad JSON, bad UTF-8, ...; a skipped WARC record): never a document
                b.status[i] = rejects[i] if rejects[i].startswith(SKIP) else f"reject:{rejects[i]}"
        c = Chunk(b, rows, [raw[i] for i in rows])
        for step in self.steps:
            with stats.timer(step.name):
                step(c)
        b.kept += c.rows
        b.text_bytes += [len(t) if t.isascii() else len(t.encode()) for t in c.texts]
        b.texts += c.texts

    def _columns(self, batch: pa.Table, b: Block) -> dict[str, pa.Array]:
        """The staging file's columns (staging_schema)."""
        n = batch.num_rows
        if undeclared := set(b.meta) - {c.name for c in self.columns}:
            raise AssertionError(f"steps set columns no step declares (Step.columns): {sorted(undeclared)}")
        cols = {
            "uid": batch["uid"],
            "id": batch["id"],
            "src": batch["src"],
            "status": pa.array(b.status, pa.string()),
            "nbytes": batch["nbytes"],
            "hash": pa.array(b.hashes),
            "split": pa.array(b.split),
            "url": batch["url"],
            "date": batch["date"],
            **{c.name: pa.array(b.meta[c.name], c.type) for c in self.columns},
        }
        if b.sig is not None:
            cols["sig"] = pa.FixedSizeBinaryArray.from_buffers(pa.binary(b.sig.shape[1] * 4), n, [None, pa.py_buffer(b.sig.tobytes())])
        where = np.asarray(b.kept, dtype=np.int64)
        text_bytes = np.zeros(n, dtype=np.int64)
        text_bytes[where] = b.text_bytes
        cols["text_bytes"] = pa.array(text_bytes)
        texts = [None] * n
        for k, i in enumerate(b.kept):
            texts[i] = b.texts[k]
        cols["text"] = pa.array(texts, pa.large_string())
        if self.cfg.has_tasks:
            cols["prompt_chars"] = batch["prompt_chars"].cast(pa.int32())
        return cols

    def _write(self, batch: pa.Table, b: Block, path: str) -> None:
        table = pa.table(self._columns(batch, b), schema=self.schema)
        with atomic_open(path) as f:  # a retried task never leaves half a file
            pq.write_table(table, f, compression="zstd")

    def __call__(self, batch: pa.Table) -> pa.Table:
        stats, n, began = Stats(), batch.num_rows, time.time()
        uids = batch["uid"]
        first, last = int(uids[0].as_py()), int(uids[-1].as_py())
        if last - first + 1 < n or first >> 32 != last >> 32:  # a block must be one contiguous run of one file
            raise RuntimeError(f"block is not one contiguous input range: uids {first}..{last} for {n} rows")
        b, raw, rejects = _block(batch, self.cfg, self.columns), batch["text"].to_pylist(), batch["reject"].to_pylist()
        for lo in range(0, n, _CHUNK):
            self._chunk(b, raw, rejects, lo, min(lo + _CHUNK, n), stats)
        path = f"{self.staging_dir}/{first:020d}.parquet"
        with stats.timer("write"):
            self._write(batch, b, path)
        seconds = {f"s_{k}": [stats.seconds[k]] for k in [s.name for s in self.steps] + ["write"]}
        counts = {f"c_{k}": [v] for s in self.steps for k, v in s.counts.items()}
        for s in self.steps:
            s.counts = dict.fromkeys(s.counts, 0)
        # wall clock (not perf_counter): the driver compares it with its own, to time the stage's fixed costs
        span = {"began": [began], "ended": [time.time()]}
        # for the driver's live progress: input bytes, and why rows went (one JSON column: reasons vary by block)
        live = {"bytes": [pa.compute.sum(batch["nbytes"]).as_py() or 0], "why": [json.dumps(Counter(x for x in b.status if x != "kept"))]}
        row = {"path": [path], "first_uid": [first], "last_uid": [last], "rows": [n], "kept": [len(b.kept)], **live, **span}
        return pa.table({**row, **seconds, **counts})


def process_block(batch: pa.Table, cfg: DataConfig, staging_dir: str, assets: dict[str, str]) -> pa.Table:
    """The process stage's Ray Data task: one block through a DocProcessor built once per worker process
    (steps, language model, classifier), so nothing is imported or built twice."""
    return built_once(DocProcessor, cfg, staging_dir, STEPS, assets)(batch)


def _watch(rows, say) -> list[dict]:
    """The process step's summary rows as its tasks finish, shown live: input read, rates, removals by reason."""
    from raylm.core.progress import Live

    live, out, why, nbytes, docs, t0 = Live("[raylm data] process:"), [], Counter(), 0, 0, time.monotonic()
    try:
        for r in rows:
            out.append(r)
            nbytes, docs = nbytes + r["bytes"], docs + r["rows"]
            why.update(json.loads(r["why"]))
            live.status(_rates(nbytes, docs, time.monotonic() - t0, why))
    finally:
        live.close()
    say(f"process: {_rates(nbytes, docs, time.monotonic() - t0, why)}")
    return out


def _rates(nbytes: int, docs: int, seconds: float, why: Counter) -> str:
    s = max(seconds, 1e-9)
    gone = ", ".join(f"{k} {v:,}" for k, v in why.most_common(6)) or "none"
    return f"{nbytes / 1e6:,.1f} MB, {docs:,} records read ({nbytes / 1e6 / s:,.2f} MB/s, {docs / s:,.0f} docs/s); removed or skipped: {gone}"


class Process(Stage):
    """Every input record through STEPS, in Ray Data tasks fed by the read stage's stream."""

    name = "process"
    reads = ("the read stage's records",)
    writes = ("_work/docs/*.parquet",)

    def run(self, run: DataRun, stats: Stats) -> None:
        import ray.data as rd

        ex, n = run.data.execution, run.workers
        ctx = rd.DataContext.get_current()
        # bounded read-ahead: without a cap Ray Data queues blocks up to half the object store, so
        # memory would grow with the corpus; a few blocks per worker keep every one busy
        ctx.execution_options.resource_limits = ctx.execution_options.resource_limits.copy(object_store_memory=max(256 << 20, 8 * ex.batch_bytes * n))
        ds = run.records.map_batches(
            process_block,
            fn_args=(run.data, run.docs_dir, run.assets),
            batch_size=None,  # one block, one staging file
            batch_format="pyarrow",
            compute=rd.TaskPoolStrategy(size=n),
        )
        rows = sorted(_watch(ds.iter_rows(), run.say), key=lambda r: r["first_uid"])
        for r in rows:
            counts = {k[2:]: v for k, v in r.items() if k.startswith("c_")}
            stats.add({f"cpu.{k[2:]}": v for k, v in r.items() if k.startswith("s_")}, {"docs": r["rows"], "kept": r["kept"], **counts})
        stats.counts["staging_files"] = len(rows)
        if rows:
            run.processing = (min(r["began"] for r in rows), max(r["ended"] for r in rows))
        run.staging = [{k: r[k] for k in ("path", "first_uid", "last_uid", "rows")} for r in rows]
