"""The data pipeline built from a recipe: raw text -> staging -> dedup -> (tokenizer) -> shards.

  1. read + process (Ray Data, streaming; actor pool): one staging parquet per block
  2. dedup (Ray tasks, hash-partitioned; see pipelines/dedup.py): which uids are duplicates of which
  3. tokenizer training (rustbpe, in a Ray task) and tokenization, when `tokenizer.train` is set
  4. shards: staging files in uid order, duplicates dropped, cut into .npy shards; removed.parquet;
     manifest last, atomically

A run directory without a manifest is unfinished: it is wiped and redone, and because every step
is a pure function of the input and recipe, the result is byte-identical to an uninterrupted run.
"""

from __future__ import annotations

import contextlib
import itertools
import json
import time
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

import fsspec
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.dataset as pads
import pyarrow.parquet as pq
import ray
from tqdm import tqdm

from pipelines.config import DataConfig, ExecutionConfig
from pipelines.dedup import run_dedup
from pipelines.io import exists, makedirs, rm_tree
from pipelines.paths import REMOVED, STATS, TOKENIZER, WORK, RunPaths
from pipelines.process import STEPS, DocProcessor
from pipelines.schema import ConfigError
from pipelines.shards import ShardWriter, binary_column, has_manifest, read_manifest, token_arrays, token_dtype, write_manifest
from pipelines.sources import TextFiles, list_files
from pipelines.tokenize import TokenizerSpec, copy_tokenizer, describe, encode_documents, load_encoding, spec_from_config, train_bpe

REMOVED_SCHEMA = pa.schema([("id", pa.string()), ("reason", pa.string()), ("kept_id", pa.string()), ("src", pa.string())])


@dataclass
class Report:
    """Counts and timings of one run; timings go to stats.json, not the (deterministic) manifest."""

    seconds: dict[str, float] = field(default_factory=dict)
    stage_seconds: Counter = field(default_factory=Counter)  # CPU seconds inside the actors, by step
    dedup: dict = field(default_factory=dict)

    @contextlib.contextmanager
    def timed(self, name: str) -> Iterator[None]:
        t = time.perf_counter()
        yield
        self.seconds[name] = round(time.perf_counter() - t, 3)


def _say(msg: str) -> None:
    print(f"[raylm data] {msg}", flush=True)


def _workers(ex: ExecutionConfig) -> int:
    return ex.workers or max(1, int(ray.cluster_resources().get("CPU", 1)))


def process_documents(data: DataConfig, files, staging: str, tok: TokenizerSpec | None, report: Report) -> list[dict]:
    """Stage 1: read, clean, hash, sign, tokenize; returns one summary row per staging file."""
    import ray.data as rd

    ctx = rd.DataContext.get_current()
    ctx.enable_progress_bars = True
    workers = _workers(data.execution)
    # a block is one read task's rows, so one contiguous uid range of one file: the staging files
    # then concatenate in input order whatever the batching (see DocProcessor)
    ctx.target_max_block_size = data.execution.batch_bytes
    # bounded read-ahead: without a cap Ray Data queues blocks up to half the object store, so
    # memory would grow with the corpus; a few blocks per actor keep every worker busy
    ctx.execution_options.resource_limits = ctx.execution_options.resource_limits.copy(
        object_store_memory=max(256 << 20, 8 * data.execution.batch_bytes * workers)
    )
    # the actors do the CPU work (one per CPU); reading is mostly I/O and decompression, so read
    # tasks get a token CPU share instead of starving the pool (measured: 2x faster than 0.25/0.75)
    ds = rd.read_datasource(TextFiles(files, data.execution, data.reject), override_num_blocks=len(files), num_cpus=0.01)
    ds = ds.map_batches(
        DocProcessor,
        fn_constructor_args=(data, staging, tok),
        batch_size=None,
        batch_format="pyarrow",
        compute=rd.ActorPoolStrategy(size=workers),
        num_cpus=0.99,
    )
    rows = ds.take_all()
    for r in rows:
        for k in STEPS:
            report.stage_seconds[k] += r[f"s_{k}"]
    return sorted(rows, key=lambda r: r["first_uid"])


@ray.remote
def _write_table(table: pa.Table, path: str) -> int:
    fs, _ = fsspec.core.url_to_fs(path)
    with fs.open(path, "wb") as f:
        pq.write_table(table, f, row_group_size=65536)
    return table.num_rows


def _dups_in(dups: pads.Dataset | None, first: int, last: int) -> dict[int, tuple[str, str]]:
    if dups is None:
        return {}
    t = dups.to_table(filter=(pads.field("uid") >= first) & (pads.field("uid") <= last), columns=["uid", "reason", "kept_id"])
    return dict(zip(t["uid"].to_pylist(), zip(t["reason"].to_pylist(), t["kept_id"].to_pylist())))


def _final_mask(t: pa.Table, dups: dict) -> np.ndarray:
    kept = np.asarray(t["status"].to_numpy(zero_copy_only=False) == "kept")
    if dups:
        uid = t["uid"].to_numpy()
        kept &= ~np.isin(uid, np.fromiter(dups.keys(), dtype=np.int64, count=len(dups)))
    return kept


def final_texts(path: str, first: int, last: int, dups: pads.Dataset | None) -> list[str]:
    """Cleaned texts of the documents of one staging file that survive dedup, in order."""
    t = pq.read_table(path, columns=["uid", "status", "text"])
    return t["text"].filter(pa.array(_final_mask(t, _dups_in(dups, first, last)))).to_pylist()


def kept_texts(summaries: list[dict], dups: pads.Dataset | None, limit: int | None) -> Iterator[str]:
    """Texts of the final kept documents, in order (for tokenizer training)."""
    texts = (x for s in summaries for x in final_texts(s["path"], s["first_uid"], s["last_uid"], dups))
    return itertools.islice(texts, limit)


@ray.remote(num_cpus=1)
def _train_tokenizer_task(summaries: list[dict], dups_dir: str | None, vocab_size: int, limit: int | None, out: str) -> TokenizerSpec:
    dups = pads.dataset(dups_dir, format="parquet") if dups_dir else None
    return train_bpe(kept_texts(summaries, dups, limit), vocab_size, out)


class TokenizeFile:
    """Actor: tokenizes the final kept documents of one staging file into `<file>.tokens.parquet`."""

    def __init__(self, spec: TokenizerSpec, dups_dir: str | None):
        self.enc = spec.load()
        self.dups = pads.dataset(dups_dir, format="parquet") if dups_dir else None

    def __call__(self, batch: dict) -> dict:
        for path, first, last in zip(batch["path"], batch["first_uid"], batch["last_uid"]):
            texts = final_texts(path, int(first), int(last), self.dups)
            parts = encode_documents(self.enc, texts)
            col = binary_column(parts, len(parts), np.arange(len(parts)), 4)
            pq.write_table(pa.table({"tokens": col}), path + ".tokens.tmp", compression="none")
            fs, _ = fsspec.core.url_to_fs(path)
            fs.mv(path + ".tokens.tmp", path + ".tokens")
        return {"path": batch["path"]}


def write_outputs(
    data: DataConfig, root: str, summaries: list[dict], dups: pads.Dataset | None, trained: bool, dtype: np.dtype
) -> tuple[dict, Counter, int, int]:
    """Stage 4: shards, removed.parquet, counts. Sequential, streaming one staging file at a time."""
    out = data.output
    masks = data.has_tasks
    writers = {sp: ShardWriter(root, name, dtype, out.shard_tokens, masks=masks) for sp, name in ((0, "train"), (1, "val"))}
    removed_counts: Counter = Counter()
    docs_in = bytes_in = 0
    fs, _ = fsspec.core.url_to_fs(root)
    with fs.open(f"{root}/{REMOVED}.tmp", "wb") as fh, pq.ParquetWriter(fh, REMOVED_SCHEMA) as removed_w:
        for s in tqdm(summaries, desc="shards", unit="file", disable=None):
            cols = ["uid", "id", "src", "status", "nbytes", "split"] + ([] if trained else ["tokens"]) + (["mask"] if masks else [])
            t = pq.read_table(s["path"], columns=cols)
            docs_in += t.num_rows
            bytes_in += int(pc.sum(t["nbytes"]).as_py() or 0)
            d = _dups_in(dups, s["first_uid"], s["last_uid"])
            mask = _final_mask(t, d)
            # removed rows: filters/rejects from staging, duplicates from dedup
            status = t["status"].to_pylist()
            ids, srcs, uids = t["id"].to_pylist(), t["src"].to_pylist(), t["uid"].to_pylist()
            rows = {"id": [], "reason": [], "kept_id": [], "src": []}
            for i in np.flatnonzero(~mask):
                reason, kept_id = d.get(uids[i], (status[i], None))
                rows["id"].append(ids[i])
                rows["reason"].append(reason)
                rows["kept_id"].append(kept_id)
                rows["src"].append(srcs[i])
                removed_counts[reason] += 1
            if rows["id"]:
                removed_w.write_table(pa.table(rows, schema=REMOVED_SCHEMA))
            # kept documents, in order, to their split
            tok_col = pq.read_table(s["path"] + ".tokens")["tokens"] if trained else t["tokens"].filter(pa.array(mask))
            flat, lengths = token_arrays(tok_col)
            flat_mask = token_arrays(t["mask"].filter(pa.array(mask)), np.uint8)[0] if masks else None
            split = t["split"].to_numpy()[mask]
            for sp, w in writers.items():
                docs = split == sp
                sel = slice(None) if docs.all() else np.repeat(docs, lengths)
                w.add(flat[sel], lengths[docs], None if flat_mask is None else flat_mask[sel])
    fs.mv(f"{root}/{REMOVED}.tmp", f"{root}/{REMOVED}")
    splits = {"train": writers[0].close(), "val": writers[1].close()}
    return splits, removed_counts, docs_in, bytes_in


class DataStageError(RuntimeError):
    """The stage ran but produced nothing usable (every document removed): the CLI exits 1 with this message."""


# the data section keys that decide the output; `execution` (workers, block sizes) changes only how it is computed
_OUTPUT_KEYS = ("inputs", "clean", "reject", "dedup", "tokenizer", "output")


def _flat(d, prefix: str = "") -> dict:
    if isinstance(d, dict):
        return {k: v for key, val in d.items() for k, v in _flat(val, f"{prefix}.{key}" if prefix else str(key)).items()}
    if isinstance(d, list):
        return {k: v for i, val in enumerate(d) for k, v in _flat(val, f"{prefix}[{i}]").items()} or {prefix: []}
    return {prefix: d}


def changed_keys(finished: dict, wanted: dict) -> list[str]:
    """Dotted data.* keys whose value differs between a finished run's config and the recipe's."""
    a = _flat({k: finished.get(k) for k in _OUTPUT_KEYS}, "data")
    b = _flat({k: wanted.get(k) for k in _OUTPUT_KEYS}, "data")
    return sorted(k for k in a.keys() | b.keys() if a.get(k) != b.get(k))


def _reuse_finished(data: DataConfig, root: str, say: Callable[[str], None]) -> dict:
    """The finished run's manifest, if it was made by this recipe's data section; else a ConfigError."""
    man = read_manifest(root)
    diff = changed_keys(man.get("config") or {}, data.model_dump(mode="json")) if "config" in man else []
    if diff:
        shown = ", ".join(diff[:6]) + (f" and {len(diff) - 6} more" if len(diff) > 6 else "")
        raise ConfigError(
            f"{root} was built by a different data section ({shown} changed); rebuild it with --force, "
            f"or give this recipe a new name (--set name=...)"
        )
    say(f"{root} is complete (manifest.json present, same data section); nothing to do. Use --force to rebuild.")
    return man


def _start(root: str, say: Callable[[str], None]) -> str:
    """A clean work directory; an unfinished run's leftovers are wiped (every step is redone from the inputs)."""
    if exists(root):
        say(f"{root} has no manifest: an unfinished run; starting it again from scratch")
        rm_tree(root)
    work = f"{root}/{WORK}"
    makedirs(f"{work}/docs")
    return work


def dedup_stage(data: DataConfig, summaries: list[dict], dups_dir: str, report: Report, say: Callable[[str], None]) -> pads.Dataset | None:
    """Stage 2: which uids are exact or near duplicates of which (dups_dir: one parquet per hash partition)."""
    if not (data.dedup.exact.enabled or data.dedup.minhash.enabled):
        return None
    with report.timed("dedup"):
        res = run_dedup([s["path"] for s in summaries], data.dedup, progress=lambda m: say(f"dedup: {m}"))
        makedirs(dups_dir)
        ray.get([_write_table.remote(r, f"{dups_dir}/part-{p:05d}.parquet") for p, r in enumerate(res.removed)])
    report.dedup = {"candidate_pairs": res.candidate_pairs, "confirmed_edges": res.confirmed_edges, "cc_rounds": res.cc_rounds}
    return pads.dataset(dups_dir, format="parquet")


def tokenizer_stage(
    data: DataConfig, tok: TokenizerSpec | None, root: str, summaries: list[dict], dups_dir: str | None, report: Report, say: Callable[[str], None]
) -> TokenizerSpec:
    """Stage 3, when `tokenizer.train` is set: a BPE tokenizer trained on the kept documents, which then
    tokenizes them (`<staging>.tokens`); a file tokenizer is copied beside the shards."""
    tcfg = data.tokenizer
    if tok is not None:
        if tok.path is not None:  # keep the run self-contained: the tokenizer travels with the shards
            copy_tokenizer(tok.path, f"{root}/{TOKENIZER}")
        return tok
    with report.timed("tokenizer_train"):
        say(f"training a BPE tokenizer (vocab {tcfg.train.vocab_size}) with rustbpe on the kept documents")
        tok = ray.get(_train_tokenizer_task.remote(summaries, dups_dir, tcfg.train.vocab_size, tcfg.train.max_docs, f"{root}/{TOKENIZER}"))
    with report.timed("tokenize"):
        import ray.data as rd

        rd.from_items([{k: s[k] for k in ("path", "first_uid", "last_uid")} for s in summaries]).map_batches(
            TokenizeFile,
            fn_constructor_args=(tok, dups_dir),
            batch_size=1,
            compute=rd.ActorPoolStrategy(size=_workers(data.execution)),
        ).materialize()
    return tok


def _manifest(data: DataConfig, tok: TokenizerSpec, enc, dtype: np.dtype, splits: dict, removed: Counter, docs_in: int, bytes_in: int) -> dict:
    docs_kept = splits["train"]["docs"] + splits["val"]["docs"]
    if docs_in != docs_kept + sum(removed.values()):  # a bug, never an input problem
        raise AssertionError(f"conservation violated: {docs_in} in, {docs_kept} kept, {dict(removed)} removed")
    trained = data.tokenizer.train is not None
    return {
        "format": "raylm-shards",
        "version": 1,
        # a trained tokenizer is the run's own file: named relative to data/, so the manifest is the same wherever the run is
        "tokenizer": {**describe(tok, enc), **({"path": TOKENIZER} if trained else {})},
        "dtype": dtype.name,
        **({"loss_mask": True} if data.has_tasks else {}),  # shard-*.mask.npy beside every shard
        "splits": splits,
        "stats": {
            "docs_in": docs_in,
            "docs_kept": docs_kept,
            "removed": dict(sorted(removed.items())),
            "bytes_in": bytes_in,
            "tokens": splits["train"]["tokens"] + splits["val"]["tokens"],
        },
        "config": data.model_dump(mode="json"),
    }


def _write_stats(root: str, report: Report, docs_in: int, bytes_in: int) -> dict:
    total = max(report.seconds["total"], 1e-9)
    stats = {
        "seconds": report.seconds,
        "actor_cpu_seconds": {k: round(v, 3) for k, v in report.stage_seconds.items()},
        "dedup": report.dedup,
        "mb_per_s": round(bytes_in / 1e6 / total, 3),
        "docs_per_s": round(docs_in / total, 1),
    }
    fs, _ = fsspec.core.url_to_fs(root)
    with fs.open(f"{root}/{STATS}", "w") as f:
        json.dump(stats, f, indent=1)
    return stats


def run_data(data: DataConfig, paths: RunPaths, force: bool = False, say: Callable[[str], None] = _say, summary: bool = True) -> dict:
    """raw text -> shards + manifest + removed.parquet + stats.json in paths.data. Returns the manifest.
    Runs on the Ray instance this process is connected to (cluster.runtime.init_ray), else a new local one."""
    root = paths.data
    if has_manifest(root) and not force:
        return _reuse_finished(data, root, say)
    report, t_start = Report(), time.perf_counter()
    files = list_files(data.inputs)
    tok = None if data.tokenizer.train is not None else spec_from_config(data.tokenizer)  # a bad name fails before any work
    work = _start(root, say)
    say(f"{len(files)} input file(s)")
    with report.timed("process"):  # stage 1: read, clean, hash, sign (and tokenize) into staging files
        summaries = process_documents(data, files, f"{work}/docs", tok, report)
    dups = dedup_stage(data, summaries, f"{work}/dups", report, say)
    tok = tokenizer_stage(data, tok, root, summaries, f"{work}/dups" if dups is not None else None, report, say)
    enc = load_encoding(tok)
    dtype = token_dtype(enc.n_vocab)
    with report.timed("shards"):  # stage 4: shards and removed.parquet
        splits, removed, docs_in, bytes_in = write_outputs(data, root, summaries, dups, data.tokenizer.train is not None, dtype)
    manifest = _manifest(data, tok, enc, dtype, splits, removed, docs_in, bytes_in)
    rm_tree(work)
    report.seconds["total"] = round(time.perf_counter() - t_start, 3)
    stats = _write_stats(root, report, docs_in, bytes_in)
    if manifest["stats"]["docs_kept"] == 0:  # no manifest: nothing to train on is a failed stage, not a finished one
        reasons = ", ".join(f"{r} {n:,}" for r, n in sorted(removed.items(), key=lambda x: -x[1])) or "no input records"
        raise DataStageError(f"no document kept of {docs_in:,} read ({reasons}); each one is listed with its file and line in {root}/{REMOVED}")
    write_manifest(root, manifest)
    if summary:
        print_summary(manifest, stats, root)
    return manifest


def print_summary(manifest: dict, stats: dict, root: str) -> None:
    from rich.console import Console
    from rich.table import Table

    st = manifest["stats"]
    t = Table(title=f"raylm data: {root}", show_header=True)
    t.add_column("what")
    t.add_column("documents", justify="right")
    t.add_column("share", justify="right")
    n = max(st["docs_in"], 1)
    t.add_row("in", f"{st['docs_in']:,}", "100%")
    t.add_row("kept", f"{st['docs_kept']:,}", f"{100 * st['docs_kept'] / n:.1f}%")
    for reason, c in st["removed"].items():
        t.add_row(f"removed: {reason}", f"{c:,}", f"{100 * c / n:.1f}%")
    Console().print(t)
    sp = manifest["splits"]
    Console().print(
        f"tokens: train {sp['train']['tokens']:,} in {len(sp['train']['shards'])} shard(s), val {sp['val']['tokens']:,}; "
        f"tokenizer {manifest['tokenizer']['name']} (n_vocab {manifest['tokenizer']['n_vocab']:,}, {manifest['dtype']}); "
        f"{st['bytes_in'] / 1e6:.1f} MB in {stats['seconds']['total']:.1f}s = {stats['mb_per_s']:.2f} MB/s, "
        f"{stats['docs_per_s']:,.0f} docs/s"
    )
