"""WARC/WET reading: framing under damage (property tests: any cut, a lying Content-Length of any size, below, at
or past max_bytes or the file's end, junk between records, any chunking), record classification (bodies labelled
chunked, stored either way), and HTML to text (charset labels that name no encoding or do not fit)."""

import gzip
import io
import re
import zlib

from hypothesis import assume, given
from hypothesis import strategies as st

from raylm.pipelines.config import ExtractConfig, RejectConfig
from raylm.pipelines.extract import Sandbox, extract_text, html_text
from raylm.pipelines.streams import decompressed
from raylm.pipelines.warc import frames, parse
from raylm.pipelines.web_sample import page, per_record_gzip, record, request

BIG = 1 << 20


def _records(n: int) -> list[bytes]:
    return [page(f"http://example.com/{i}", f"<html><body><p>page {i} {'x' * (i * 7 % 50)}</p></body></html>") for i in range(n)]


def _chunks(data: bytes, size: int) -> list[bytes]:
    return [data[i : i + size] for i in range(0, len(data), size)] or [b""]


def _framed(data: bytes, size: int = 97):
    return list(frames(_chunks(data, size), BIG))


def _intact(fs) -> list[bytes]:
    return [f.raw for f in fs if f.damage is None]


def _offsets(recs: list[bytes]) -> list[int]:
    out, at = [], 0
    for r in recs:
        out.append(at)
        at += len(r)
    return out


@given(n=st.integers(0, 6), size=st.integers(1, 500))
def test_every_record_comes_back_whatever_the_chunking(n, size):
    recs = _records(n)
    fs = _framed(b"".join(recs), size)
    assert [f.raw + b"\r\n\r\n" for f in fs] == recs
    assert [f.offset for f in fs] == _offsets(recs) and all(f.damage is None for f in fs)


@given(n=st.integers(1, 6), cut=st.floats(0, 1), size=st.integers(1, 400))
def test_a_cut_anywhere_costs_the_cut_record_only(n, cut, size):
    recs = _records(n)
    data = b"".join(recs)
    k = int(cut * len(data))
    fs = _framed(data[:k], size)
    whole = [r for r, at in zip(recs, _offsets(recs)) if at + len(r) <= k]
    assert [r + b"\r\n\r\n" for r in _intact(fs)] == whole
    damaged = [f for f in fs if f.damage]
    assert len(damaged) <= 1 and all(f.damage == "warc_truncated" and f.offset == len(b"".join(whole)) for f in damaged)
    assert sum(f.size for f in fs) == k - (k - len(b"".join(whole)) if not damaged else 0)


@given(n=st.integers(2, 6), which=st.integers(0, 5), delta=st.integers(-60, 400).filter(lambda d: d != 0), size=st.integers(1, 300))
def test_a_lying_content_length_costs_that_record_only(n, which, delta, size):
    recs = _records(n)
    i = which % n
    head, sep, rest = recs[i].partition(b"Content-Length: ")
    length = int(rest.split(b"\r\n", 1)[0])
    lie = head + sep + str(max(0, length + delta)).encode() + rest[len(str(length)) :]
    block = lie.index(b"\r\n\r\n") + 4 + max(0, length + delta)
    # a lie that lands on two CRLFs inside the block frames as a shorter record (pipelines.warc.frames says why)
    assume(lie[block : block + 4] != b"\r\n\r\n")
    fs = _framed(b"".join(recs[:i] + [lie] + recs[i + 1 :]), size)
    assert [r + b"\r\n\r\n" for r in _intact(fs)] == recs[:i] + recs[i + 1 :]
    assert [f.damage for f in fs if f.damage] in (["warc_bad_length"], ["warc_truncated"])


def _claiming(rec: bytes, length: int) -> bytes:
    """The record with its Content-Length set to `length`, its bytes otherwise unchanged."""
    head, sep, rest = rec.partition(b"Content-Length: ")
    return head + sep + str(length).encode() + rest[len(rest.split(b"\r\n", 1)[0]) :]


def _true_length(rec: bytes) -> int:
    return len(rec) - rec.index(b"\r\n\r\n") - 8  # the block: after the header's end, before the closing CRLFs


def _claim_at_limit(rec: bytes, max_bytes: int, d: int) -> int:
    """A length that makes the record's end (header, block) fall `d` bytes from max_bytes (the header grows with its digits)."""
    claim = max_bytes
    for _ in range(3):
        claim = max_bytes - _claiming(rec, claim).index(b"\r\n\r\n") - 4 + d
    return claim


_LIES = st.tuples(st.sampled_from(["near", "limit", "file", "huge"]), st.integers(-60, 400))


@st.composite
def lying_files(draw) -> tuple[list[bytes], int, int]:
    """(the file's records as written, index of the liar, max_bytes): one record's Content-Length lies, by any amount."""
    n, max_bytes = draw(st.integers(1, 6)), draw(st.integers(150, 1200))
    recs = _records(n)
    i = draw(st.integers(0, n - 1))
    kind, d = draw(_LIES)
    total, length = len(b"".join(recs)), _true_length(recs[i])
    claim = {"near": length + d, "limit": _claim_at_limit(recs[i], max_bytes, d % 7 - 3), "file": total + d, "huge": 10**15 + d}[kind]
    assume(claim >= 0 and claim != length)
    lie = _claiming(recs[i], claim)
    block = lie.index(b"\r\n\r\n") + 4 + claim
    assume(lie[block : block + 4] != b"\r\n\r\n")  # framed as a shorter record (pipelines.warc.frames says why)
    return recs[:i] + [lie] + recs[i + 1 :], i, max_bytes


def _fits(rec: bytes, max_bytes: int) -> bool:
    return len(rec) - 4 <= max_bytes  # frames: a record whose header and block end past max_bytes is too_large


@given(f=lying_files(), size=st.integers(1, 300))
def test_a_lying_content_length_of_any_size_costs_no_intact_record(f, size):
    recs, i, max_bytes = f
    fs = list(frames(_chunks(b"".join(recs), size), max_bytes))
    assert [r + b"\r\n\r\n" for r in _intact(fs)] == [r for k, r in enumerate(recs) if k != i and _fits(r, max_bytes)]


@given(f=lying_files(), size=st.integers(1, 300))
def test_a_lying_content_length_of_any_size_is_one_reject_the_others_too_large(f, size):
    recs, i, max_bytes = f
    fs = list(frames(_chunks(b"".join(recs), size), max_bytes))
    assert [(f.offset, f.damage) for f in fs if f.damage and f.damage != "too_large"] in (
        [(_offsets(recs)[i], "warc_bad_length")],
        [(_offsets(recs)[i], "warc_truncated")],
    )
    assert [f.offset for f in fs if f.damage == "too_large"] == [
        at for k, (r, at) in enumerate(zip(recs, _offsets(recs))) if k != i and not _fits(r, max_bytes)
    ]


@given(f=lying_files(), size=st.integers(1, 300))
def test_a_lying_content_length_of_any_size_keeps_every_record_and_byte_counted(f, size):
    recs, _, max_bytes = f
    fs = list(frames(_chunks(b"".join(recs), size), max_bytes))
    assert len(fs) == len(recs)  # one row a record: records_in == docs_in + sum(skipped)
    assert sum(f.size for f in fs) == len(b"".join(recs)) and all(a.offset + a.size == b.offset for a, b in zip(fs, fs[1:]))


def test_a_length_past_max_bytes_that_lies_costs_that_record_only():
    recs = _records(5)
    for claim in (5000, 10**12):  # over max_bytes; past the end of the file
        rows = _read(gzip.compress(b"".join(recs[:2] + [_claiming(recs[2], claim)] + recs[3:])), max_bytes=1000)
        assert [r["reject"] for r in rows] == [None, None, "warc_bad_length", None, None], claim
    big = page("http://example.com/big", "<html><body>" + "x" * 3000 + "</body></html>")
    rows = _read(gzip.compress(b"".join(recs[:2] + [big] + recs[3:])), max_bytes=1000)  # a length that tells the truth
    assert [r["reject"] for r in rows] == [None, None, "too_large", None, None] and rows[2]["nbytes"] == len(big)


@given(n=st.integers(1, 5), at=st.integers(0, 5), junk=st.binary(min_size=1, max_size=300), size=st.integers(1, 300))
def test_junk_between_records_is_one_reject_and_costs_no_record(n, at, junk, size):
    recs = _records(n)
    j = at % (n + 1)
    junk = junk.replace(b"WARC/1.", b"WARC/0.")
    fs = _framed(b"".join(recs[:j]) + junk + b"\r\n" + b"".join(recs[j:]), size)
    assert [r + b"\r\n\r\n" for r in _intact(fs)] == recs
    assert len([f for f in fs if f.damage]) <= 1


def test_not_a_warc_and_empty_files():
    assert [(f.damage, f.size) for f in _framed(b"hello\n" * 1000)] == [("warc_garbage", 6000)]
    assert _framed(b"") == []
    assert [f.damage for f in _framed(bytes(range(256)) * 40)] == ["warc_garbage"]


def test_gzip_per_record_and_whole_file_read_alike():
    recs = _records(4)
    for data in (per_record_gzip(recs), gzip.compress(b"".join(recs))):
        assert [f.raw + b"\r\n\r\n" for f in frames(decompressed(io.BytesIO(data), "gzip"), BIG)] == recs


def test_a_record_over_max_bytes_is_never_held_whole_whatever_its_length_claims():
    import tracemalloc

    n, piece, after = 16 << 20, b"x" * (1 << 16), _records(2)[1]
    for claim, damage in ((n, "too_large"), (10**15, "warc_bad_length")):
        head = _claiming(_records(1)[0], claim)

        def stream(head=head):
            yield head[: head.index(b"\r\n\r\n") + 4]
            yield from (piece for _ in range(n // len(piece)))
            yield b"\r\n\r\n" + after

        tracemalloc.start()
        got = [(f.damage, f.raw) for f in frames(stream(), 1 << 20)]
        peak = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
        assert got == [(damage, None), (None, after[:-4])] and peak < 1 << 20, (claim, peak)


def _read(data: bytes, max_bytes: int = RejectConfig().max_bytes) -> list[dict]:
    """The read stage's rows of `data` as a file `c.warc.gz` (pipelines.read.read_file, no Ray)."""
    import tempfile
    from pathlib import Path

    from raylm.pipelines.config import ExecutionConfig, InputSpec
    from raylm.pipelines.read import SourceFile, read_file

    with tempfile.TemporaryDirectory() as d:
        p = Path(d) / "c.warc.gz"
        p.write_bytes(data)
        sf = SourceFile(0, str(p), "warc", InputSpec(path=str(p)))
        return [r for t in read_file(sf, ExecutionConfig(), RejectConfig(max_bytes=max_bytes)) for r in t.to_pylist()]


def _members(n: int) -> list[bytes]:
    return [gzip.compress(r, mtime=0) for r in _records(n)]


def test_a_corrupt_gzip_member_costs_its_record_only():
    recs, mem = _records(5), _members(5)
    bad = bytearray(mem[2])
    bad[len(bad) // 2] ^= 0xFF  # inside the deflate data of record 2
    rows = _read(b"".join(mem[:2]) + bytes(bad) + b"".join(mem[3:]))
    pages = [r["payload"] for r in rows if r["reject"] is None]
    assert pages == [parse(f, "warc").payload for f in frames([b"".join(recs[:2] + recs[3:])], BIG)]
    assert [r["reject"] for r in rows if r["reject"]] == ["corrupt"]
    whole = _read(gzip.compress(b"".join(recs[:2])) + b"not gzip at all" * 10)  # a whole-file gzip, then garbage
    assert [r["reject"] for r in whole] == [None, None, "corrupt"]


def _unterminated(member: bytes) -> bool:
    """The member's deflate data decodes without error but never ends (the file ends inside it)."""
    d = zlib.decompressobj(16 + zlib.MAX_WBITS)
    try:
        d.decompress(member)
    except zlib.error:
        return False
    return not d.eof


@given(n=st.integers(2, 6), which=st.integers(0, 5), flips=st.lists(st.tuples(st.floats(0, 1), st.integers(1, 255)), min_size=1, max_size=4))
def test_damage_in_one_gzip_member_costs_no_other_record(n, which, flips):
    recs, mem = _records(n), _members(n)
    i = which % n
    bad = bytearray(mem[i])
    for at, x in flips:
        bad[min(int(at * len(bad)), len(bad) - 1)] ^= x
    rows = _read(b"".join(mem[:i]) + bytes(bad) + b"".join(mem[i + 1 :]))
    payloads = {k: parse(next(iter(frames([r], BIG))), "warc").payload for k, r in enumerate(recs)}
    got = [r["payload"] for r in rows if r["reject"] is None]
    others = [payloads[k] for k in range(n) if k != i]
    assert [p for p in got if p in others] == others  # every other record, once, in order, intact
    rejects = [r["reject"] for r in rows if r["reject"]]
    assert len(got) == n or rejects  # a record lost is a record counted
    if not (i == n - 1 and _unterminated(bytes(bad))):
        # the damaged record comes back intact or not at all: a member's output counts only once its CRC checks,
        # except where the file ends inside the member, whose decoded bytes are kept as from any cut file (and
        # may then read as any record at all: a skip, garbage, a page)
        assert len(got) <= n and set(got) <= set(payloads.values())
        # one row for the damage; a last member cut short may also have decoded its trailer into bytes that are no record
        assert len(rejects) <= 2 and all(r in ("corrupt", "truncated") or r.startswith("warc_") for r in rejects)


def test_records_are_documents_or_skips_by_kind():
    recs = [
        record("warcinfo", body=b"software: raylm-test\r\n"),
        request("http://example.com/"),
        page("http://example.com/", "<html><body><p>Hello there, reader.</p></body></html>", rid="uuid:00000000-0000-0000-0000-000000000001"),
        page("http://example.com/logo.png", b"\x89PNG\r\n", ctype="image/png"),
        page("http://example.com/gone", "<html>gone</html>", status="404 Not Found"),
        page("http://example.com/moved", "", status="301 Moved Permanently"),
        record("revisit", "http://example.com/"),
        record("metadata", "http://example.com/", b"fetchTimeMs: 12\r\n"),
        page(
            "http://example.com/sniffed",
            b"<html><p>x</p></html>",
            ctype="application/octet-stream",
            headers={"WARC-Identified-Payload-Type": "text/html"},
        ),
    ]
    got = [parse(f, "warc") for f in _framed(b"".join(recs))]
    assert [g.reason for g in got] == [
        "skip:request_or_metadata",
        "skip:request_or_metadata",
        None,
        "skip:not_html",
        "skip:http_status",
        "skip:http_status",
        "skip:revisit",
        "skip:request_or_metadata",
        None,
    ]
    doc = got[2]
    assert doc.id == "<urn:uuid:00000000-0000-0000-0000-000000000001>" and doc.url == "http://example.com/"
    assert doc.date == "2024-05-01T12:00:00Z" and doc.charset == "utf-8" and doc.payload.startswith(b"<html>")


def test_wet_conversion_records_are_the_documents():
    recs = [
        record("warcinfo", body=b"x: y\r\n"),
        record("conversion", "http://example.com/", b"Plain text of the page.\n", headers={"Content-Type": "text/plain"}),
    ]
    got = [parse(f, "wet") for f in _framed(b"".join(recs))]
    assert [g.reason for g in got] == ["skip:request_or_metadata", None] and got[1].payload == b"Plain text of the page.\n"


def _chunked(body: bytes, sizes: list[int]) -> bytes:
    """`body` in HTTP chunked transfer encoding, cut into chunks of the given sizes (cycled)."""
    out, at, k = b"", 0, 0
    while at < len(body):
        piece = body[at : at + sizes[k % len(sizes)]]
        out += b"%x\r\n" % len(piece) + piece + b"\r\n"
        at, k = at + len(piece), k + 1
    return out + b"0\r\n\r\n"


CHUNKED = "text/html; charset=utf-8\nTransfer-Encoding: chunked"
ARTICLE = "<html><body><article><p>The players rehearse the second act of the play with great care and patience.</p></article></body></html>"


def test_a_page_labelled_chunked_but_stored_de_chunked_is_kept_with_its_raw_body():
    got = parse(_framed(page("http://example.com/", ARTICLE, ctype=CHUNKED))[0], "warc")
    assert (got.reason, got.payload) == (None, ARTICLE.encode())
    text, why = extract_text(got.payload, got.charset, ExtractConfig())
    assert why is None and "rehearse the second act" in text


def test_a_page_in_chunked_encoding_is_still_de_chunked():
    got = parse(_framed(page("http://example.com/", _chunked(ARTICLE.encode(), [17, 5]), ctype=CHUNKED))[0], "warc")
    assert (got.reason, got.payload) == (None, ARTICLE.encode())


@given(
    text=st.text(st.characters(codec="utf-8"), max_size=200),
    stored_chunked=st.booleans(),
    gz=st.booleans(),
    sizes=st.lists(st.integers(1, 64), min_size=1, max_size=5),
)
def test_a_payload_labelled_chunked_reads_the_same_stored_either_way(text, stored_chunked, gz, sizes):
    html = f"<html><body><p>{text}</p></body></html>".encode()
    body = gzip.compress(html, mtime=0) if gz else html
    ctype = CHUNKED + ("\nContent-Encoding: gzip" if gz else "")
    got = parse(_framed(page("http://example.com/", _chunked(body, sizes) if stored_chunked else body, ctype=ctype))[0], "warc")
    assert (got.reason, got.payload) == (None, html)


def test_a_page_whose_charset_names_no_encoding_is_decoded_by_detection():
    body = "<html><body><article><p>Привет, мир. Это основной текст страницы, достаточно длинный для извлечения.</p></article></body></html>"
    got = parse(_framed(page("http://example.com/", body, ctype="text/html; charset=foobar-9"))[0], "warc")
    text, why = extract_text(got.payload, got.charset, ExtractConfig())
    assert got.charset == "foobar-9" and why is None and "Привет, мир" in text


def test_a_page_its_charset_does_not_fit_is_decoded_by_detection_not_as_mojibake():
    sj = "<html><body><article><p>日本語のテキストです。これは本文です。劇団は三か月前から大ホールで稽古を重ねています。</p></article></body></html>"
    text, why = extract_text(sj.encode("shift_jis"), "utf-8", ExtractConfig())
    assert why is None and "日本語のテキストです。これは本文です。" in text


def test_a_charset_that_fits_is_still_the_one_used():
    ru = "<html><body><article><p>Привет, мир. Это основной текст страницы, достаточно длинный.</p></article></body></html>"
    assert "Привет, мир" in extract_text(ru.encode("koi8-r"), "koi8-r", ExtractConfig())[0]
    # a label is read as browsers read it: latin1 is windows-1252, whose curly quotes Python's latin1 reads as controls
    quoted = "<html><body><p>The \u201cplayers\u201d rehearse the second act, a long enough sentence.</p></body></html>"
    assert "\u201cplayers\u201d" in extract_text(quoted.encode("windows-1252"), "latin1", ExtractConfig())[0]


def test_html_text_decodes_charsets_and_counts_failures():
    cfg = ExtractConfig()
    body = "<html><body><article><p>Привет, мир. Это основной текст страницы, достаточно длинный.</p></article></body></html>"
    assert "Привет" in extract_text(body.encode("windows-1251"), None, cfg)[0]  # no charset header: detected
    sj = '<html><head><meta charset="shift_jis"></head><body><p>日本語のテキストです。これは本文です。</p></body></html>'
    assert "日本語" in extract_text(sj.encode("shift_jis"), None, cfg)[0]  # from <meta charset>
    assert extract_text(b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR", "utf-8", cfg) == (None, "reject:binary")
    assert extract_text(b"<html><body><script>var x = 1;</script></body></html>", "utf-8", cfg) == (None, "filter:extract_empty")


def test_a_run_finished_before_the_extract_section_existed_is_still_this_recipes():
    from raylm.pipelines.config import DataConfig
    from raylm.pipelines.run import changed_keys

    wanted = DataConfig().model_dump(mode="json")
    older = {k: v for k, v in wanted.items() if k != "extract"}
    older["pii"] = {k: v for k, v in wanted["pii"].items() if k != "region"}  # a key added to a section later
    assert changed_keys(older, wanted) == []
    assert changed_keys(older, {**wanted, "extract": {**wanted["extract"], "main_content": False}}) == ["data.extract.main_content"]
    assert changed_keys(wanted, {**wanted, "clean": {**wanted["clean"], "enabled": False}}) == ["data.clean.enabled"]


def test_web_inputs_are_told_by_extension_or_format():
    from raylm.pipelines.config import DataConfig, InputSpec

    assert [InputSpec(path=p).is_web for p in ("a.warc.gz", "CC-1.warc.wet.gz", "s3://b/*.warc", "a.jsonl.gz", "warc.txt")] == [
        True,
        True,
        True,
        False,
        False,
    ]
    assert InputSpec(path="dump.bin", format="warc").is_web and not DataConfig().has_web


def test_both_engines_keep_the_article_and_drop_the_boilerplate():
    from raylm.pipelines.web_sample import BANNER, FOOTER, NAV, html_page

    article = " ".join(f"The players rehearse scene {i} of the second act with great care and much patience." for i in range(30))
    page = html_page("Rehearsals", article).encode()
    for engine in ("resiliparse", "trafilatura"):
        text, why = html_text(page, "utf-8", ExtractConfig(engine=engine))
        assert why is None, engine
        words = article.split()
        assert sum(w in text for w in words) / len(words) >= 0.95, engine
        # the boilerplate's own words (navigation, cookie banner, footer): at most 10% of them in the output
        boiler = {w for w in re.sub(r"<[^>]+>", " ", NAV + BANNER + FOOTER).split() if w not in article and len(w) > 2}
        out = set(text.split())
        assert len(boiler) > 15 and len(boiler & out) / len(boiler) <= 0.10, (engine, boiler & out)


def test_a_page_past_the_time_limit_is_rejected_and_the_next_page_gets_a_new_process():
    import time

    from raylm.pipelines.web_sample import html_page

    huge = html_page("Big", "\n\n".join(f"Paragraph {i} of a very long page about the theatre." for i in range(40000))).encode()
    box = Sandbox(ExtractConfig(engine="trafilatura", timeout_s=0.5))
    try:
        box._start()  # the process and its imports: not counted against a page
        t0 = time.perf_counter()
        assert box(huge, "utf-8") == (None, "reject:extract_timeout")
        assert time.perf_counter() - t0 < 1.5 and box.proc is None  # its process was killed, not waited for
        text, why = box(html_page("Small", "A short page about the players and their rehearsals of the play.").encode(), "utf-8")
        assert why is None and "rehearsals" in text
    finally:
        box.close()
