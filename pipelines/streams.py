"""Byte streams of (compressed) input files that keep every byte before damage and say where it broke.

Python's GzipFile (and fsspec's wrappers) raise on a truncated member and drop what the failing read had
already decompressed, so the complete lines before the cut were lost with it. Here each codec's own
incremental decompressor is fed chunk by chunk: everything it produced is yielded first, then the damage
is raised as `Damaged`, which the reader turns into one reject row. Concatenated members/streams/frames (`cat
a.gz b.gz`, pigz, multi-stream xz with its stream padding, multi-frame zstd) are read through.
"""

from __future__ import annotations

import bz2
import lzma
import zlib
from collections.abc import Callable, Iterator
from typing import BinaryIO

import zstandard

CHUNK = 1 << 20  # bytes read at a time
SLICE = 1 << 16  # compressed bytes fed at a time: what corrupt input can cost


class Damaged(Exception):
    """The stream ended early (`truncated`) or holds bytes the codec rejects (`corrupt`)."""

    def __init__(self, kind: str, detail: str = ""):
        super().__init__(f"{kind}: {detail}" if detail else kind)
        self.kind = kind
        self.partial = b""  # output decoded before the damage, not yet yielded
        self.streamed = False  # resyncing gzip: some of the damaged member's output went out before the damage


def _decompressor(compression: str) -> Callable[[], object]:
    return {
        "gzip": lambda: zlib.decompressobj(16 + zlib.MAX_WBITS),
        "bz2": bz2.BZ2Decompressor,
        "xz": lzma.LZMADecompressor,  # FORMAT_AUTO: .xz and legacy .lzma
        "zstd": lambda: zstandard.ZstdDecompressor().decompressobj(),
    }[compression]


_CODEC_ERRORS = (zlib.error, lzma.LZMAError, OSError, EOFError, zstandard.ZstdError)


# the one table of compressed-file suffixes (format detection strips them, the reader decompresses them)
CODECS = {".gz": "gzip", ".zst": "zstd", ".zstd": "zstd", ".bz2": "bz2", ".xz": "xz", ".lzma": "xz"}
_ARCHIVES = (".zip", ".tar", ".7z", ".lz4", ".snappy", ".br", ".tgz")  # containers or codecs not read: say so


def compression_of(path: str) -> str | None:
    """gzip, zstd, bz2, xz or None (plain), from the file name; ValueError for a kind that is not read."""
    name = path.lower()
    for suffix, codec in CODECS.items():
        if name.endswith(suffix):
            return codec
    if name.endswith(_ARCHIVES):
        raise ValueError(f"{path}: {name.rsplit('.', 1)[-1]} files are not read; decompress it, or recompress it as .gz or .zst")
    return None


def strip_compression(path: str) -> str:
    """The file name without its compression suffix (data.jsonl.zst -> data.jsonl)."""
    name = path.lower()
    return next((path[: -len(s)] for s in CODECS if name.endswith(s)), path)


def _decompress(d, raw: bytes) -> bytes:
    """d.decompress(raw); on corrupt input raises Damaged carrying the output decoded before the damage.
    A failing call returns nothing, so zlib (the common case) replays the slice from a copy of its state in
    small pieces; the other codecs lose at most one slice's output."""
    backup = d.copy() if hasattr(d, "copy") else None
    try:
        return d.decompress(raw)
    except _CODEC_ERRORS as e:
        good = []
        if backup is not None:
            try:
                for i in range(0, len(raw), 256):
                    good.append(backup.decompress(raw[i : i + 256]))
            except _CODEC_ERRORS:
                pass
        err = Damaged("corrupt", str(e))
        err.partial = b"".join(good)
        raise err from None


def decompressed(f: BinaryIO, compression: str | None, resync: bool = False) -> Iterator[bytes | Damaged]:
    """The decompressed bytes of `f`, chunk by chunk; raises Damaged after the last good byte.

    resync (gzip only, `f` seekable): a corrupt member costs that member only, as a WARC needs, whose
    writers put one record in each member: the stream yields a Damaged marker where the member's output
    would have been, then goes on at the next gzip member header after the member's start (see members)."""
    if compression is None:
        yield from iter(lambda: f.read(CHUNK), b"")
        return
    if resync and compression == "gzip":
        yield from members(f)
        return
    yield from _concatenated(f, compression)


# zero bytes allowed after a member/stream, in units: some gzip writers pad files with zeros after the last member;
# xz's Stream Padding (between and after streams, as `xz -dc` reads it) is a multiple of 4 bytes
_PADDING = {"gzip": 1, "xz": 4}


def _check_padding(compression: str, size: int) -> None:
    unit = _PADDING[compression]
    if size % unit:
        raise Damaged("corrupt", f"{size} bytes of stream padding, not a multiple of {unit}")


def _concatenated(f: BinaryIO, compression: str) -> Iterator[bytes]:
    """The output of every member/stream/frame of `f` in turn, a new decompressor for each, the padding between
    them skipped (it may span reads); raises Damaged after the last good byte."""
    make = _decompressor(compression)
    d, fed, pad = make(), False, None  # pad: padding bytes since the last member ended (None: inside one, or at the start)
    for chunk in iter(lambda: f.read(CHUNK), b""):
        for i in range(0, len(chunk), SLICE):
            raw = chunk[i : i + SLICE]
            while raw:
                if pad is not None and compression in _PADDING:
                    rest = raw.lstrip(b"\x00")
                    pad, raw = pad + len(raw) - len(rest), rest
                    if not raw:
                        break
                    _check_padding(compression, pad)
                pad = None
                try:
                    out = _decompress(d, raw)
                except Damaged as e:
                    if e.partial:
                        yield e.partial
                    raise
                fed = True
                if out:
                    yield out
                if not d.eof:
                    break
                raw = d.unused_data  # the next member/stream/frame, if any
                d, fed, pad = make(), False, 0
    if fed and not d.eof:
        raise Damaged("truncated", "the compressed stream ends inside a member")
    if pad:
        _check_padding(compression, pad)


_GZIP_MAGIC = b"\x1f\x8b\x08"  # a gzip member header: ID1, ID2, CM=deflate
HOLD = 1 << 24  # a member's output is held back until its CRC checks, up to this many bytes


def _next_member(f: BinaryIO, after: int) -> int | None:
    """Offset of the first gzip member header in `f` after offset `after`, or None."""
    pos, tail = after + 1, b""
    f.seek(pos)
    while chunk := f.read(CHUNK):
        i = (tail + chunk).find(_GZIP_MAGIC)
        if i >= 0:
            return pos - len(tail) + i
        tail, pos = chunk[-(len(_GZIP_MAGIC) - 1) :], pos + len(chunk)
    return None


def _member(f: BinaryIO, start: int, pending: bytes) -> Iterator[bytes]:
    """One gzip member's output from offset `start`, held back until the member ends (its CRC checked), so a
    corrupt member yields nothing; one larger than HOLD (a whole-file gzip) streams, as without resync, and
    keeps the bytes before its damage. `pending`: bytes of `f` from `start` already read (the file is then at
    start + len(pending)). Returns where the next member starts (None at the end of the file) and its bytes read;
    raises Damaged: corrupt (`streamed` when some of its output went out), or truncated by the end of the
    file (`partial`: the output not yet yielded)."""
    if not pending:
        f.seek(start)
    d, held, pos, size = zlib.decompressobj(16 + zlib.MAX_WBITS), [], start, 0
    while chunk := pending or f.read(SLICE):
        pending = b""
        try:
            # only a streaming member keeps the bytes before its damage: _decompress's replay (a copy of the
            # zlib state per call) would be wasted on a held member, whose output is dropped whole
            out = _decompress(d, chunk) if size > HOLD else d.decompress(chunk)
        except _CODEC_ERRORS as e:
            raise Damaged("corrupt", str(e)) from None
        except Damaged as e:
            e.streamed = True
            yield e.partial
            e.partial = b""
            raise
        held.append(out)
        size += len(out)
        if size > HOLD:
            yield from held
            held.clear()
        if d.eof:
            yield from held
            rest = d.unused_data.lstrip(b"\x00")  # zero padding after a member is no member
            return pos + len(chunk) - len(rest), rest
        pos += len(chunk)
    if pos == start:
        return None, b""
    err = Damaged("truncated", "the compressed stream ends inside a member")
    err.partial = b"".join(held)  # not yet yielded: members decides
    raise err


def members(f: BinaryIO) -> Iterator[bytes | Damaged]:
    """A many-member gzip file's output, member by member; a corrupt member is a Damaged marker in the stream,
    and reading goes on at the next member header after its start. A header found there by chance (inside
    compressed data) fails before any output and is passed over silently; a truncated last member raises."""
    start, pending, resyncing = 0, b"", False
    while start is not None:
        try:
            start, pending = yield from _member(f, start, pending)
            resyncing = False
        except Damaged as e:
            nxt = _next_member(f, start)
            if e.kind == "truncated" and nxt is None:  # the file was cut inside its last member: keep what it held
                yield e.partial
                e.partial = b""
                raise
            # corrupt; or "truncated" because damage made the member's deflate data run on into the next members
            if not resyncing or e.streamed:
                e.kind, e.partial = "corrupt", b""
                yield e
            start, pending, resyncing = nxt, b"", True
