"""The elements of a JSON array (a `.json` file holding `[{...}, {...}]`), streamed.

`json.load` of the whole file would hold it in memory and lose every record to one damaged byte. Here the array
is cut into its elements' bytes at the commas and brackets outside strings, without parsing them: each element
is then parsed on its own (as a JSON Lines line is), so a damaged element costs itself only, and memory holds one
element, at most `max_bytes` of it.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Iterator

# outside strings: a whole string (skipped in one step), or a byte that matters (a `"` alone: a string the chunk cuts)
_OUTSIDE = re.compile(rb'"[^"\\]*(?:\\.[^"\\]*)*"|[][{},"]', re.S)
_INSIDE = re.compile(rb'["\\]')  # inside a string the chunk cut: its end, or an escape
_QUOTE, _BACKSLASH, _COMMA = ord('"'), ord("\\"), ord(",")
_OPEN, _CLOSE = b"[{", b"]}"

Item = tuple[bytes | None, int, str | None]  # (element's bytes, or None when over max_bytes; its size; reject reason)


_BOM = b"\xef\xbb\xbf"


def starts_array(stream: Iterable[bytes]) -> tuple[bool, Iterator[bytes]]:
    """Whether the stream's first byte after a UTF-8 byte-order mark and whitespace is `[`, and the stream whole again."""
    it, seen, lead, skip, pos = iter(stream), [], b"", None, 0  # skip: the BOM's bytes; pos: the next chunk of seen to look at
    for chunk in it:
        seen.append(chunk)
        if skip is None:
            lead = (lead + chunk)[:3]
            if len(lead) < 3 and _BOM.startswith(lead):  # a BOM may be cut between chunks
                continue
            skip = 3 if lead == _BOM else 0
        while pos < len(seen):
            rest, skip, pos = seen[pos][skip:].lstrip(), max(0, skip - len(seen[pos])), pos + 1
            if rest:
                return rest[:1] == b"[", _chain(seen, it)
    return False, _chain(seen, it)


def _chain(seen: list[bytes], it: Iterator[bytes]) -> Iterator[bytes]:
    yield from seen
    yield from it


class ArrayItems:
    """Feed the array's bytes chunk by chunk; each call yields the elements completed so far as Items. A stray
    closing bracket or an unterminated string makes its element malformed, not its neighbours (the element
    then runs to the next comma or bracket at the array's level). Bytes after the array's `]` are one more item,
    rejected as malformed_json unless they are whitespace."""

    def __init__(self, max_bytes: int):
        self.max_bytes = max_bytes
        self.depth = 0  # brackets open: 1 between the array's elements
        self.in_str = self.esc = False
        self.opened = self.closed = False
        self.parts: list[bytes] | None = []  # the element so far; None once it is over max_bytes
        self.size = 0
        self.count = 0  # elements cut so far

    def _keep(self, piece: bytes) -> None:
        self.size += len(piece)
        if self.parts is not None and self.size > self.max_bytes:
            self.parts = None  # too large: counted, never held
        elif self.parts is not None:
            self.parts.append(piece)

    def _cut(self, piece: bytes, last: bool) -> Iterator[Item]:
        """The element ending with `piece`; `[]` (no element before the closing bracket) is none."""
        self._keep(piece)
        raw = None if self.parts is None else b"".join(self.parts)
        if not (last and self.count == 0 and raw is not None and not raw.strip()):
            self.count += 1
            yield raw, self.size, None
        self.parts, self.size = [], 0

    def _structure(self, c: int) -> str | None:
        """Applies one structural byte outside strings; "cut" or "close" at the array's own commas and `]`."""
        if c == _QUOTE:
            self.in_str = True
        elif c in _OPEN:
            self.depth += 1
        elif self.depth == 1 and c == _COMMA:
            return "cut"
        elif self.depth == 1 and c == _CLOSE[0]:
            self.depth = 0
            return "close"
        elif self.depth > 1 and c in _CLOSE:
            self.depth -= 1
        return None  # a comma inside an element, or a stray `}` at the array's level (that element is malformed)

    def feed(self, chunk: bytes) -> Iterator[Item]:
        start, i, n = 0, 0, len(chunk)
        if not self.opened:  # the caller checked that only a BOM and whitespace come before the `[`
            i = start = chunk.find(b"[")
            if i < 0:
                return
            self.opened, self.depth, i, start = True, 1, i + 1, i + 1
        while i < n and not self.closed:
            if self.esc:
                self.esc, i = False, i + 1
                continue
            m = (_INSIDE if self.in_str else _OUTSIDE).search(chunk, i)
            if m is None:
                break
            i, c = m.end(), chunk[m.start()]
            if c == _QUOTE and not self.in_str and i - m.start() > 1:  # a whole string
                continue
            if self.in_str:
                self.esc, self.in_str = c == _BACKSLASH, c == _BACKSLASH
                continue
            what = self._structure(c)
            if what:
                yield from self._cut(chunk[start : m.start()], what == "close")
                start, self.closed = i, what == "close"
        self._keep(chunk[start:])  # the element so far, or bytes after the array

    def end(self) -> Iterator[Item]:
        """At the end of the stream: an element the array's end never closed (a file cut short), or what follows it."""
        raw = None if self.parts is None else b"".join(self.parts)
        if raw is not None and not raw.strip():
            return
        if self.closed:
            yield raw, self.size, "malformed_json"
        else:
            self.count += 1
            yield raw, self.size, None
