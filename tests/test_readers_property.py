"""Property test of the input readers (no Ray): generated txt, jsonl, jsonl.gz, jsonl.zst, jsonl.xz, .json arrays and parquet files mixing
valid records with damage of every kind. Every valid record that the bytes still hold is kept exactly once with
its text intact, every other record is one row with a known reason and its line, and nothing else appears.

`pytest --hypothesis-profile=thorough tests/test_readers_property.py` runs ten times more examples."""

from __future__ import annotations

import gzip
import json
import lzma
import zlib
from dataclasses import dataclass

import pyarrow as pa
import pyarrow.parquet as pq
import zstandard
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from raylm.pipelines.config import ExecutionConfig, InputSpec, RejectConfig
from raylm.pipelines.jsonarray import ArrayItems, starts_array
from raylm.pipelines.read import SourceFile, read_file

MAX_BYTES = 2048  # small, so that "huge" records are cheap to generate
REJECT = RejectConfig(max_bytes=MAX_BYTES)
EXECUTION = ExecutionConfig(batch_docs=7, batch_bytes=4096)  # many blocks per file: records must not be lost between them
KNOWN = {
    "binary",
    "invalid_utf8",
    "invalid_unicode",
    "malformed_json",
    "missing_text",
    "non_string_text",
    "empty",
    "too_large",
    "truncated",
    "corrupt",
    "unreadable",
    "missing_column:text",
}


@dataclass
class Rec:
    line: bytes  # as written, without its end of line
    text: str | None  # expected kept text, or None
    reason: str | None  # expected reject reason, or None (kept); both None: a blank line, no record


texts = st.text(st.characters(codec="utf-8"), min_size=0, max_size=60) | st.text(max_size=3000)


def _expect_text(text: str, line: bytes) -> Rec:
    if len(line) > MAX_BYTES:
        return Rec(line, None, "too_large")
    return Rec(line, text, None) if text.strip() else Rec(line, None, "empty")


@st.composite
def json_records(draw) -> Rec:
    kind = draw(
        st.sampled_from(["valid"] * 6 + ["bad_utf8", "surrogate", "nul", "malformed", "non_string", "null", "missing", "not_object", "blank", "huge"])
    )
    text = draw(texts)
    ascii_ = draw(st.booleans())
    doc = {"id": draw(st.integers(0, 10**6)), "text": text}
    if kind == "valid":
        return _expect_text(text, json.dumps(doc, ensure_ascii=ascii_).encode())
    if kind == "huge":
        return _expect_text("x" * (MAX_BYTES + 1) + text, json.dumps({"text": "x" * (MAX_BYTES + 1) + text}).encode())
    if kind == "bad_utf8":
        safe = text.encode()[:20].translate(None, b'"\\\n\x00')
        return Rec(b'{"text": "' + safe + b'\xff\xfe"}', None, "invalid_utf8")
    if kind == "surrogate":
        return Rec(json.dumps({"id": 1, "text": text}).encode()[:-2] + b'\\ud800"}', None, "invalid_unicode")
    if kind == "nul":
        return Rec(b'{"text": "a\x00b"}', None, "binary")
    if kind == "malformed":
        line = json.dumps(doc).encode()
        return Rec(line[: draw(st.integers(1, len(line) - 1))], None, "malformed_json")
    if kind == "non_string":
        return Rec(json.dumps({"text": draw(st.integers() | st.lists(st.integers(), max_size=3))}).encode(), None, "non_string_text")
    if kind == "null":
        return Rec(b'{"text": null}', None, "missing_text")
    if kind == "missing":
        return Rec(json.dumps({"body": text}).encode(), None, "missing_text")
    if kind == "not_object":
        return Rec(json.dumps([text]).encode(), None, "malformed_json")
    return Rec(draw(st.sampled_from([b"", b"  ", b"\t"])), None, None)


def _jsonl_bytes(recs: list[Rec], crlf: bool, bom: bool, final_newline: bool) -> bytes:
    eol = b"\r\n" if crlf else b"\n"
    body = eol.join(r.line for r in recs) + (eol if final_newline else b"")
    return (b"\xef\xbb\xbf" if bom else b"") + body


def _expected_lines(recs: list[Rec], recovered: bytes | None, crlf: bool, bom: bool) -> list[tuple[int, Rec]]:
    """(1-based line, record) of each record whose whole line (and its end) lies in the recovered bytes."""
    out, pos = [], 3 if bom else 0
    for i, r in enumerate(recs):
        pos += len(r.line) + (2 if crlf else 1)
        if recovered is not None and pos > len(recovered):
            break
        if r.text is not None or r.reason is not None:
            out.append((i + 1, r))
    return out


def _rows(tmp_path, name: str, data: bytes, fmt: str, spec: InputSpec | None = None) -> list[dict]:
    path = tmp_path / name
    path.write_bytes(data)
    sf = SourceFile(0, str(path), fmt, spec or InputSpec(path=str(path), id_field=None))
    return [r for block in read_file(sf, EXECUTION, REJECT) for r in block.to_pylist()]


def _check(rows: list[dict], expected: list[tuple[int, Rec]], tail: str | None) -> None:
    # the accounting: one row per record, each kept or with a known reason
    assert all(r["reject"] is None or r["reject"] in KNOWN for r in rows), {r["reject"] for r in rows}
    body = rows[:-1] if tail else rows
    if tail:
        assert rows[-1]["reject"] == tail and rows[-1]["text"] is None
    assert [int(r["src"].rsplit(":", 1)[1]) for r in body] == [n for n, _ in expected]
    for row, (n, rec) in zip(body, expected):
        if rec.reason is None:
            assert row["reject"] is None and row["text"] == rec.text, (n, rec, row)
        else:
            assert row["reject"] == rec.reason and row["text"] is None, (n, rec, row)
    assert len({r["uid"] for r in rows}) == len(rows)
    kept = sum(r["reject"] is None for r in rows)
    assert len(rows) == kept + sum(r["reject"] is not None for r in rows)


jsonl_files = st.tuples(st.lists(json_records(), min_size=0, max_size=25), st.booleans(), st.booleans(), st.booleans())
_slow_ok = settings(suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])


@_slow_ok
@given(jsonl_files)
def test_jsonl(tmp_path, f):
    recs, crlf, bom, final_newline = f
    data = _jsonl_bytes(recs, crlf, bom, final_newline)
    _check(_rows(tmp_path, "a.jsonl", data, "jsonl"), _expected_lines(recs, None, crlf, bom), None)


def _compress(kind: str, data: bytes, members: int) -> tuple[bytes, set[int]]:
    """`members` concatenated gzip members / zstd frames (as pigz, `cat a.gz b.gz` and multi-frame writers make),
    and the offsets where members end."""
    cuts = [len(data) * i // members for i in range(members + 1)]
    compress = gzip.compress if kind == "gz" else zstandard.ZstdCompressor().compress
    parts = [compress(data[a:b]) for a, b in zip(cuts, cuts[1:])]
    ends = {sum(len(p) for p in parts[: i + 1]) for i in range(len(parts))}
    return b"".join(parts), ends


def _recoverable(kind: str, cut: bytes) -> bytes:
    """What the codec itself can decompress from damaged bytes: the oracle of what must be kept."""
    out = b""
    while cut:
        d = zlib.decompressobj(31) if kind == "gz" else zstandard.ZstdDecompressor().decompressobj()
        try:
            out += d.decompress(cut)
        except (zlib.error, zstandard.ZstdError):
            break
        if not d.eof:
            break
        cut = d.unused_data
    return out


@_slow_ok
@given(jsonl_files, st.sampled_from(["gz", "zst"]), st.integers(1, 3), st.one_of(st.none(), st.floats(0, 1, exclude_max=True)))
def test_compressed_jsonl_truncated_anywhere(tmp_path, f, kind, members, cut_at):
    recs, crlf, bom, final_newline = f
    whole, ends = _compress(kind, _jsonl_bytes(recs, crlf, bom, final_newline), members)
    data = whole if cut_at is None else whole[: int(len(whole) * cut_at)]
    assume(len(data) not in ends or len(data) == len(whole))  # a cut between members looks like a shorter, whole file
    truncated = len(data) < len(whole)
    recovered = _recoverable(kind, data) if truncated else None
    rows = _rows(tmp_path, f"a.jsonl.{kind}", data, "jsonl")
    _check(rows, _expected_lines(recs, recovered, crlf, bom), "truncated" if truncated and data else None)


_CHECKS = st.sampled_from([lzma.CHECK_NONE, lzma.CHECK_CRC32, lzma.CHECK_CRC64, lzma.CHECK_SHA256])


def _xz_layout(data: bytes, streams: int, pads: list[int], check: int) -> list[tuple[bytes, bytes, int]]:
    """`data` split into `streams` .xz streams, each followed by its stream padding (4 * pads[i] zero bytes, as
    `xz` allows between and after streams): (plain part, compressed stream, padding bytes) in file order."""
    cuts = [len(data) * i // streams for i in range(streams + 1)]
    return [(data[a:b], lzma.compress(data[a:b], check=check), 4 * pad) for (a, b), pad in zip(zip(cuts, cuts[1:]), pads)]


def _xz_cut(layout: list[tuple[bytes, bytes, int]], cut: int) -> tuple[bytes, str | None]:
    """What `xz -dc` gets from the first `cut` bytes of the file, and the damage it reports: the streams before
    the cut whole, the one it falls in as far as liblzma decodes it ("truncated"); a cut inside padding leaves
    padding that is not a multiple of 4 ("corrupt") or none (the file looks whole)."""
    out, pos = b"", 0
    for plain, packed, pad in layout:
        if cut <= pos:
            return out, None
        if cut < pos + len(packed):
            return out + lzma.LZMADecompressor().decompress(packed[: cut - pos]), "truncated"
        out, pos = out + plain, pos + len(packed)
        if cut < pos + pad:
            return out, "corrupt" if (cut - pos) % 4 else None
        pos += pad
    return out, None


@_slow_ok
@given(jsonl_files, st.integers(1, 4), st.lists(st.integers(0, 3), min_size=4, max_size=4), _CHECKS)
def test_xz_streams_with_padding_read_every_line(tmp_path, f, streams, pads, check):
    recs, crlf, bom, final_newline = f
    layout = _xz_layout(_jsonl_bytes(recs, crlf, bom, final_newline), streams, pads, check)
    data = b"".join(packed + b"\x00" * pad for _, packed, pad in layout)
    _check(_rows(tmp_path, "a.jsonl.xz", data, "jsonl"), _expected_lines(recs, None, crlf, bom), None)


@_slow_ok
@given(jsonl_files, st.integers(1, 4), st.lists(st.integers(0, 3), min_size=4, max_size=4), _CHECKS, st.floats(0, 1, exclude_max=True))
def test_xz_streams_truncated_anywhere_keep_every_line_before_the_cut(tmp_path, f, streams, pads, check, cut_at):
    recs, crlf, bom, final_newline = f
    layout = _xz_layout(_jsonl_bytes(recs, crlf, bom, final_newline), streams, pads, check)
    whole = b"".join(packed + b"\x00" * pad for _, packed, pad in layout)
    cut = int(len(whole) * cut_at)
    recovered, tail = _xz_cut(layout, cut)
    assume(tail is not None)  # a cut between streams looks like a shorter, whole file
    _check(_rows(tmp_path, "a.jsonl.xz", whole[:cut], "jsonl"), _expected_lines(recs, recovered, crlf, bom), tail)


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False, allow_infinity=False) | texts,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(texts, inner, max_size=3),
    max_leaves=8,
)  # brackets, quotes, commas and backslashes inside strings and nested values: what cutting an array must see through
array_records = st.lists(st.fixed_dictionaries({"id": st.integers(0, 10**6), "text": texts}, optional={"meta": json_values}), max_size=20)


def _array_rows(tmp_path, name: str, data: bytes) -> list[dict]:
    path = tmp_path / name
    path.write_bytes(data)
    sf = SourceFile(0, str(path), "jsonl", InputSpec(path=str(path)))
    return [r for block in read_file(sf, EXECUTION, RejectConfig(max_bytes=1 << 20)) for r in block.to_pylist()]


def _kept_as_written(rows: list[dict], records: list[dict]) -> None:
    """Each record one row, numbered by its element (from 1): kept with its id and text, or rejected as empty."""
    assert [r["src"].rsplit(":", 1)[1] for r in rows] == [str(i + 1) for i in range(len(records))]
    for row, rec in zip(rows, records):
        want = (None, str(rec["id"]), rec["text"]) if rec["text"].strip() else ("empty", None, None)
        assert (row["reject"], row["text"]) == (want[0], want[2]) and (want[1] is None or row["id"] == want[1]), (rec, row)


@_slow_ok
@given(array_records, st.sampled_from([None, 0, 1, 2, 4, "\t"]), st.booleans(), st.booleans(), st.sampled_from(["", ".gz"]))
def test_json_array_reads_back_every_record(tmp_path, records, indent, ascii_, bom, codec):
    data = (b"\xef\xbb\xbf" if bom else b"") + json.dumps(records, indent=indent, ensure_ascii=ascii_).encode() + b"\n"
    rows = _array_rows(tmp_path, f"a.json{codec}", gzip.compress(data) if codec else data)
    _kept_as_written(rows, records)
    assert len(rows) == sum(r["reject"] is None for r in rows) + sum(r["reject"] is not None for r in rows) == len(records)


@_slow_ok
@given(array_records, st.sampled_from([None, 1, "\t"]), st.booleans(), st.lists(st.integers(1, 40), min_size=1, max_size=8))
def test_json_array_cut_into_any_chunks_gives_the_same_elements(records, indent, bom, sizes):
    """The reader's chunks fall anywhere: inside a string, an escape, the byte-order mark."""
    data = (b"\xef\xbb\xbf" if bom else b"") + json.dumps(records, indent=indent).encode()
    chunks, pos, k = [], 0, 0
    while pos < len(data):
        chunks.append(data[pos : pos + sizes[k % len(sizes)]])
        pos, k = pos + len(chunks[-1]), k + 1
    array, stream = starts_array(chunks)
    items = ArrayItems(1 << 20)
    got = [x for c in stream for x in items.feed(c)] + list(items.end())
    assert array and [why for _, _, why in got] == [None] * len(records)
    assert [json.loads(raw) for raw, _, _ in got] == records


@_slow_ok
@given(array_records.filter(bool), st.lists(st.sampled_from([" ", "\n", "\t", "\r\n  "]), min_size=3, max_size=3), st.floats(0, 1, exclude_max=True))
def test_json_array_cut_anywhere_keeps_every_element_before_the_cut(tmp_path, records, ws, cut_at):
    """A `.json` array cut short (a partial download): every element whose bytes lie before the cut is kept, and
    the element the cut falls in is one malformed_json row."""
    elements = [json.dumps(r, indent=1).encode() for r in records]
    head, sep = b"[" + ws[0].encode(), b"," + ws[1].encode()
    data = head + sep.join(elements) + ws[2].encode() + b"]"
    starts = [len(head) + sum(len(e) + len(sep) for e in elements[:i]) for i in range(len(elements))]
    cut = int(len(data) * cut_at)
    whole = sum(s + len(e) <= cut for s, e in zip(starts, elements))
    partial = whole < len(elements) and cut > starts[whole]
    rows = _array_rows(tmp_path, "a.json", data[:cut])
    _kept_as_written(rows[:whole], records[:whole])
    assert [r["reject"] for r in rows[whole:]] == (["malformed_json"] if partial else [])


@_slow_ok
@given(st.binary(max_size=40) | texts.map(str.encode), st.booleans(), st.booleans())
def test_txt(tmp_path, body, bom, nul):
    data = (b"\xef\xbb\xbf" if bom else b"") + (b"a\x00b" if nul else b"") + body
    rows = _rows(tmp_path, "a.txt", data, "txt")
    assert len(rows) == 1
    raw = data[3:] if data.startswith(b"\xef\xbb\xbf") else data
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        text = None
    want = (
        "too_large"
        if len(data) > MAX_BYTES
        else "binary"
        if b"\x00" in raw[:8192]
        else "invalid_utf8"
        if text is None
        else None
        if text.strip()
        else "empty"
    )
    assert rows[0]["reject"] == want and (want is not None or rows[0]["text"] == text)


parquet_values = st.one_of(
    texts.map(lambda t: ("kept", t)), st.just(("null", None)), st.just(("bad", b"bad\xff")), st.just(("huge", "y" * (MAX_BYTES + 1)))
)


@_slow_ok
@given(st.lists(parquet_values, max_size=30), st.sampled_from(["ok", "int_column", "no_column", "truncated"]), st.integers(1, 7))
def test_parquet(tmp_path, values, variant, row_group):
    raw = [v.encode() if isinstance(v, str) else v for _, v in values]
    col = pa.array(raw, pa.binary()).view(pa.string())  # Parquet does not validate UTF-8: invalid values do occur
    if variant == "int_column":
        col = pa.array(range(len(values)), pa.int64())
    table = pa.table({"body" if variant == "no_column" else "text": col, "id": [f"r{i}" for i in range(len(values))]})
    path = tmp_path / "w.parquet"
    pq.write_table(table, path, row_group_size=row_group)
    data = path.read_bytes()
    if variant == "truncated":
        data = data[: len(data) // 2]
    rows = _rows(tmp_path, "a.parquet", data, "parquet", InputSpec(path="x"))
    if variant == "truncated":  # the footer (schema, row count) is gone: the file is one unreadable record
        assert [r["reject"] for r in rows] == ["unreadable"]
        return
    assert [int(r["src"].rsplit(":", 1)[1]) for r in rows] == list(range(1, len(values) + 1))
    for i, (r, (kind, v)) in enumerate(zip(rows, values)):
        want = (
            {"no_column": "missing_column:text", "int_column": "non_string_text"}.get(variant)
            or {"null": "missing_text", "bad": "invalid_utf8"}.get(kind)
            or ("too_large" if len(v.encode()) > MAX_BYTES else None if v.strip() else "empty")
        )
        assert r["reject"] == want, (kind, v, r)
        if want is None:
            assert r["text"] == v and r["id"] == f"r{i}"
