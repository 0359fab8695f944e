"""The write stage: the staging files in uid order, duplicates dropped, cut into .npy shards (train and val),
every removed document listed in removed.parquet/ with its reason, the document it duplicates (or for
filter:contamination the evaluation example it matched) and its
source, and every kept one in docs.parquet/ with where it went. Ray tasks over groups of consecutive staging
files, in four steps, so that nothing scales with the corpus in one process:

  count     per group: kept documents and tokens per split, removed rows, the stage's counts
  windows   per group: the shard windows its documents start in (pipelines/layout.py)
  pieces    per group: its documents' tokens cut at shard boundaries, its table rows cut at part boundaries
            (_work/pieces/)
  assemble  per shard: its pieces in group order -> .npy, .idx.npy (+ .mask.npy) and sha256; per table part:
            its pieces -> one parquet file

Where each document goes is decided from counts alone (pipelines/layout.py), so the bytes do not depend on
the grouping, the number of nodes or CPUs, or the order tasks finish in. The driver holds counts per group
and one entry per shard, never anything per document. Every task writes to temporary names and renames, so
a task redone after a lost node leaves the same files, once. The manifest comes after (pipelines/run.py)."""

from __future__ import annotations

from collections import Counter

import fsspec
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.dataset as pads
import pyarrow.parquet as pq
import ray

from raylm.core.io import atomic_open
from raylm.core.paths import DOCS, REMOVED, TOKENIZER, WORK
from raylm.core.progress import Live
from raylm.core.shards import index_path, mask_path, npy_from_raw, save_index, shard_path, token_dtype
from raylm.core.tokenizer import copy_tokenizer, load_encoding
from raylm.pipelines import layout
from raylm.pipelines.dedup import source_rank
from raylm.pipelines.layout import SPLIT_NAMES, SPLITS, Counts, ShardMap, Start
from raylm.pipelines.process import COLUMNS
from raylm.pipelines.shards import token_arrays
from raylm.pipelines.stage import Column, DataRun, Stage, gather, schema_of
from raylm.pipelines.staging import SKIP, final_mask, groups_of
from raylm.pipelines.stats import Stats

# removed.parquet: every removed document, its reason, the document it duplicates (or example it matched), its
# source, then the steps' columns that explain a removal (Column.removed: a quality score)
REMOVED_COLUMNS = tuple(c for c in COLUMNS if c.removed)
REMOVED_SCHEMA = schema_of(
    [("id", pa.string()), ("reason", pa.string()), ("kept_id", pa.string()), ("src", pa.string()), *((c.name, c.type) for c in REMOVED_COLUMNS)]
)
# docs.parquet: every kept document, in input order: the shard it is in (which names its split) and its index
# there, where it came from (file:line, web input's URL and crawl date), then the steps' own columns
DOCS_BASE = (("id", pa.string()), ("shard", pa.string()), ("index", pa.int64()), ("src", pa.string()), ("url", pa.string()), ("date", pa.string()))


def docs_schema(columns: tuple[Column, ...]) -> pa.Schema:
    """docs.parquet's columns: DOCS_BASE, then those of the steps' `columns` a kept document has (Column.docs)."""
    return schema_of([*DOCS_BASE, *((c.name, c.type) for c in columns if c.docs)])


DOCS_SCHEMA = docs_schema(COLUMNS)
TABLES = {REMOVED: REMOVED_SCHEMA, DOCS: DOCS_SCHEMA}
ROWS_PER_PART = 1 << 20  # rows of each removed.parquet/ and docs.parquet/ part file (16 row groups)
PIECES = f"{WORK}/pieces"


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


def removed_rows(t: pa.Table, mask: np.ndarray, dups: dict) -> tuple[pa.Table, Counter, Counter]:
    """The removed rows of one staging table (filters and rejects from processing, duplicates from dedup),
    and their counts by reason. Skipped records (no documents: skip:...) are counted apart, never listed."""
    status, ids, srcs, uids = t["status"].to_pylist(), t["id"].to_pylist(), t["src"].to_pylist(), t["uid"].to_pylist()
    # decontamination: the evaluation example (file:line) a filter:contamination row matched, in kept_id
    matches = t["match"].to_pylist() if "match" in t.column_names else [None] * len(status)
    extra = {c.name: t[c.name].to_pylist() if c.name in t.column_names else [None] * len(status) for c in REMOVED_COLUMNS}
    rows: dict[str, list] = {"id": [], "reason": [], "kept_id": [], "src": [], **{name: [] for name in extra}}
    counts, skipped = Counter(), Counter()
    for i in np.flatnonzero(~mask):
        if status[i].startswith(SKIP):
            skipped[status[i]] += 1
            continue
        reason, kept_id = dups.get(uids[i], (status[i], matches[i]))
        rows["id"].append(ids[i])
        rows["reason"].append(reason)
        rows["kept_id"].append(kept_id)
        rows["src"].append(srcs[i])
        for name, values in extra.items():
            rows[name].append(values[i])
        counts[reason] += 1
    return pa.table(rows, schema=REMOVED_SCHEMA), counts, skipped


class _Dups:
    """The duplicates among one group's uids, read once per task (a scan of the dedup output), looked up per file."""

    def __init__(self, dups_dir: str | None, group: list[dict]):
        self.uid, self.reason, self.kept_id = np.zeros(0, np.int64), [], []
        if dups_dir is not None:
            f = (pads.field("uid") >= group[0]["first_uid"]) & (pads.field("uid") <= group[-1]["last_uid"])
            t = pads.dataset(dups_dir, format="parquet").to_table(filter=f, columns=["uid", "reason", "kept_id"]).sort_by("uid")
            self.uid, self.reason, self.kept_id = t["uid"].to_numpy(), t["reason"].to_pylist(), t["kept_id"].to_pylist()

    def of(self, s: dict) -> dict[int, tuple[str, str]]:
        """uid -> (reason, kept_id) of the duplicates in one staging file."""
        lo, hi = np.searchsorted(self.uid, [s["first_uid"], s["last_uid"] + 1])
        return {int(u): (self.reason[i], self.kept_id[i]) for i, u in zip(range(lo, hi), self.uid[lo:hi])}


def source_of(s: dict, source_starts: tuple[int, ...]) -> int:
    """The source rank of a staging file (one input block: one file, so one source)."""
    first, last = source_rank(np.array([s["first_uid"], s["last_uid"]]), source_starts)
    if first != last:  # a block never spans files (pipelines/read.py): a bug, not an input problem
        raise AssertionError(f"{s['path']} holds documents of two sources")
    return int(first)


def _view(s: dict, dups: dict, job: dict, cols: tuple[str, ...] = ()) -> tuple[pa.Table, np.ndarray, np.ndarray, np.ndarray]:
    """A staging file's columns, which rows are kept, and the kept documents' streams and token counts
    (from its `.tokens`, which holds the kept documents only)."""
    t = pq.read_table(s["path"], columns=list(dict.fromkeys(("uid", "status", "split", *cols))))
    mask = final_mask(t, dups)
    lengths = pq.read_table(s["path"] + ".tokens", columns=["ntokens"])["ntokens"]
    stream = layout.stream_of(t["split"].to_numpy()[mask], source_of(s, job["source_starts"]))
    return t, mask, stream, lengths.to_numpy().astype(np.int64)


def _no_counts() -> dict:
    """A source's counts before any staging file: records and bytes read, removals and skips by reason."""
    return {"records_in": 0, "bytes_in": 0, "removed": Counter(), "skipped": Counter()}


@ray.remote
def _count(group: list[dict], job: dict) -> tuple[Counts, dict]:
    """Per stream: kept documents, tokens and text bytes; per source: records, bytes, removals and skips."""
    n = len(job["streams"])
    dups, docs, tokens, text_bytes = _Dups(job["dups_dir"], group), [0] * n, [0] * n, [0] * n
    per: dict[int, dict] = {}
    for s in group:
        d = dups.of(s)
        t, mask, stream, lengths = _view(s, d, job, ("id", "src", "nbytes", "text_bytes"))
        _, r, k = removed_rows(t, mask, d)
        src = per.setdefault(source_of(s, job["source_starts"]), _no_counts())
        src["removed"].update(r)
        src["skipped"].update(k)
        kept_bytes = t["text_bytes"].to_numpy()[mask]
        for sp in np.unique(stream):
            docs[sp] += int((stream == sp).sum())
            tokens[sp] += int(lengths[stream == sp].sum())
            text_bytes[sp] += int(kept_bytes[stream == sp].sum())
        src["records_in"] += t.num_rows
        src["bytes_in"] += int(pc.sum(t["nbytes"]).as_py() or 0)
    counts = Counts(tuple(docs), tuple(tokens), sum(sum(c["removed"].values()) for c in per.values()))
    return counts, {"sources": per, "text_bytes": text_bytes}


@ray.remote
def _windows(group: list[dict], job: dict, start: Start) -> dict:
    """For each stream: the windows the group's documents start in, and the ordinal of the first one in each."""
    dups, token, ordinal = _Dups(job["dups_dir"], group), list(start.token), list(start.ordinal)
    found: dict[int, list] = {sp: [] for sp in range(len(job["streams"]))}
    for s in group:
        _, _, stream, lengths = _view(s, dups.of(s), job)
        for sp in np.unique(stream):
            n = lengths[stream == sp]
            found[sp].append(layout.firsts(layout.windows(n, token[sp], job["shard_tokens"]), ordinal[sp]))
            token[sp], ordinal[sp] = token[sp] + int(n.sum()), ordinal[sp] + len(n)
    empty = (np.zeros(0, np.int64), np.zeros(0, np.int64))
    return {sp: (np.concatenate([w for w, _ in f]), np.concatenate([o for _, o in f])) if f else empty for sp, f in found.items()}


class _ShardPieces:
    """One group's share of each shard it touches (_work/pieces/<stream>/<shard>/<group>): raw tokens
    (and loss mask) appended as they come, and the documents' lengths. A group meets a stream's shards
    in increasing order, so one piece per stream is open at a time."""

    def __init__(self, root: str, g: int, masks: bool, shard_tokens: int, dtype: np.dtype):
        self.fs, _ = fsspec.core.url_to_fs(root)
        self.root, self.g, self.masks, self.shard_tokens, self.dtype = root, g, masks, shard_tokens, dtype
        self.open: dict[int, tuple] = {}  # stream -> (shard, token file, mask file, lengths)
        self.made: dict[tuple[int, int], str] = {}  # (stream, shard) -> piece path (without suffix)

    def add(self, sp: int, shard: int, tokens: np.ndarray, lengths: np.ndarray, mask: np.ndarray | None) -> None:
        if sp in self.open and self.open[sp][0] != shard:
            self._close(sp)
        if sp not in self.open:
            base = f"{self.root}/{PIECES}/s{sp:04d}/{shard:06d}/{self.g:06d}"
            self.fs.makedirs(base.rsplit("/", 1)[0], exist_ok=True)
            self.made[(sp, shard)] = base
            self.open[sp] = (shard, self.fs.open(base + ".tok", "wb"), self.fs.open(base + ".mask", "wb") if self.masks else None, [])
        _, tok, msk, lens = self.open[sp]
        tok.write(tokens.astype(self.dtype).tobytes())
        if msk is not None:
            msk.write(np.ascontiguousarray(mask, dtype=np.uint8).tobytes())
        lens.append(lengths)

    def _close(self, sp: int) -> None:
        shard, tok, msk, lens = self.open.pop(sp)
        tok.close()
        if msk is not None:
            msk.close()
        with self.fs.open(self.made[(sp, shard)] + ".len.npy", "wb") as f:
            np.save(f, np.concatenate(lens).astype(np.int64), allow_pickle=False)

    def close(self) -> dict[tuple[int, int], str]:
        for sp in list(self.open):
            self._close(sp)
        return self.made


class _TablePieces:
    """One group's rows of a table (removed.parquet or docs.parquet), cut at part boundaries: one piece
    (_work/pieces/<table>/<part>/<group>.parquet) per part it touches."""

    def __init__(self, root: str, table: str, g: int, row_start: int, rows_per_part: int):
        self.fs, _ = fsspec.core.url_to_fs(root)
        self.root, self.table, self.g, self.row, self.per = root, table, g, row_start, rows_per_part
        self.part, self.writer, self.made = None, None, []

    def write(self, t: pa.Table) -> None:
        for j, sl in layout.parts(self.row, t.num_rows, self.per):
            if j != self.part:
                self._close()
                path = f"{self.root}/{PIECES}/{self.table}/{j:06d}/{self.g:06d}.parquet"
                self.fs.makedirs(path.rsplit("/", 1)[0], exist_ok=True)
                self.part, self.fh = j, self.fs.open(path, "wb")
                self.writer = pq.ParquetWriter(self.fh, TABLES[self.table])
                self.made.append(j)
            self.writer.write_table(t.slice(sl.start, sl.stop - sl.start))
        self.row += t.num_rows

    def _close(self) -> None:
        if self.writer is not None:
            self.writer.close()
            self.fh.close()
            self.writer = None

    def close(self) -> list[int]:
        self._close()
        return self.made


def docs_rows(t: pa.Table, mask: np.ndarray, shard: np.ndarray, index: np.ndarray, schema: pa.Schema = DOCS_SCHEMA) -> pa.Table:
    """docs.parquet rows of one staging file's kept documents: where each went, and the staging file's own
    columns of the schema (where each came from, the steps' columns)."""
    kept = t.filter(pa.array(mask))
    cols = {"id": kept["id"], "shard": pa.array(shard.tolist(), pa.string()), "index": pa.array(index)}
    return pa.table({**cols, **{k: kept[k] for k in schema.names if k not in cols}}, schema=schema)


def _place(
    pieces: _ShardPieces, maps: dict[int, ShardMap], stream: np.ndarray, tokens: pa.Array, flat_mask: np.ndarray | None, at: dict, names: list[str]
) -> tuple:
    """Cuts one staging file's kept documents at shard boundaries into the group's pieces; returns each
    document's shard path and index there. `at` holds each stream's next global token and ordinal."""
    flat, lengths = token_arrays(tokens)
    shard_of, index = np.empty(len(stream), dtype=object), np.zeros(len(stream), dtype=np.int64)
    for sp in np.unique(stream):
        docs, m = np.flatnonzero(stream == sp), maps[sp]
        n, index[docs] = m.place(layout.windows(lengths[docs], at[sp][0], pieces.shard_tokens), at[sp][1] + np.arange(len(docs)))
        shard_of[docs] = [shard_path(names[sp], int(k)) for k in n]
        for k in np.unique(n):  # each shard's documents of this stream, in order
            sel = np.zeros(len(stream), bool)
            sel[docs[n == k]] = True
            spans = np.repeat(sel, lengths)
            pieces.add(sp, int(k), flat[spans], lengths[sel], None if flat_mask is None else flat_mask[spans])
        at[sp] = (at[sp][0] + int(lengths[docs].sum()), at[sp][1] + len(docs))
    return shard_of, index


@ray.remote
def _pieces(g: int, group: list[dict], job: dict, start: Start, maps: dict) -> dict:
    """One group's share of every output: shard pieces and table pieces (see the module's docstring)."""
    root, masks = job["root"], job["masks"]
    dups, at = _Dups(job["dups_dir"], group), {sp: (start.token[sp], start.ordinal[sp]) for sp in range(len(job["streams"]))}
    shards = _ShardPieces(root, g, masks, job["shard_tokens"], job["dtype"])
    removed = _TablePieces(root, REMOVED, g, start.removed, job["rows_per_part"])
    docs = _TablePieces(root, DOCS, g, start.kept, job["rows_per_part"])
    cols = ("id", "src", "url", "date", *(c.name for c in COLUMNS))
    for s in group:
        d = dups.of(s)
        t, mask, stream, _ = _view(s, d, job, cols)
        removed.write(removed_rows(t, mask, d)[0])
        tok = pq.read_table(s["path"] + ".tokens", columns=["tokens", *(["mask"] if masks else [])])
        tokens, flat_mask = tok["tokens"], token_arrays(tok["mask"], np.uint8)[0] if masks else None
        shard_of, index = _place(shards, maps, stream, tokens, flat_mask, at, job["streams"])
        docs.write(docs_rows(t, mask, shard_of, index))
    return {"shards": shards.close(), REMOVED: removed.close(), DOCS: docs.close()}


@ray.remote
def _assemble_shard(root: str, path: str, bases: list[str], dtype: np.dtype, masks: bool) -> dict:
    """One shard from its pieces, in group order: the .npy (its sha256 for the manifest), .idx.npy, .mask.npy."""
    fs, _ = fsspec.core.url_to_fs(root)
    lengths = []
    for b in bases:
        with fs.open(b + ".len.npy", "rb") as f:
            lengths.append(np.load(f))
    lengths = np.concatenate(lengths)
    n = int(lengths.sum())
    entry = {"path": path, "tokens": n, "docs": len(lengths), "sha256": npy_from_raw(fs, f"{root}/{path}", dtype, n, [b + ".tok" for b in bases])}
    if masks:
        entry["mask_sha256"] = npy_from_raw(fs, mask_path(f"{root}/{path}"), np.dtype(np.uint8), n, [b + ".mask" for b in bases])
    save_index(index_path(f"{root}/{path}"), lengths)
    return entry


@ray.remote
def _assemble_part(dest: str, sources: list[str], schema: pa.Schema) -> int:
    """One part of removed.parquet/ or docs.parquet/ from its pieces, in group order, in fixed row groups."""
    fs, _ = fsspec.core.url_to_fs(dest)
    rows = 0
    with atomic_open(dest) as fh, pq.ParquetWriter(fh, schema) as w:
        fixed = FixedRowGroups(w)
        for src in sources:
            with fs.open(src, "rb") as f:
                t = pq.read_table(f)
            fixed.write(t)
            rows += t.num_rows
        fixed.close()
    return rows


def _gather(refs: list, desc: str) -> list:
    """The tasks' results, in order, with a progress bar (on a terminal) as they finish."""
    live, pending = Live(f"[raylm data] write: {desc}", total=len(refs), every_s=None), list(refs)
    try:
        while pending:
            done, pending = ray.wait(pending, num_returns=1)
            live.status(f"{len(refs) - len(pending)}/{len(refs)} tasks", completed=len(refs) - len(pending))
    finally:
        live.close()
    return gather(refs)


class Write(Stage):
    name = "write"
    reads = ("_work/docs/*.parquet", "_work/docs/*.parquet.tokens", "_work/dups/part-*.parquet")
    writes = ("train/shard-*.npy", "val/shard-*.npy", f"{REMOVED}/part-*.parquet", f"{DOCS}/part-*.parquet")

    def run(self, run: DataRun, stats: Stats) -> None:
        data, root, tok = run.data, run.root, run.tokenizer
        if tok.path is not None and not run.trains_tokenizer:  # the run stays self-contained: the tokenizer travels with the shards
            copy_tokenizer(tok.path, f"{root}/{TOKENIZER}")
        enc = load_encoding(tok)
        dtype, groups = token_dtype(enc.n_vocab), groups_of(run.staging, 4 * run.workers)
        job = dict(root=root, masks=data.has_tasks, dtype=dtype, rows_per_part=ROWS_PER_PART)
        job.update(dups_dir=run.dups_dir if run.dups is not None else None, shard_tokens=data.output.shard_tokens)
        job.update(streams=layout.streams(data.source_names), source_starts=run.source_starts)
        with stats.timer("count"):
            counted = _gather([_count.remote(g, job) for g in groups], "count")
        begins = layout.starts([c for c, _ in counted])
        with stats.timer("windows"):
            found = _gather([_windows.remote(g, job, b) for g, b in zip(groups, begins)], "windows")
        maps = ray.put({sp: ShardMap.merge([f[sp] for f in found]) for sp in range(len(job["streams"]))})
        with stats.timer("pieces"):
            made = _gather([_pieces.remote(i, g, job, b, maps) for i, (g, b) in enumerate(zip(groups, begins))], "pieces")
        with stats.timer("assemble"):
            # the bytes the streams' tokens decode to (end-of-text tokens: none), from the count tasks
            text_bytes = [sum(c["text_bytes"][sp] for _, c in counted) for sp in range(len(job["streams"]))]
            streams = self._assemble(root, made, job, text_bytes)
        per_source = _source_counts([c["sources"] for _, c in counted], streams, data)
        removed, skipped = sum((c["removed"] for c in per_source), Counter()), sum((c["skipped"] for c in per_source), Counter())
        stats.counts.update(records_in=sum(c["records_in"] for c in per_source), bytes_in=sum(c["bytes_in"] for c in per_source))
        docs_in = stats.counts["records_in"] - sum(skipped.values())
        splits = layout_splits(streams, data.source_names)
        kept, shards = sum(sp["docs"] for sp in splits.values()), sum(len(sp["shards"]) for sp in splits.values())
        stats.counts.update(docs_in=docs_in, docs_kept=kept, shards=shards, groups=len(groups))
        run.say(f"write: {shards} shard(s) from {len(groups)} group(s) of staging files; {kept:,} of {docs_in:,} documents kept")
        run.outputs = dict(splits=splits, removed=removed, skipped=skipped, docs_in=docs_in, bytes_in=stats.counts["bytes_in"], enc=enc, dtype=dtype)
        if data.sources:
            run.outputs["sources"] = {name: {"weight": spec.weight, **_source_entry(c)} for (name, spec), c in zip(data.sources.items(), per_source)}

    @staticmethod
    def _assemble(root: str, made: list[dict], job: dict, text_bytes: list[int]) -> list[dict]:
        """Every shard and table part from the groups' pieces; each stream's manifest entry."""
        by_shard: dict[tuple[int, int], list[str]] = {}
        by_part: dict[tuple[str, int], list[str]] = {}
        for g, m in enumerate(made):  # groups in order: a shard's pieces concatenate in input order
            for key, base in sorted(m["shards"].items()):
                by_shard.setdefault(key, []).append(base)
            for table in TABLES:
                for j in m[table]:
                    by_part.setdefault((table, j), []).append(f"{root}/{PIECES}/{table}/{j:06d}/{g:06d}.parquet")
        fs, _ = fsspec.core.url_to_fs(root)
        for name in job["streams"]:
            fs.makedirs(f"{root}/{name}", exist_ok=True)
        shard_refs = {}
        for (sp, n), bases in sorted(by_shard.items()):
            shard_refs[(sp, n)] = _assemble_shard.remote(root, shard_path(job["streams"][sp], n), bases, job["dtype"], job["masks"])
        part_refs = []
        for table, schema in TABLES.items():
            fs.makedirs(f"{root}/{table}", exist_ok=True)
            for j in range(max([k for t, k in by_part if t == table], default=0) + 1):  # an empty table is one empty part
                part_refs.append(_assemble_part.remote(f"{root}/{table}/part-{j:06d}.parquet", by_part.get((table, j), []), schema))
        done = _gather(list(shard_refs.values()) + part_refs, "assemble")
        entries = dict(zip(shard_refs, done[: len(shard_refs)]))
        out = []
        for sp in range(len(job["streams"])):
            shards = [entries[key] for key in sorted(entries) if key[0] == sp]
            tokens, docs = sum(s["tokens"] for s in shards), sum(s["docs"] for s in shards)
            out.append({"tokens": tokens, "bytes": text_bytes[sp], "docs": docs, "shards": shards})
        return out


def layout_splits(streams: list[dict], sources: list[str]) -> dict:
    """The manifest's splits from the streams' entries: as they are without sources; with sources, each
    split sums its sources' and lists all their shards, source after source, with `sources.<name>` apart."""
    if not sources:
        return {SPLIT_NAMES[sp]: streams[sp] for sp in SPLITS}
    out = {}
    for sp in SPLITS:
        per = {name: streams[sp + len(SPLITS) * k] for k, name in enumerate(sources)}
        total = {key: sum(e[key] for e in per.values()) for key in ("tokens", "bytes", "docs")}
        out[SPLIT_NAMES[sp]] = {**total, "shards": [s for e in per.values() for s in e["shards"]], "sources": per}
    return out


def _source_counts(found: list[dict], streams: list[dict], data) -> list[dict]:
    """Per source (in listed order): records, bytes, removals and skips summed over the count tasks, and its
    kept documents and tokens from its streams."""
    n = max(1, len(data.sources))
    out = [_no_counts() for _ in range(n)]
    for per in found:
        for k, c in per.items():
            for key in ("records_in", "bytes_in"):
                out[k][key] += c[key]
            out[k]["removed"].update(c["removed"])
            out[k]["skipped"].update(c["skipped"])
    for k, c in enumerate(out):
        mine = streams[len(SPLITS) * k : len(SPLITS) * (k + 1)]
        c["docs_kept"], c["tokens"] = sum(e["docs"] for e in mine), sum(e["tokens"] for e in mine)
    return out


def _source_entry(c: dict) -> dict:
    """A source's counts as the manifest's `sources.<name>` holds them (besides its weight)."""
    docs_in = c["records_in"] - sum(c["skipped"].values())
    return {
        "records_in": c["records_in"],
        "docs_in": docs_in,
        "docs_kept": c["docs_kept"],
        "removed": dict(sorted(c["removed"].items())),
        "skipped": dict(sorted(c["skipped"].items())),
        "bytes_in": c["bytes_in"],
        "tokens": c["tokens"],
    }
