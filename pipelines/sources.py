"""Read raw text into blocks of documents: a Ray Data datasource, one read task per file.

Every line (jsonl), file (txt) or row (parquet) becomes one row: a document, or a reject with its
reason. Nothing is dropped here: bad input is passed on with `reject` set, so the stats can count it.
Rows carry `uid` = file_index << 32 | line, unique and ordered like the input, which fixes the
order of everything downstream.
"""
from __future__ import annotations

import json
import zlib
from dataclasses import dataclass
from typing import Iterator, Optional

import fsspec
import pyarrow as pa
import pyarrow.parquet as pq
from fsspec.core import url_to_fs
from ray.data.block import BlockMetadata
from ray.data.datasource import Datasource, ReadTask

from cluster.config import ExecutionConfig, InputSpec, RejectConfig

SCHEMA = pa.schema([
    ("uid", pa.int64()),
    ("id", pa.string()),
    ("src", pa.string()),  # path:line, for reports
    ("text", pa.large_string()),
    ("nbytes", pa.int64()),  # raw size, for bytes_in and MB/s
    ("reject", pa.string()),  # null, or the reason this input is not a document
    ("prompt_chars", pa.int64()),  # task records: text = prompt + completion, the prompt's length; else null
])

_EXT = {".txt": "txt", ".jsonl": "jsonl", ".json": "jsonl", ".parquet": "parquet"}
_BINARY_SNIFF = 8192


@dataclass(frozen=True)
class SourceFile:
    index: int
    path: str  # as fsspec names it, protocol included for remote files
    format: str
    spec: InputSpec


def _format_of(path: str, declared: str) -> str:
    if declared != "auto":
        return declared
    name = path.lower()
    for comp in (".gz", ".zst", ".zstd", ".bz2", ".xz"):
        if name.endswith(comp):
            name = name[: -len(comp)]
    for ext, fmt in _EXT.items():
        if name.endswith(ext):
            return fmt
    raise ValueError(f"{path}: cannot tell the format from the extension; set format: txt|jsonl|parquet")


def list_files(inputs: list[InputSpec]) -> list[SourceFile]:
    """Expand globs in order; a pattern matching nothing is an error, not an empty run."""
    files: list[SourceFile] = []
    for spec in inputs:
        fs, _ = url_to_fs(spec.path)
        try:
            matches = sorted(m for m in fs.expand_path(spec.path) if not fs.isdir(m))
        except FileNotFoundError:
            matches = []
        if not matches:
            raise FileNotFoundError(f"data.inputs: no files match {spec.path!r}")
        proto = fs.protocol if isinstance(fs.protocol, str) else fs.protocol[0]
        for m in matches:
            url = m if proto in ("file", "local") else f"{proto}://{m}"
            files.append(SourceFile(len(files), url, _format_of(m, spec.format), spec))
    return files


class _Rows:
    """Accumulates rows and cuts them into blocks by count or bytes."""

    def __init__(self, execution: ExecutionConfig):
        self.cols: dict[str, list] = {f.name: [] for f in SCHEMA}
        self.bytes = 0
        self.execution = execution

    def add(self, uid: int, id_: str, src: str, text: Optional[str], nbytes: int, reject: Optional[str],
            prompt_chars: Optional[int]) -> None:
        c = self.cols
        c["uid"].append(uid); c["id"].append(id_); c["src"].append(src)
        c["text"].append(text); c["nbytes"].append(nbytes); c["reject"].append(reject)
        c["prompt_chars"].append(prompt_chars if reject is None else None)
        self.bytes += nbytes

    def full(self) -> bool:
        return len(self.cols["uid"]) >= self.execution.batch_docs or self.bytes >= self.execution.batch_bytes

    def take(self) -> pa.Table:
        t = pa.table(self.cols, schema=SCHEMA)
        self.cols = {f.name: [] for f in SCHEMA}
        self.bytes = 0
        return t


def _decode(raw: bytes) -> tuple[Optional[str], Optional[str]]:
    try:
        return raw.decode("utf-8"), None
    except UnicodeDecodeError:
        return None, "invalid_utf8"


def _record_text(rec: dict, spec: InputSpec) -> tuple[Optional[str], Optional[str], Optional[int]]:
    """(text, reject reason, prompt_chars) of one record: its text field, or prompt + completion."""
    if not spec.is_task:
        text = rec.get(spec.text_field)
        if spec.text_field not in rec:
            return None, "missing_text", None
        return (text, None, None) if isinstance(text, str) else (None, "non_string_text", None)
    parts = []
    for field, what in ((spec.prompt_field, "prompt"), (spec.completion_field, "completion")):
        if field not in rec or rec[field] is None:
            return None, f"missing_{what}", None
        if not isinstance(rec[field], str):
            return None, f"non_string_{what}", None
        parts.append(rec[field])
    if not parts[1].strip():
        return None, "empty_completion", None
    return parts[0] + parts[1], None, len(parts[0])


def _doc_from_json(line: bytes, spec: InputSpec) -> tuple[Optional[str], Optional[str], Optional[str], Optional[int]]:
    """(text, id, reject reason, prompt_chars) of one JSON line."""
    s, bad = _decode(line)
    if bad:
        return None, None, bad, None
    try:
        obj = json.loads(s)
    except ValueError:
        return None, None, "malformed_json", None
    if not isinstance(obj, dict):
        return None, None, "malformed_json", None
    doc_id = obj.get(spec.id_field) if spec.id_field else None
    doc_id = None if doc_id is None else str(doc_id)
    text, why, prompt_chars = _record_text(obj, spec)
    return text, doc_id, why, prompt_chars


def _json_row(line: bytes, spec: InputSpec) -> tuple:
    """The arguments of read_file's add() for one JSON line."""
    text, doc_id, why, prompt_chars = _doc_from_json(line, spec)
    return text, doc_id, len(line), why, prompt_chars


def _read_errors() -> tuple[type[BaseException], ...]:
    errs: list[type[BaseException]] = [EOFError, zlib.error, OSError]
    try:
        import zstandard
        errs.append(zstandard.ZstdError)
    except ImportError:
        pass
    return tuple(errs)


def read_file(sf: SourceFile, execution: ExecutionConfig, reject: RejectConfig) -> Iterator[pa.Table]:
    """Stream one file as blocks; a truncated or binary file ends in a reject row, never an exception."""
    rows = _Rows(execution)
    base = sf.index << 32
    line_no = 0

    def add(text: Optional[str], doc_id: Optional[str], nbytes: int, why: Optional[str], prompt_chars: Optional[int] = None) -> None:
        src = f"{sf.path}:{line_no + 1}"
        if why is None:
            if nbytes > reject.max_bytes:
                text, why = None, "too_large"
            elif not text or not text.strip():
                text, why = None, "empty"
        rows.add(base | line_no, doc_id if doc_id is not None else src, src, text, nbytes, why, prompt_chars)

    try:
        if sf.format == "parquet":
            with fsspec.open(sf.path, "rb") as f:
                pf = pq.ParquetFile(f)
                spec = sf.spec
                fields = [spec.prompt_field, spec.completion_field] if spec.is_task else [spec.text_field]
                for name in fields:
                    if name not in pf.schema_arrow.names:
                        raise KeyError(name)
                cols = fields + ([spec.id_field] if spec.id_field and spec.id_field in pf.schema_arrow.names else [])
                for batch in pf.iter_batches(columns=cols, batch_size=1024):
                    d = batch.to_pydict()
                    ids = d.get(spec.id_field) if spec.id_field else None
                    for i in range(batch.num_rows):
                        doc_id = None if ids is None or ids[i] is None else str(ids[i])
                        text, why, prompt_chars = _record_text({k: d[k][i] for k in fields}, spec)
                        add(text, doc_id, len(text.encode()) if text is not None else 0, why, prompt_chars)
                        line_no += 1
                        if rows.full():
                            yield rows.take()
        else:
            with fsspec.open(sf.path, "rb", compression="infer") as f:
                head = f.read(_BINARY_SNIFF)
                if b"\x00" in head:
                    add(None, None, len(head), "binary")
                    yield rows.take()
                    return
                if sf.format == "txt":
                    raw = head + f.read()
                    text, bad = _decode(raw)
                    add(text, None, len(raw), bad)
                else:
                    pending = head
                    for chunk in iter(lambda: f.read(1 << 20), b""):
                        pending += chunk
                        *lines, pending = pending.split(b"\n")
                        for line in lines:
                            if line.strip():
                                add(*_json_row(line, sf.spec))
                            line_no += 1
                            if rows.full():
                                yield rows.take()
                    if pending.strip():
                        add(*_json_row(pending, sf.spec))
    except KeyError as e:
        add(None, None, 0, f"missing_column:{e.args[0]}")
    except _read_errors() as e:  # truncated gzip/zstd, unreadable parquet: the rest of the file is lost, say so
        name = "truncated" if isinstance(e, EOFError) or "truncat" in str(e).lower() or "end of" in str(e).lower() else "unreadable"
        add(None, None, 0, name)
    except Exception as e:  # noqa: BLE001 - any other reader failure is reported per file, not fatal
        add(None, None, 0, f"unreadable:{type(e).__name__}")
    if rows.cols["uid"]:
        yield rows.take()


class TextFiles(Datasource):
    """Ray Data datasource over the recipe's inputs: one read task per file, streamed in blocks."""

    def __init__(self, files: list[SourceFile], execution: ExecutionConfig, reject: RejectConfig):
        self.files, self.execution, self.reject = files, execution, reject

    def estimate_inmemory_data_size(self) -> Optional[int]:
        return None

    def get_read_tasks(self, parallelism: int, per_task_row_limit: Optional[int] = None, data_context=None) -> list[ReadTask]:
        tasks = []
        for sf in self.files:
            meta = BlockMetadata(num_rows=None, size_bytes=None, exec_stats=None, input_files=(sf.path,))
            tasks.append(ReadTask(lambda sf=sf: read_file(sf, self.execution, self.reject), meta, schema=SCHEMA))
        return tasks
