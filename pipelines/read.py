"""Read raw text into blocks of documents: a Ray Data datasource, one read task per file.

Every line (jsonl), file (txt) or row (parquet) becomes one row: a document, or a reject with its
reason. Nothing is dropped here: bad input is passed on with `reject` set, so the stats can count it.
Rows carry `uid` = file_index << 32 | record (line or row), unique and ordered like the input, which fixes the
order of everything downstream.
"""

from __future__ import annotations

import json
import os
import stat
from collections.abc import Iterable, Iterator
from dataclasses import dataclass

import fsspec
import pyarrow as pa
import pyarrow.parquet as pq
from fsspec.core import url_to_fs
from ray.data.block import BlockMetadata
from ray.data.datasource import Datasource, ReadTask

from raylm.pipelines.config import WEB_FORMATS, ExecutionConfig, InputSpec, RejectConfig
from raylm.pipelines.jsonarray import ArrayItems, starts_array
from raylm.pipelines.stage import DataRun, Stage
from raylm.pipelines.stats import Stats
from raylm.pipelines.streams import Damaged, compression_of, decompressed, strip_compression
from raylm.pipelines.warc import WebRecord, frames, parse

SCHEMA = pa.schema(
    [
        ("uid", pa.int64()),
        ("id", pa.string()),
        ("src", pa.string()),  # path:line, for reports
        ("text", pa.large_string()),
        ("nbytes", pa.int64()),  # raw size, for bytes_in and MB/s
        ("reject", pa.string()),  # null, or the reason this input is not a document
        ("prompt_chars", pa.int64()),  # task records: text = prompt + completion, the prompt's length; else null
        # web input (WARC/WET): the page's URL and WARC-Date; WARC: the HTTP payload (text null until the
        # extract step) and the charset its Content-Type named
        ("url", pa.string()),
        ("date", pa.string()),
        ("payload", pa.large_binary()),
        ("charset", pa.string()),
    ]
)

_EXT = {".txt": "txt", ".jsonl": "jsonl", ".json": "jsonl", ".parquet": "parquet", ".wet": "wet", ".warc": "warc"}
_BINARY_SNIFF = 8192  # a text file with a NUL byte this early is binary


@dataclass(frozen=True)
class SourceFile:
    index: int
    path: str  # as fsspec names it, protocol included for remote files
    format: str
    spec: InputSpec
    name: str = ""  # as rows name it (src, default ids): relative to the working directory when the recipe's path is
    source: int = 0  # rank of its source in data.sources (0 for plain data.inputs)

    @property
    def shown(self) -> str:
        return self.name or self.path


def _is_glob(path: str) -> bool:
    return any(c in path for c in "*?[")


def _format_of(path: str, declared: str) -> str:
    compression_of(path)  # an archive kind that is not read is a recipe error, before Ray starts
    if declared != "auto":
        return declared
    name = strip_compression(path).lower()
    for ext, fmt in _EXT.items():
        if name.endswith(ext):
            return fmt
    raise ValueError(f"{path}: cannot tell the format from the extension; set format: txt|jsonl|parquet|warc|wet")


def _info(fs, path: str) -> dict | None:
    try:
        return fs.info(path)
    except FileNotFoundError:
        return None


def _not_regular(info: dict) -> str:
    """What a path that is neither a file nor a directory is (local file systems say "other")."""
    mode = info.get("mode") or 0
    kinds = ((stat.S_ISFIFO, "a FIFO"), (stat.S_ISSOCK, "a socket"), (stat.S_ISCHR, "a device"), (stat.S_ISBLK, "a device"))
    return next((what for test, what in kinds if test(mode)), "not a regular file")


def _matches(fs, pattern: str) -> list[str]:
    """The files a recipe's path or glob names, sorted; errors before Ray starts for a path that is a directory,
    a pattern that matches nothing, or a match that is no regular file (a FIFO would hang its read task: opening
    one waits for a writer)."""
    glob = _is_glob(pattern)
    try:
        found = {m: _info(fs, m) for m in fs.expand_path(pattern)}
    except FileNotFoundError:
        found = {}
    if not glob:  # expand_path returns a plain path as it is, whether it exists or not
        found = {m: i for m, i in found.items() if i is not None}
        if any(i["type"] == "directory" for i in found.values()):
            raise ValueError(f"data.inputs: {pattern!r} is a directory; give a glob of its files, such as {pattern.rstrip('/') + '/*.jsonl'!r}")
    matches = sorted(m for m, i in found.items() if i is None or i["type"] != "directory")  # a broken link is counted when read
    if not matches:
        what = "no files match" if glob else "no such file or directory"
        raise FileNotFoundError(f"data.inputs: {what}: {pattern!r}")
    odd = [(m, found[m]) for m in matches if found[m] is not None and found[m]["type"] != "file"]
    if odd:
        m, info = odd[0]
        via = f" (matched by {pattern!r}: narrow the glob)" if glob else ""
        raise ValueError(f"data.inputs: {m!r}{via} is {_not_regular(info)}, not a regular file: raylm reads regular files only")
    return matches


def list_files(inputs: list[tuple[int, InputSpec]]) -> list[SourceFile]:
    """Expand globs in order; a pattern matching nothing is an error, not an empty run. Each input comes with its
    source's rank (DataConfig.all_inputs): files are numbered source after source, so uid order is too."""
    files: list[SourceFile] = []
    for source, spec in inputs:
        fs, _ = url_to_fs(spec.path)
        proto = fs.protocol if isinstance(fs.protocol, str) else fs.protocol[0]
        local = proto in ("file", "local")
        for m in _matches(fs, spec.path):
            url = m if local else f"{proto}://{m}"
            # a relative path in the recipe stays relative in src and ids: the same rows wherever the job runs
            # (a submitted job works in a directory of its own)
            name = os.path.relpath(m) if local and not os.path.isabs(spec.path) else url
            files.append(SourceFile(len(files), url, _format_of(m, spec.format), spec, name, source))
    return files


class _Rows:
    """Accumulates rows and cuts them into blocks by count or bytes."""

    def __init__(self, execution: ExecutionConfig):
        self.cols: dict[str, list] = {f.name: [] for f in SCHEMA}
        self.bytes = 0
        self.execution = execution

    def add(
        self, uid: int, id_: str, src: str, text: str | None, nbytes: int, reject: str | None, prompt_chars: int | None, web: WebRecord | None = None
    ) -> None:
        c = self.cols
        c["uid"].append(uid)
        c["id"].append(id_)
        c["src"].append(src)
        c["text"].append(text)
        c["nbytes"].append(nbytes)
        c["reject"].append(reject)
        c["prompt_chars"].append(prompt_chars if reject is None else None)
        for k in ("url", "date", "payload", "charset"):
            c[k].append(None if web is None else getattr(web, k))
        self.bytes += nbytes

    def __len__(self) -> int:
        return len(self.cols["uid"])

    def full(self) -> bool:
        return len(self) >= self.execution.batch_docs or self.bytes >= self.execution.batch_bytes

    def take(self) -> pa.Table:
        try:
            t = pa.table(self.cols, schema=SCHEMA)
        except (UnicodeEncodeError, pa.ArrowException):
            t = pa.table(_unicode_rejected(self.cols), schema=SCHEMA)
        self.cols = {f.name: [] for f in SCHEMA}
        self.bytes = 0
        return t


def _encodable(s: str | None) -> bool:
    if s is None:
        return True
    try:
        s.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def _printable(path: str) -> str:
    """A path as valid Unicode for the rows' src and ids: undecodable bytes of a file name (which Python holds
    as surrogate escapes) as \\x.. escapes."""
    try:
        return path.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")
    except UnicodeEncodeError:
        return path.encode("utf-8", "backslashreplace").decode("utf-8")


def _unicode_rejected(cols: dict[str, list]) -> dict[str, list]:
    """The block with each row whose strings are not valid Unicode (a lone surrogate from a JSON escape
    such as "\\ud800", which Arrow cannot encode) rejected as invalid_unicode: one such record costs itself only."""
    out = {k: list(v) for k, v in cols.items()}
    for i in range(len(out["uid"])):
        if all(_encodable(out[k][i]) for k in ("id", "src", "text")):
            continue
        for k in ("id", "src"):
            out[k][i] = out[k][i].encode("utf-8", "backslashreplace").decode("utf-8")
        out["text"][i], out["reject"][i], out["prompt_chars"][i] = None, "invalid_unicode", None
    return out


def _decode(raw: bytes) -> tuple[str | None, str | None]:
    try:
        return raw.decode("utf-8"), None
    except UnicodeDecodeError:
        return None, "invalid_utf8"


def _record_text(rec: dict, spec: InputSpec) -> tuple[str | None, str | None, int | None]:
    """(text, reject reason, prompt_chars) of one record: its text field, or prompt + completion."""
    fields = ((spec.prompt_field, "prompt"), (spec.completion_field, "completion")) if spec.is_task else ((spec.text_field, "text"),)
    parts = []
    for field, what in fields:
        value = rec.get(field)
        if value is _INVALID:
            return None, "invalid_utf8", None
        if value is None:
            return None, f"missing_{what}", None
        if not isinstance(value, str):
            return None, f"non_string_{what}", None
        parts.append(value)
    if not spec.is_task:
        return parts[0], None, None
    if not parts[1].strip():
        return None, "empty_completion", None
    return parts[0] + parts[1], None, len(parts[0])


class _Invalid:
    """Stands for a Parquet string value that is not valid UTF-8 (Parquet readers do not validate)."""


_INVALID = _Invalid()


def _json_record(line: bytes, spec: InputSpec) -> tuple[str | None, str | None, str | None, int | None]:
    """(text, id, reject reason, prompt_chars) of one JSON line."""
    if b"\x00" in line:  # a raw NUL is never valid JSON: binary data inside a text file
        return None, None, "binary", None
    s, bad = _decode(line)
    if bad:
        return None, None, bad, None
    try:
        obj = json.loads(s)
    except (ValueError, RecursionError):  # RecursionError: absurdly deep nesting
        return None, None, "malformed_json", None
    if not isinstance(obj, dict):
        return None, None, "malformed_json", None
    doc_id = obj.get(spec.id_field) if spec.id_field else None
    doc_id = None if doc_id is None else str(doc_id)
    text, why, prompt_chars = _record_text(obj, spec)
    return text, doc_id, why, prompt_chars


class _FileRows:
    """The rows of one file: their numbering (uid, src: path:record) and the rejects every format shares."""

    def __init__(self, sf: SourceFile, execution: ExecutionConfig, reject: RejectConfig):
        self.rows, self.reject, self.base = _Rows(execution), reject, sf.index << 32
        self.path = _printable(sf.shown)
        self.record = 0  # 0-based number of the next record: line of a jsonl file, row of a parquet file

    def add(self, text: str | None, doc_id: str | None, nbytes: int, why: str | None, prompt_chars: int | None = None) -> None:
        src = f"{self.path}:{self.record + 1}"
        if why is None:
            if nbytes > self.reject.max_bytes:
                text, why = None, "too_large"
            elif not text or not text.strip():
                text, why = None, "empty"
        self.rows.add(self.base | self.record, doc_id if doc_id is not None else src, src, text, nbytes, why, prompt_chars)

    def add_web(self, w: WebRecord, text: str | None = None) -> None:
        """One WARC/WET record: src is file:offset (in the decompressed stream), the id its WARC-Record-ID."""
        src = f"{self.path}:{w.offset}"
        why = w.reason
        if why is None and w.payload is None and not (text or "").strip():
            why = "empty"
        keep = why is None
        self.rows.add(self.base | self.record, w.id or src, src, text if keep else None, w.size, why, None, w if keep else None)
        self.record += 1

    def blocks(self, final: bool = False) -> Iterator[pa.Table]:
        if self.rows.full() or (final and len(self.rows)):
            yield self.rows.take()


def _lines(stream: Iterable[bytes], max_bytes: int) -> Iterator[tuple[bytes | None, int]]:
    """(line, size) for each line of a byte stream, without its "\\n"; a line longer than max_bytes comes as
    (None, size) and is never held whole. A last line without "\\n" comes too."""
    pending, skipping = b"", None
    for chunk in stream:
        start = 0
        while (end := chunk.find(b"\n", start)) >= 0:
            if skipping is not None:
                yield None, skipping + end - start
                skipping = None
            else:
                yield pending + chunk[start:end], len(pending) + end - start
                pending = b""
            start = end + 1
        rest = len(chunk) - start
        if skipping is not None:
            skipping += rest
        elif len(pending) + rest > max_bytes:
            skipping, pending = len(pending) + rest, b""
        else:
            pending += chunk[start:]
    if skipping is not None:
        yield None, skipping
    elif pending:
        yield pending, len(pending)


_BOM = b"\xef\xbb\xbf"


def _read_jsonl(sf: SourceFile, out: _FileRows, stream: Iterable[bytes]) -> Iterator[pa.Table]:
    for line, size in _lines(stream, out.reject.max_bytes):
        if line is None:
            out.add(None, None, size, "too_large")
        else:
            line = line[3:] if line.startswith(_BOM) else line  # at the start of a file, or of a `cat`ed one
            if line.strip():  # blank lines (\n, \r\n) are no records
                text, doc_id, why, prompt_chars = _json_record(line, sf.spec)
                out.add(text, doc_id, size, why, prompt_chars)
        out.record += 1
        yield from out.blocks()


def _read_json_array(sf: SourceFile, out: _FileRows, stream: Iterable[bytes]) -> Iterator[pa.Table]:
    """A `.json` file holding one JSON array: each element is a record (src file:element, from 1), parsed on its
    own as a JSON Lines line is; bytes after the array are one malformed_json row (pipelines/jsonarray.py)."""
    items = ArrayItems(out.reject.max_bytes)

    def add(found: Iterator) -> Iterator[pa.Table]:
        for raw, size, why in found:
            if why is None and raw is None:
                why = "too_large"
            text, doc_id, why, prompt_chars = (None, None, why, None) if why else _json_record(raw, sf.spec)
            out.add(text, doc_id, size, why, prompt_chars)
            out.record += 1
            yield from out.blocks()

    for chunk in stream:
        yield from add(items.feed(chunk))
    yield from add(items.end())


def _is_json_array(sf: SourceFile, stream: Iterable[bytes]) -> tuple[bool, Iterable[bytes]]:
    """Whether a jsonl-format file is a `.json` file holding a JSON array (its first byte `[`); the stream whole again.
    A `.jsonl` name is JSON Lines whatever it holds."""
    if sf.format != "jsonl" or not strip_compression(sf.path).lower().endswith(".json"):
        return False, stream
    return starts_array(stream)


def _read_txt(sf: SourceFile, out: _FileRows, stream: Iterable[bytes]) -> Iterator[pa.Table]:
    """A text file is one document: it is kept or rejected whole."""
    parts, size = [], 0
    for chunk in stream:
        size += len(chunk)
        if size <= out.reject.max_bytes:
            parts.append(chunk)
    raw = b"".join(parts)
    raw = raw[3:] if raw.startswith(_BOM) else raw
    if size > out.reject.max_bytes:
        out.add(None, None, size, "too_large")
    elif b"\x00" in raw[:_BINARY_SNIFF]:
        out.add(None, None, size, "binary")
    else:
        text, bad = _decode(raw)
        out.add(text, None, size, bad)
    yield from ()


class _Segment:
    """The stream's bytes up to its next Damaged marker (a corrupt gzip member, see streams.members) or its end;
    `damage` is set when a marker or a raised Damaged ended it, `more` when the stream goes on after it."""

    def __init__(self, it: Iterator[bytes | Damaged]):
        self.it, self.damage, self.more, self.size = it, None, False, 0

    def __iter__(self) -> Iterator[bytes]:
        try:
            for x in self.it:
                if isinstance(x, Damaged):
                    self.damage, self.more = x.kind, True
                    return
                self.size += len(x)
                yield x
        except Damaged as e:
            self.damage = e.kind


def _read_web(sf: SourceFile, out: _FileRows, stream: Iterable[bytes | Damaged]) -> Iterator[pa.Table]:
    """A WARC or WET file, record by record (pipelines/warc.py); memory holds one record. Damage in the
    compressed stream ends a segment: the record it cut, or one row where it fell between records, is rejected
    with its kind, and a many-member gzip goes on at the next member (offsets then count the bytes read)."""
    it, base, more = iter(stream), 0, True
    while more:
        seg, cut = _Segment(it), False
        for f in frames(seg, out.reject.max_bytes, base):
            rec = parse(f, sf.format)
            text = None
            if sf.format == "wet" and rec.reason is None:  # a conversion record's payload is the text
                text, bad = _decode(rec.payload)
                rec.payload, rec.reason = None, bad
            cut = rec.reason == "warc_truncated"  # by the end of the segment: the file's, or the damage's
            if cut and seg.damage == "corrupt":
                rec.reason = "corrupt"
            out.add_web(rec, text)
            yield from out.blocks()
        if seg.damage and not cut:  # the damage fell between records
            out.add_web(WebRecord(base + seg.size, 0, reason=seg.damage))
        base, more = base + seg.size, seg.more


def _read_stream(sf: SourceFile, out: _FileRows) -> Iterator[pa.Table]:
    if sf.format in WEB_FORMATS:
        with fsspec.open(sf.path, "rb") as f:
            yield from _read_web(sf, out, decompressed(f, compression_of(sf.path), resync=True))
        return
    reader = _read_txt if sf.format == "txt" else _read_jsonl
    with fsspec.open(sf.path, "rb") as f:
        try:
            array, stream = _is_json_array(sf, decompressed(f, compression_of(sf.path)))
            yield from (_read_json_array if array else reader)(sf, out, stream)
        except Damaged as e:
            # every complete record before the damage is kept; the damaged tail is one reject row
            out.add(None, None, 0, e.kind)


def _values(col: pa.Array) -> list:
    """A column as Python values; string columns are decoded value by value, so that an invalid UTF-8
    value rejects its own row only."""
    if pa.types.is_string(col.type) or pa.types.is_large_string(col.type):
        raw = col.view(pa.binary() if pa.types.is_string(col.type) else pa.large_binary()).to_pylist()
        return [v if v is None else _text_or_invalid(v) for v in raw]
    return col.to_pylist()


def _text_or_invalid(raw: bytes):
    text, bad = _decode(raw)
    return _INVALID if bad else text


def _parquet_rows(pf: pq.ParquetFile, cols: list[str]) -> Iterator[dict | None]:
    """Each row as {column: value}; None for each row of a row group that cannot be decoded."""
    for g in range(pf.num_row_groups):
        done = 0
        try:
            for batch in pf.iter_batches(row_groups=[g], columns=cols, batch_size=1024):
                d = {name: _values(batch.column(name)) for name in cols}
                for i in range(batch.num_rows):
                    yield {k: v[i] for k, v in d.items()}
                done += batch.num_rows
        except (OSError, pa.ArrowException):  # a damaged row group costs its own rows, not the file's
            yield from (None for _ in range(pf.metadata.row_group(g).num_rows - done))


def _read_parquet(sf: SourceFile, out: _FileRows) -> Iterator[pa.Table]:
    spec = sf.spec
    with fsspec.open(sf.path, "rb") as f:
        pf = pq.ParquetFile(f)
        names = pf.schema_arrow.names
        fields = [spec.prompt_field, spec.completion_field] if spec.is_task else [spec.text_field]
        missing = [n for n in fields if n not in names]
        if missing:  # every row of the file is counted, each with its row number
            for _ in range(pf.metadata.num_rows):
                out.add(None, None, 0, f"missing_column:{missing[0]}")
                out.record += 1
                yield from out.blocks()
            return
        id_col = spec.id_field if spec.id_field and spec.id_field in names else None
        for row in _parquet_rows(pf, fields + ([id_col] if id_col else [])):
            if row is None:
                out.add(None, None, 0, "corrupt")
            else:
                doc_id = row.get(id_col) if id_col else None
                doc_id = None if doc_id is None or doc_id is _INVALID else str(doc_id)
                text, why, prompt_chars = _record_text(row, spec)
                out.add(text, doc_id, len(text.encode("utf-8", "surrogatepass")) if text is not None else 0, why, prompt_chars)
            out.record += 1
            yield from out.blocks()


def read_file(sf: SourceFile, execution: ExecutionConfig, reject: RejectConfig) -> Iterator[pa.Table]:
    """Stream one file as blocks of rows. Damage costs the damaged records only: it ends in a reject row,
    never an exception, and every complete record before it is kept."""
    out = _FileRows(sf, execution, reject)
    try:
        yield from (_read_parquet(sf, out) if sf.format == "parquet" else _read_stream(sf, out))
    except Exception as e:  # noqa: BLE001 - a file that cannot be opened or parsed at all is one reject, not fatal
        out.add(None, None, 0, "unreadable" if isinstance(e, (OSError, pa.ArrowException)) else f"unreadable:{type(e).__name__}")
    yield from out.blocks(final=True)


class TextFiles(Datasource):
    """Ray Data datasource over the recipe's inputs: one read task per file, streamed in blocks."""

    def __init__(self, files: list[SourceFile], execution: ExecutionConfig, reject: RejectConfig):
        self.files, self.execution, self.reject = files, execution, reject

    def estimate_inmemory_data_size(self) -> int | None:
        return None

    def get_read_tasks(self, parallelism: int, per_task_row_limit: int | None = None, data_context=None) -> list[ReadTask]:
        tasks = []
        for sf in self.files:
            meta = BlockMetadata(num_rows=None, size_bytes=None, exec_stats=None, input_files=(sf.path,))
            tasks.append(ReadTask(lambda sf=sf: read_file(sf, self.execution, self.reject), meta, schema=SCHEMA))
        return tasks


READ_FEEDS = 8  # processing tasks one read task keeps busy (measured: it decodes JSONL ~10x faster than a worker cleans and tokenizes it)


def readers(workers: int) -> int:
    """Read tasks at a time for `workers` processing tasks."""
    return -(-workers // READ_FEEDS)


class Read(Stage):
    """The recipe's inputs as a stream of records (a lazy Ray Dataset, one read task per file): nothing is
    read until the process stage pulls blocks, so memory stays bounded whatever the corpus size."""

    name = "read"
    reads = ("data.inputs (the recipe's files, local or fsspec URLs)",)
    writes = ()

    def run(self, run: DataRun, stats: Stats) -> None:
        import ray.data as rd

        ex = run.data.execution
        run.files = list_files(run.data.all_inputs)
        run.say(f"{len(run.files)} input file(s)")
        ctx = rd.DataContext.get_current()
        # a block is one read task's rows, so one contiguous uid range of one file: the staging files
        # then concatenate in input order whatever the batching (see pipelines/process.py)
        ctx.target_max_block_size = ex.batch_bytes
        # a read task decodes a file ~10x faster than the processing tasks consume it, so it takes no CPU
        # slot (a slot reserved for it would idle a processing task: Ray Data then budgets the process step
        # below its CPUs) and one runs per READ_FEEDS workers (each extra one is a Python worker to start)
        run.records = rd.read_datasource(
            TextFiles(run.files, ex, run.data.reject), override_num_blocks=len(run.files), num_cpus=0, concurrency=readers(run.workers)
        )
        stats.counts["files"] = len(run.files)
