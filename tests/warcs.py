"""Test WARC files: records written by FastWARC's own writer, then cut, lied about or mixed with junk by the tests."""

from __future__ import annotations

import gzip
import io
import uuid

from fastwarc.warc import WarcRecord, WarcRecordType

DATE = "2024-05-01T12:00:00Z"


def record(kind: str, uri: str = "", body: bytes = b"", http: str | None = None, headers: dict | None = None, rid: str | None = None) -> bytes:
    """One WARC record's bytes. `http`: a response's status line and headers (its payload is `body`)."""
    r = WarcRecord()
    r.init_headers(record_type=getattr(WarcRecordType, kind), record_urn=(rid or uuid.uuid4().urn[4:]).encode())
    r.headers["WARC-Date"] = DATE
    if uri:
        r.headers["WARC-Target-URI"] = uri
    for k, v in (headers or {}).items():
        r.headers[k] = v
    if http is not None:
        r.headers["Content-Type"] = "application/http; msgtype=response"
        body = http.replace("\n", "\r\n").encode() + b"\r\n\r\n" + body
    r.set_bytes_content(body)
    out = io.BytesIO()
    r.write(out)
    return out.getvalue()


def page(uri: str, html: str | bytes, status: str = "200 OK", ctype: str = "text/html; charset=utf-8", **kw) -> bytes:
    body = html.encode("utf-8") if isinstance(html, str) else html
    return record("response", uri, body, http=f"HTTP/1.1 {status}\nContent-Type: {ctype}", **kw)


def request(uri: str) -> bytes:
    return record(
        "request", uri, f"GET {uri} HTTP/1.1\r\nHost: example\r\n\r\n".encode(), headers={"Content-Type": "application/http; msgtype=request"}
    )


def per_record_gzip(records: list[bytes]) -> bytes:
    """Common Crawl's layout: one gzip member per record."""
    return b"".join(gzip.compress(r, mtime=0) for r in records)
