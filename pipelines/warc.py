"""Web crawl input: WARC and WET files, record by record, each record one row.

Where one record ends and the next begins is decided here, on the decompressed byte stream, so that
damage stays local: a record whose Content-Length lies, bytes that are no record, or a file cut short
cost the damaged record only, and every intact record before and after it is read. (FastWARC's own
iterator, measured on such files, returns a cut record with an empty body as if it were whole, and
loses every record after a lying Content-Length; warcio stops at the first.) Each framed record is then
parsed by FastWARC (`WarcRecord.from_bytes`, `parse_http`).

A record becomes a document (an HTML response with HTTP 200, or a WET conversion record), a skip
(`skip:not_html`, `skip:http_status`, `skip:revisit`, `skip:request_or_metadata`), or a reject
(`warc_truncated`, `warc_bad_length`, `warc_garbage`, `warc_bad_header`, `http_bad_header`, `too_large`).
Its `src` is `file:offset`, the offset of the record in the decompressed WARC stream.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Iterator
from dataclasses import dataclass

MAGIC = b"WARC/1."
_END = b"\r\n\r\n"
HEADER_MAX = 1 << 16  # a WARC header longer than this is damage, not a header
_LENGTH = re.compile(rb"\r\ncontent-length:[ \t]*(\d+)[ \t]*\r\n", re.IGNORECASE)
HTML_TYPES = ("text/html", "application/xhtml+xml")


@dataclass
class Framed:
    """One record's bytes as framed in the stream: `raw` (header and block, without the closing CRLFs), or
    None with `damage` saying why it could not be framed."""

    offset: int
    size: int
    raw: bytes | None = None
    damage: str | None = None


class _Buffer:
    """The decompressed stream with a movable start: bytes before `pos` are dropped as the reader moves on."""

    def __init__(self, chunks: Iterable[bytes], base: int = 0):
        self.chunks, self.buf, self.base, self.eof = iter(chunks), bytearray(), base, False

    def fill(self, n: int) -> bool:
        """At least n bytes buffered from the start (False: the stream ended first)."""
        while len(self.buf) < n and not self.eof:
            chunk = next(self.chunks, None)
            if chunk is None:
                self.eof = True
            else:
                self.buf += chunk
        return len(self.buf) >= n

    def drop(self, n: int) -> None:
        del self.buf[:n]
        self.base += n

    def find(self, sub: bytes, start: int, limit: int | None = None) -> int:
        """Index of `sub` at or after `start` (reading on as needed, up to `limit` bytes buffered); -1 if none."""
        seen = start
        while True:
            i = self.buf.find(sub, seen)
            if i >= 0:
                return i
            seen = max(start, len(self.buf) - len(sub) + 1)
            if (limit is not None and len(self.buf) >= limit) or not self.fill(len(self.buf) + 1):
                return -1


def _drop_to_header(b: _Buffer, start: int) -> tuple[int, bool]:
    """Drops the bytes up to the next line that starts a WARC header at or after `start` (or to the end of
    the stream), streaming: (how many, whether any was more than blank lines)."""
    dropped, text = 0, False

    def drop(n: int) -> None:
        nonlocal dropped, text
        text = text or bool(bytes(b.buf[:n]).strip())
        b.drop(n)
        dropped += n

    drop(max(0, start - 1))  # from the byte before: a header may begin at `start` itself
    while True:
        i = b.buf.find(b"\n" + MAGIC)
        if i >= 0:
            drop(i + 1)
            return dropped, text
        drop(max(0, len(b.buf) - len(MAGIC)))  # keep a tail: a header's first line may straddle two chunks
        if not b.fill(len(b.buf) + 1):
            drop(len(b.buf))
            return dropped, text


def frames(chunks: Iterable[bytes], max_bytes: int, base: int = 0) -> Iterator[Framed]:
    """Each record of a decompressed WARC stream, framed by its Content-Length and checked by its closing
    CRLFs; memory holds one record (one over max_bytes is skipped through, never held). Offsets count from
    `base` (where the stream starts in the file's output). A length that lies and lands exactly on two CRLFs
    inside its own block cannot be told from a record followed by junk: the record is framed short, and the
    rest of its block is one `warc_garbage` reject."""
    b = _Buffer(chunks, base)
    while True:
        while b.fill(1) and b.buf[:1] in (b"\r", b"\n"):  # blank lines between records
            b.drop(1)
        if not b.buf:
            return
        if not b.fill(len(MAGIC)) and MAGIC.startswith(b.buf):  # cut inside a header's first bytes
            yield Framed(b.base, len(b.buf), damage="warc_truncated")
            return
        if not b.buf.startswith(MAGIC):
            offset = b.base
            size, text = _drop_to_header(b, 1)
            if text:  # bytes that are no record: one reject, then the next header
                yield Framed(offset, size, damage="warc_garbage")
            continue
        yield from _one(b, max_bytes)


def _one(b: _Buffer, max_bytes: int) -> Iterator[Framed]:
    offset = b.base
    he = b.find(_END, 0, HEADER_MAX)
    if he < 0:
        if b.eof and len(b.buf) < HEADER_MAX:
            yield Framed(offset, len(b.buf), damage="warc_truncated")
            b.drop(len(b.buf))
        else:
            yield from _bad(b, offset, "warc_bad_header", 1)
        return
    m = _LENGTH.search(bytes(b.buf[: he + 2]))
    if m is None:
        yield from _bad(b, offset, "warc_bad_header", he)
        return
    end = he + 4 + int(m.group(1))  # the block ends here; two CRLFs close the record
    if end > max_bytes:
        yield from _skip_large(b, offset, he, end)
        return
    if not b.fill(end + 4):  # cut short, or a length that runs past the end of the file (a header inside says which)
        size, _ = _drop_to_header(b, he + 4)
        yield Framed(offset, size, damage="warc_truncated" if b.eof and not b.buf else "warc_bad_length")
        return
    # a length that lies: the block is not closed by two CRLFs, or it swallowed whole records (a record's end
    # then a header inside it); the records it swallowed are read again
    if b.buf[end : end + 4] != _END or b.buf.find(_END + MAGIC, he, end) >= 0:
        yield from _bad(b, offset, "warc_bad_length", he + 4)
        return
    yield Framed(offset, end + 4, raw=bytes(b.buf[:end]))
    b.drop(end + 4)


def _bad(b: _Buffer, offset: int, why: str, scan_from: int) -> Iterator[Framed]:
    """A record that cannot be framed: one reject, then reading goes on at the next header after `scan_from`."""
    size, _ = _drop_to_header(b, scan_from)
    yield Framed(offset, size, damage=why)


def _skip_large(b: _Buffer, offset: int, he: int, end: int) -> Iterator[Framed]:
    """A record over max_bytes: read through without holding it, and checked as one that fits is (_one). Its
    length lies if its block holds a record's end then a header (it swallowed the records after it, which are
    read again, however far it claims to reach) or is not closed by two CRLFs; else it is `too_large`.
    Positions count from the record's start (`he` its header's end, `end` its block's); `done` of its bytes
    have been dropped."""
    pat, done = _END + MAGIC, 0
    while True:
        i = b.buf.find(pat, max(0, he - done), end - done)
        if i >= 0:
            b.drop(i + 4)
            yield Framed(offset, done + i + 4, damage="warc_bad_length")
            return
        if len(b.buf) >= end - done + 4 or b.eof:
            break
        n = max(0, len(b.buf) - len(pat) + 1)  # keep a tail: a record's end and the next header may straddle two chunks
        b.drop(n)
        done += n
        b.fill(len(b.buf) + 1)
    whole = len(b.buf) >= end - done + 4  # the block and the bytes that should close it were read
    if whole and b.buf[end - done : end - done + 4] == _END:
        b.drop(end - done + 4)
        yield Framed(offset, end + 4, damage="too_large")
        return
    # not closed where its length says, or cut short: as for a record that fits (_one), reading goes on at the next header
    size, _ = _drop_to_header(b, max(0, he + 4 - done))
    yield Framed(offset, done + size, damage="warc_bad_length" if whole or b.buf else "warc_truncated")


@dataclass
class WebRecord:
    """What a framed record is to the data stage: a document (payload set, reason None) or a reason."""

    offset: int
    size: int
    reason: str | None = None  # skip:... or a reject reason
    id: str | None = None  # WARC-Record-ID
    url: str | None = None
    date: str | None = None  # WARC-Date
    payload: bytes | None = None  # the HTTP body (warc) or the converted text (wet)
    charset: str | None = None  # from the HTTP Content-Type header


def _is_html(r) -> bool:
    # the crawler's own sniffing (Common Crawl: WARC-Identified-Payload-Type) beats the server's claim
    kind = r.headers.get("WARC-Identified-Payload-Type") or r.http_content_type or ""
    return kind.split(";")[0].strip().lower() in HTML_TYPES


def parse(f: Framed, fmt: str) -> WebRecord:
    """The framed record classified: `fmt` is warc (HTML responses are documents) or wet (conversions are)."""
    from fastwarc.warc import WarcRecord, WarcRecordType

    out = WebRecord(f.offset, f.size, reason=f.damage)
    if f.raw is None:
        return out
    try:
        r = WarcRecord.from_bytes(f.raw)
    except OSError:
        out.reason = "warc_bad_header"
        return out
    out.id, out.url, out.date = r.record_id, r.headers.get("WARC-Target-URI"), r.headers.get("WARC-Date")
    t = r.record_type
    if fmt == "wet" or t == WarcRecordType.conversion:
        if t != WarcRecordType.conversion:
            out.reason = "skip:request_or_metadata"
        else:
            out.payload = r.reader.read()
        return out
    if t == WarcRecordType.revisit:
        out.reason = "skip:revisit"
    elif t != WarcRecordType.response:
        out.reason = "skip:request_or_metadata"
    else:
        out.reason = _response(r, out)
        if out.reason == "http_bad_payload" and _labelled_chunked(f.raw):
            # a body labelled chunked but stored de-chunked, as many archiving crawlers do: its raw body (as
            # warcio reads it), with its content encoding still decoded
            out.reason = _response(WarcRecord.from_bytes(f.raw), out, "content")
    return out


def _response(r, out: WebRecord, decode: str = "all") -> str | None:
    try:
        r.parse_http(auto_decode=decode)
        if r.http_headers is None:
            return "skip:not_html"
        if r.http_headers.status_code != 200:
            return "skip:http_status"
        if not _is_html(r):
            return "skip:not_html"
        out.payload, out.charset = r.reader.read(), r.http_charset
    except OSError:  # HTTP headers or a content/transfer encoding that cannot be decoded
        return "http_bad_payload"
    return None


def _labelled_chunked(raw: bytes) -> bool:
    """Whether the record's HTTP headers say `Transfer-Encoding: chunked`."""
    from fastwarc.warc import WarcRecord

    r = WarcRecord.from_bytes(raw)
    try:
        r.parse_http(auto_decode="none")
    except OSError:
        return False
    te = r.http_headers.get("Transfer-Encoding") if r.http_headers is not None else None
    return "chunked" in (te or "").lower()
