"""Byte streams of (compressed) input files that keep every byte before damage and say where it broke.

Python's GzipFile (and fsspec's wrappers) raise on a truncated member and drop what the failing read had
already decompressed, so the complete lines before the cut were lost with it. Here each codec's own
incremental decompressor is fed chunk by chunk: everything it produced is yielded first, then the damage
is raised as `Damaged`, which the reader turns into one reject row. Concatenated members/frames (`cat
a.gz b.gz`, pigz, multi-frame zstd) are read through.
"""
from __future__ import annotations

import bz2
import lzma
import zlib
from typing import BinaryIO, Callable, Iterator, Optional

import zstandard
from fsspec.utils import infer_compression

CHUNK = 1 << 20  # bytes read at a time
SLICE = 1 << 16  # compressed bytes fed at a time: what corrupt input can cost


class Damaged(Exception):
    """The stream ended early (`truncated`) or holds bytes the codec rejects (`corrupt`)."""

    def __init__(self, kind: str, detail: str = ""):
        super().__init__(f"{kind}: {detail}" if detail else kind)
        self.kind = kind
        self.partial = b""  # output decoded before the damage, not yet yielded


def _decompressor(compression: str) -> Callable[[], object]:
    return {
        "gzip": lambda: zlib.decompressobj(16 + zlib.MAX_WBITS),
        "bz2": bz2.BZ2Decompressor,
        "xz": lzma.LZMADecompressor,
        "lzma": lzma.LZMADecompressor,
        "zstd": lambda: zstandard.ZstdDecompressor().decompressobj(),
    }[compression]


_CODEC_ERRORS = (zlib.error, lzma.LZMAError, OSError, EOFError, zstandard.ZstdError)


def compression_of(path: str) -> Optional[str]:
    """gzip, bz2, xz, zstd or None, from the file name (as fsspec infers it)."""
    return infer_compression(path)


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
                    good.append(backup.decompress(raw[i: i + 256]))
            except _CODEC_ERRORS:
                pass
        err = Damaged("corrupt", str(e))
        err.partial = b"".join(good)
        raise err from None


def decompressed(f: BinaryIO, compression: Optional[str]) -> Iterator[bytes]:
    """The decompressed bytes of `f`, chunk by chunk; raises Damaged after the last good byte."""
    if compression is None:
        yield from iter(lambda: f.read(CHUNK), b"")
        return
    make = _decompressor(compression)
    d, fed = make(), False
    for chunk in iter(lambda: f.read(CHUNK), b""):
        for i in range(0, len(chunk), SLICE):
            raw = chunk[i: i + SLICE]
            while raw:
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
                raw = d.unused_data  # the next member/frame, if any
                d, fed = make(), False
                if compression == "gzip":
                    raw = raw.lstrip(b"\x00")  # some writers pad gzip files with zeros after the last member
    if fed and not d.eof:
        raise Damaged("truncated", "the compressed stream ends inside a member")
