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


def decompressed(f: BinaryIO, compression: str | None) -> Iterator[bytes]:
    """The decompressed bytes of `f`, chunk by chunk; raises Damaged after the last good byte."""
    if compression is None:
        yield from iter(lambda: f.read(CHUNK), b"")
        return
    make = _decompressor(compression)
    d, fed = make(), False
    for chunk in iter(lambda: f.read(CHUNK), b""):
        for i in range(0, len(chunk), SLICE):
            raw = chunk[i : i + SLICE]
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
