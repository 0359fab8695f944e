"""The write stage: the staging files in uid order, duplicates dropped, cut into .npy shards (train and val),
and every removed document listed in removed.parquet with its reason, the document it duplicates and its
source. Sequential, streaming one staging file at a time; the manifest comes after it (pipelines/run.py)."""

from __future__ import annotations

from collections import Counter

import fsspec
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
from tqdm import tqdm

from pipelines.paths import DOCS, REMOVED, TOKENIZER
from pipelines.shards import ShardWriter, token_arrays, token_dtype
from pipelines.stage import DataRun, Stage
from pipelines.staging import SKIP, SPLIT_TRAIN, SPLIT_VAL, dups_in, final_mask
from pipelines.stats import Stats
from pipelines.tokenize import copy_tokenizer, load_encoding

REMOVED_SCHEMA = pa.schema([("id", pa.string()), ("reason", pa.string()), ("kept_id", pa.string()), ("src", pa.string())])
# docs.parquet: every kept document, in input order: the shard it is in (which names its split) and its index there
DOCS_SCHEMA = pa.schema(
    [
        ("id", pa.string()),
        ("shard", pa.string()),
        ("index", pa.int64()),
        ("src", pa.string()),
        ("url", pa.string()),
        ("date", pa.string()),
        ("language", pa.string()),
        ("language_score", pa.float32()),
    ]
)


class FixedRowGroups:
    """A parquet writer whose row groups hold `size` rows whatever the tables it is handed, so that the
    file's bytes do not depend on how the input was batched."""

    def __init__(self, writer: pq.ParquetWriter, size: int = 65_536):
        self.writer, self.size, self.pending, self.rows = writer, size, [], 0

    def write(self, t: pa.Table | None) -> None:
        if t is None or t.num_rows == 0:
            return
        self.pending.append(t)
        self.rows += t.num_rows
        while self.rows >= self.size:
            self._emit(self.size)

    def _emit(self, n: int) -> None:
        t = pa.concat_tables(self.pending)
        self.writer.write_table(t.slice(0, n), row_group_size=n)
        rest = t.slice(n)
        self.pending, self.rows = ([rest] if rest.num_rows else []), rest.num_rows

    def close(self) -> None:
        if self.rows:
            self._emit(self.rows)


def removed_rows(t: pa.Table, mask: np.ndarray, dups: dict, counts: Counter, skipped: Counter) -> pa.Table | None:
    """The removed rows of one staging table: filters and rejects from processing, duplicates from dedup.
    Skipped records (no documents: skip:...) are counted in `skipped` only."""
    status, ids, srcs, uids = t["status"].to_pylist(), t["id"].to_pylist(), t["src"].to_pylist(), t["uid"].to_pylist()
    rows: dict[str, list] = {"id": [], "reason": [], "kept_id": [], "src": []}
    for i in np.flatnonzero(~mask):
        if status[i].startswith(SKIP):
            skipped[status[i]] += 1
            continue
        reason, kept_id = dups.get(uids[i], (status[i], None))
        rows["id"].append(ids[i])
        rows["reason"].append(reason)
        rows["kept_id"].append(kept_id)
        rows["src"].append(srcs[i])
        counts[reason] += 1
    return pa.table(rows, schema=REMOVED_SCHEMA) if rows["id"] else None


def add_kept(writers: dict[int, ShardWriter], t: pa.Table, mask: np.ndarray, tokens: pa.Array, masks: bool) -> pa.Table:
    """The kept documents of one staging table, in order, to their split's shard writer; returns their
    docs.parquet rows (where each one went, where it came from)."""
    flat, lengths = token_arrays(tokens)
    flat_mask = token_arrays(t["mask"].filter(pa.array(mask)), np.uint8)[0] if masks else None
    split = t["split"].to_numpy()[mask]
    shard_of, index = np.empty(len(split), dtype=object), np.zeros(len(split), dtype=np.int64)
    for sp, w in writers.items():
        docs = split == sp
        sel = slice(None) if docs.all() else np.repeat(docs, lengths)
        n, index[docs] = w.add(flat[sel], lengths[docs], None if flat_mask is None else flat_mask[sel])
        shard_of[docs] = [w.shard_path(int(k)) for k in n]
    kept = t.filter(pa.array(mask))
    cols = {"id": kept["id"], "shard": pa.array(shard_of.tolist(), pa.string()), "index": pa.array(index)}
    where = {k: kept[k] for k in ("src", "url", "date", "language", "language_score")}
    return pa.table({**cols, **where}, schema=DOCS_SCHEMA)


class Write(Stage):
    name = "write"
    reads = ("_work/docs/*.parquet", "_work/docs/*.parquet.tokens", "_work/dups/part-*.parquet")
    writes = ("train/shard-*.npy", "val/shard-*.npy", REMOVED, DOCS)

    def run(self, run: DataRun, stats: Stats) -> None:
        data, root = run.data, run.root
        tok = run.tokenizer
        if tok.path is not None and not run.trains_tokenizer:  # the run stays self-contained: the tokenizer travels with the shards
            copy_tokenizer(tok.path, f"{root}/{TOKENIZER}")
        enc = load_encoding(tok)
        dtype, masks, trained = token_dtype(enc.n_vocab), data.has_tasks, run.trains_tokenizer
        names = {SPLIT_TRAIN: "train", SPLIT_VAL: "val"}
        writers = {sp: ShardWriter(root, name, dtype, data.output.shard_tokens, masks=masks) for sp, name in names.items()}
        removed: Counter = Counter()
        skipped: Counter = Counter()
        fs, _ = fsspec.core.url_to_fs(root)
        with (
            fs.open(f"{root}/{REMOVED}.tmp", "wb") as fh,
            pq.ParquetWriter(fh, REMOVED_SCHEMA) as rw,
            fs.open(f"{root}/{DOCS}.tmp", "wb") as fd,
            pq.ParquetWriter(fd, DOCS_SCHEMA) as dw,
        ):
            removed_w, docs_w = FixedRowGroups(rw), FixedRowGroups(dw)
            for s in tqdm(run.staging, desc="shards", unit="file", disable=None):
                cols = ["uid", "id", "src", "status", "nbytes", "split", "url", "date", "language", "language_score"]
                cols += ([] if trained else ["tokens"]) + (["mask"] if masks else [])
                t = pq.read_table(s["path"], columns=cols)
                stats.counts["records_in"] += t.num_rows
                stats.counts["bytes_in"] += int(pc.sum(t["nbytes"]).as_py() or 0)
                d = dups_in(run.dups, s["first_uid"], s["last_uid"])
                mask = final_mask(t, d)
                removed_w.write(removed_rows(t, mask, d, removed, skipped))
                tokens = pq.read_table(s["path"] + ".tokens")["tokens"] if trained else t["tokens"].filter(pa.array(mask))
                docs_w.write(add_kept(writers, t, mask, tokens, masks))
            removed_w.close()
            docs_w.close()
        fs.mv(f"{root}/{REMOVED}.tmp", f"{root}/{REMOVED}")
        fs.mv(f"{root}/{DOCS}.tmp", f"{root}/{DOCS}")
        splits = {"train": writers[SPLIT_TRAIN].close(), "val": writers[SPLIT_VAL].close()}
        docs_in = stats.counts["records_in"] - sum(skipped.values())
        kept, shards = sum(sp["docs"] for sp in splits.values()), sum(len(sp["shards"]) for sp in splits.values())
        stats.counts.update(docs_in=docs_in, docs_kept=kept, shards=shards)
        run.outputs = dict(splits=splits, removed=removed, skipped=skipped, docs_in=docs_in, bytes_in=stats.counts["bytes_in"], enc=enc, dtype=dtype)
