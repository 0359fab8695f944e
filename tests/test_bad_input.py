"""The readers on damaged or unusual inputs, each the exact input that would lose documents if a reader were careless (no Ray)."""

from __future__ import annotations

import gzip
import json
import os
import subprocess
import sys

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from raylm.pipelines.config import ExecutionConfig, InputSpec, RejectConfig
from raylm.pipelines.read import SourceFile, list_files, read_file
from tests.conftest import ROOT

DOCS = [{"id": f"d{i}", "text": f"document {i} " + "lorem ipsum dolor sit amet " * 60} for i in range(3)]


def _lines(docs) -> bytes:
    return b"".join(json.dumps(d).encode() + b"\n" for d in docs)


def _read(path, fmt="jsonl", **spec) -> list[dict]:
    sf = SourceFile(0, str(path), fmt, InputSpec(path=str(path), **spec))
    return [r for b in read_file(sf, ExecutionConfig(), RejectConfig()) for r in b.to_pylist()]


def _kept(rows) -> list[str]:
    return [r["id"] for r in rows if r["reject"] is None]


def test_small_jsonl_keeps_every_document(tmp_path):  # a file smaller than the binary sniff
    p = tmp_path / "small.jsonl"
    p.write_bytes(_lines(DOCS))
    assert 1000 < p.stat().st_size < 8192
    rows = _read(p)
    assert _kept(rows) == ["d0", "d1", "d2"] and len(rows) == 3


def test_lone_surrogate_costs_one_document(tmp_path):  # Arrow cannot encode "\ud800"
    p = tmp_path / "s.jsonl"
    p.write_bytes(_lines(DOCS[:1]) + b'{"id": "bad", "text": "\\ud800 and more text"}\n' + _lines(DOCS[1:]))
    rows = _read(p)
    assert _kept(rows) == ["d0", "d1", "d2"]
    assert [(r["src"].endswith(":2"), r["reject"]) for r in rows if r["reject"]] == [(True, "invalid_unicode")]


def test_surrogate_in_the_id_or_a_task_field(tmp_path):
    p = tmp_path / "t.jsonl"
    p.write_bytes(b'{"id": "\\udfff", "text": "fine text"}\n{"p": "q\\ud83d", "c": " a"}\n{"p": "q", "c": " a"}\n')
    rows = _read(p)
    assert [r["reject"] for r in rows] == ["invalid_unicode", "missing_text", "missing_text"]
    rows = _read(p, prompt_field="p", completion_field="c", id_field=None)
    assert [r["reject"] for r in rows] == ["missing_prompt", "invalid_unicode", None]


def test_truncated_gzip_keeps_its_readable_prefix(tmp_path):
    docs = [{"id": f"t{i}", "text": "word " * 200 + str(i)} for i in range(50)]
    payload = gzip.compress(_lines(docs))
    p = tmp_path / "trunc.jsonl.gz"
    p.write_bytes(payload[: len(payload) // 2])
    rows = _read(p)
    kept = _kept(rows)
    assert len(kept) >= 19 and kept == [f"t{i}" for i in range(len(kept))]
    assert [r["reject"] for r in rows if r["reject"]] == ["truncated"]  # the damaged tail, once
    assert rows[-1]["src"].endswith(f":{len(kept) + 1}")  # with its line number


def test_corrupt_gzip_member_keeps_what_came_before(tmp_path):
    payload = bytearray(gzip.compress(_lines(DOCS * 20)))
    payload[len(payload) // 2 : len(payload) // 2 + 16] = b"\xff" * 16
    p = tmp_path / "c.jsonl.gz"
    p.write_bytes(bytes(payload))
    rows = _read(p)
    assert len(_kept(rows)) >= 1 and rows[-1]["reject"] in ("corrupt", "truncated")
    assert sum(r["reject"] is not None for r in rows) == 1


def test_nul_byte_costs_its_line_only(tmp_path):
    p = tmp_path / "n.jsonl"
    p.write_bytes(b'{"id": "x", "text": "a\x00b"}\n' + _lines(DOCS))
    rows = _read(p)
    assert _kept(rows) == ["d0", "d1", "d2"] and rows[0]["reject"] == "binary"


def test_utf8_bom_is_stripped(tmp_path):
    p = tmp_path / "b.jsonl"
    p.write_bytes(b"\xef\xbb\xbf" + _lines(DOCS).replace(b"\n", b"\r\n"))
    rows = _read(p)
    assert _kept(rows) == ["d0", "d1", "d2"]
    t = tmp_path / "b.txt"
    t.write_bytes(b"\xef\xbb\xbfhello")
    assert [r["text"] for r in _read(t, "txt")] == ["hello"]


def test_parquet_missing_column_counts_every_row(tmp_path):
    p = tmp_path / "m.parquet"
    pq.write_table(pa.table({"body": ["a", "b", "c", "d", "e"]}), p, row_group_size=2)
    rows = _read(p, "parquet")
    assert [r["reject"] for r in rows] == ["missing_column:text"] * 5
    assert [r["src"].rsplit(":", 1)[1] for r in rows] == ["1", "2", "3", "4", "5"]


def test_missing_input_path_is_an_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="does/not/exist.jsonl"):
        list_files([(0, InputSpec(path=str(tmp_path / "does/not/exist.jsonl")))])
    with pytest.raises(FileNotFoundError, match="no files match"):
        list_files([(0, InputSpec(path=str(tmp_path / "*.jsonl")))])


def test_a_directory_given_as_a_path_is_named_as_one(tmp_path):  # not "no such file or directory"
    (tmp_path / "dir").mkdir()
    (tmp_path / "dir" / "a.jsonl").write_bytes(_lines(DOCS))
    for path in (tmp_path / "dir", f"{tmp_path / 'dir'}/"):
        with pytest.raises(ValueError, match=r"data.inputs: '.*dir/?' is a directory; give a glob of its files, such as '.*dir/\*.jsonl'"):
            list_files([(0, InputSpec(path=str(path)))])
    assert [f.format for f in list_files([(0, InputSpec(path=str(tmp_path / "dir" / "*.jsonl")))])] == ["jsonl"]


def test_a_fifo_matched_by_a_glob_is_refused_when_listed(tmp_path):  # reading it would wait forever
    (tmp_path / "a.jsonl").write_bytes(_lines(DOCS))
    os.mkfifo(tmp_path / "b.jsonl")
    with pytest.raises(ValueError, match=r"'.*b\.jsonl' \(matched by '.*\*\.jsonl': narrow the glob\) is a FIFO, not a regular file"):
        list_files([(0, InputSpec(path=str(tmp_path / "*.jsonl")))])
    with pytest.raises(ValueError, match=r"b\.jsonl' is a FIFO"):
        list_files([(0, InputSpec(path=str(tmp_path / "b.jsonl")))])


def _data_cli(tmp_path, *sets: str) -> subprocess.CompletedProcess:
    """`raylm data` on the sample recipe with `sets`, its run under tmp_path; a hang fails the test."""
    argv = [sys.executable, "-m", "raylm", "data", str(ROOT / "cluster" / "recipes" / "local.yaml"), "--set", f"storage_path={tmp_path}/runs"]
    return subprocess.run(argv + [a for s in sets for a in ("--set", s)], capture_output=True, text=True, cwd=ROOT, timeout=120)


def test_unusable_inputs_exit_2_with_one_line_before_ray_starts(tmp_path):
    (tmp_path / "dir").mkdir()
    os.mkfifo(tmp_path / "dir" / "f.jsonl")
    cases = {
        f"data.inputs=[{{path: '{tmp_path}/dir'}}]": "is a directory",
        f"data.inputs=[{{path: '{tmp_path}/dir/*.jsonl'}}]": "f.jsonl' (matched by",
        "data.inputs=[]": "data.inputs: empty",
        "data.sources={}": "data.sources: empty",
    }
    for setting, needle in cases.items():
        r = _data_cli(tmp_path, setting)
        assert r.returncode == 2 and needle in r.stderr and len(r.stderr.strip().splitlines()) == 1, (setting, r.stderr)
    assert not (tmp_path / "runs").exists()


def test_huge_line_is_rejected_without_losing_its_neighbours(tmp_path):
    p = tmp_path / "h.jsonl"
    p.write_bytes(_lines(DOCS[:1]) + json.dumps({"text": "x" * 5000}).encode() + b"\n" + _lines(DOCS[1:]))
    sf = SourceFile(0, str(p), "jsonl", InputSpec(path=str(p)))
    rows = [r for b in read_file(sf, ExecutionConfig(), RejectConfig(max_bytes=3000)) for r in b.to_pylist()]
    assert _kept(rows) == ["d0", "d1", "d2"] and rows[1]["reject"] == "too_large" and rows[1]["nbytes"] > 5000


def test_undecodable_file_name_keeps_its_documents(tmp_path):
    name = os.fsdecode(os.fsencode(str(tmp_path)) + b"/caf\xe9.jsonl")  # a Latin-1 name on a UTF-8 file system
    with open(name, "wb") as f:
        f.write(_lines(DOCS))
    rows = _read(name)
    assert _kept(rows) == ["d0", "d1", "d2"] and rows[0]["src"].endswith("caf\\xe9.jsonl:1")


def test_every_compression_suffix_is_read_and_archives_are_refused(tmp_path):
    import bz2
    import lzma

    import zstandard

    codecs = {
        ".gz": gzip.compress,
        ".zst": zstandard.ZstdCompressor().compress,
        ".zstd": zstandard.ZstdCompressor().compress,
        ".bz2": bz2.compress,
        ".xz": lzma.compress,
        ".lzma": lambda b: lzma.compress(b, format=lzma.FORMAT_ALONE),
    }
    for suffix, compress in codecs.items():
        p = tmp_path / f"a.jsonl{suffix}"
        p.write_bytes(compress(_lines(DOCS)))
        (sf,) = list_files([(0, InputSpec(path=str(p)))])
        assert sf.format == "jsonl" and _kept(_read(p)) == ["d0", "d1", "d2"], suffix
    (tmp_path / "b.jsonl.zip").write_bytes(b"PK\x03\x04")
    with pytest.raises(ValueError, match="zip files are not read"):
        list_files([(0, InputSpec(path=str(tmp_path / "b.jsonl.zip"), format="jsonl"))])


def test_multi_stream_xz_with_stream_padding_is_read_whole(tmp_path):  # every stream, not the first only
    import lzma

    p = tmp_path / "p.jsonl.xz"
    p.write_bytes(lzma.compress(_lines(DOCS[:1])) + b"\x00" * 8 + lzma.compress(_lines(DOCS[1:])) + b"\x00" * 4)
    rows = _read(p)
    assert _kept(rows) == ["d0", "d1", "d2"] and len(rows) == 3


def test_xz_padding_not_a_multiple_of_4_is_corrupt_after_the_streams_before_it(tmp_path):  # as `xz -dc` reports it
    import lzma

    p = tmp_path / "p.jsonl.xz"
    p.write_bytes(lzma.compress(_lines(DOCS[:2])) + b"\x00" * 3 + lzma.compress(_lines(DOCS[2:])))
    rows = _read(p)
    assert _kept(rows) == ["d0", "d1"] and [r["reject"] for r in rows[2:]] == ["corrupt"]


def test_gzip_zero_padding_longer_than_a_read_slice(tmp_path):
    p = tmp_path / "z.jsonl.gz"
    p.write_bytes(gzip.compress(_lines(DOCS[:1])) + b"\x00" * 70_000 + gzip.compress(_lines(DOCS[1:])))
    assert _kept(_read(p)) == ["d0", "d1", "d2"]


def test_a_json_array_file_is_one_record_per_element(tmp_path):  # not JSON Lines
    p = tmp_path / "a.json"
    p.write_text(json.dumps(DOCS, indent=2))
    rows = _read(p)
    assert _kept(rows) == ["d0", "d1", "d2"] and len(rows) == 3  # not one row per line of the pretty-printed file
    assert [r["src"].rsplit(":", 1)[1] for r in rows] == ["1", "2", "3"]


def test_a_damaged_json_array_element_costs_itself_only(tmp_path):
    bad = [b'{"id": "x", "text": "a" "b"}', b"42", b'{"text": "caf\xe9"}', b'{"text": "a\x00b"}', b'{"text": "' + b"y" * 5000 + b'"}']
    good = [json.dumps(d, indent=1).encode() for d in DOCS]
    p = tmp_path / "a.json"
    p.write_bytes(b"[\n" + b",\n".join([good[0], *bad, good[1], good[2]]) + b"\n]\n")
    sf = SourceFile(0, str(p), "jsonl", InputSpec(path=str(p)))
    rows = [r for b in read_file(sf, ExecutionConfig(), RejectConfig(max_bytes=3000)) for r in b.to_pylist()]
    assert _kept(rows) == ["d0", "d1", "d2"]
    assert [r["reject"] for r in rows[1:6]] == ["malformed_json", "malformed_json", "invalid_utf8", "binary", "too_large"]


def test_json_lines_in_a_json_file_and_a_json_array_in_a_jsonl_file(tmp_path):
    (tmp_path / "l.json").write_bytes(_lines(DOCS))  # one object per line: still JSON Lines
    assert _kept(_read(tmp_path / "l.json")) == ["d0", "d1", "d2"]
    (tmp_path / "a.jsonl").write_text(json.dumps(DOCS))  # a .jsonl name is JSON Lines whatever it holds: one bad line
    assert [r["reject"] for r in _read(tmp_path / "a.jsonl")] == ["malformed_json"]
