"""HTML to text, the first step for web documents (WARC responses): the payload decoded (in the first of the HTTP
header's charset, the page's <meta charset> and detection that decodes it cleanly) and its text extracted by
Resiliparse (the default) or trafilatura (`data.extract.engine`), within `data.extract.timeout_s` a page.

Outcomes besides a text: `reject:binary` (a payload that is no text, whatever its label),
`reject:extract_failed` (the extractor raised), `reject:extract_timeout` (it ran past the limit),
`filter:extract_empty` (no main text on the page). Documents that are not web pages (payload None) pass
through untouched.
"""

from __future__ import annotations

import os
import pickle
import select
import struct
import subprocess
import sys
from collections.abc import Callable, Iterator

from raylm.pipelines.config import ExtractConfig
from raylm.pipelines.stage import Chunk, Step

_SNIFF = 4096  # a NUL byte this early: a binary payload, whatever its Content-Type said


def _encodings(payload: bytes, charset: str | None) -> Iterator[str | None]:
    """The encodings a page may be in, most trusted first, each found only when asked for: the server's charset
    (None if it names no encoding; read as browsers read labels, WHATWG: latin1 is windows-1252), the page's
    <meta charset>, uchardet's guess (Resiliparse)."""
    from resiliparse.parse.encoding import detect_encoding, map_encoding_to_html5

    if charset:
        yield map_encoding_to_html5(charset, fallback_utf8=False)
    yield detect_encoding(payload, from_html_meta=True)
    yield detect_encoding(payload)


def decode_html(payload: bytes, charset: str | None) -> str:
    """The page as text, in the first encoding that decodes it cleanly, else in the guess, dropping what does not
    decode: a label is not believed when it names no encoding (`charset=foobar-9`) or the bytes do not fit it (a
    Shift-JIS page labelled utf-8)."""
    from resiliparse.parse.encoding import bytes_to_str

    enc = None
    for enc in filter(None, _encodings(payload, charset)):
        try:
            return bytes_to_str(payload, enc, errors="strict", fallback_encodings=())
        except UnicodeError:
            pass
    return bytes_to_str(payload, enc or "utf-8")


def _resiliparse(html: str, cfg: ExtractConfig) -> str:
    from resiliparse.extract.html2text import extract_plain_text

    return extract_plain_text(html, main_content=cfg.main_content, preserve_formatting=True)


def _trafilatura(html: str, cfg: ExtractConfig) -> str:
    import trafilatura

    return trafilatura.extract(html, include_comments=False, include_tables=True, favor_precision=cfg.main_content) or ""


ENGINES: dict[str, Callable[[str, ExtractConfig], str]] = {"resiliparse": _resiliparse, "trafilatura": _trafilatura}


def extract_text(payload: bytes, charset: str | None, cfg: ExtractConfig) -> tuple[str | None, str | None]:
    """(text, None), or (None, why) for a page that yields none; in this process, with no time limit."""
    if b"\x00" in payload[:_SNIFF]:
        return None, "reject:binary"
    try:
        text = ENGINES[cfg.engine](decode_html(payload, charset), cfg)
    except Exception:  # noqa: BLE001 - a page the extractor cannot handle costs that page only
        return None, "reject:extract_failed"
    return (text, None) if text.strip() else (None, "filter:extract_empty")


class Sandbox:
    """extract_text in a child process (`python -m pipelines.extract`), as datatrove's ExtractorSandbox does: a
    page that takes longer than cfg.timeout_s has its child killed (the next page starts a new one). Ray Data
    runs a UDF off the main thread, where no signal-based limit can interrupt a C extractor."""

    def __init__(self, cfg: ExtractConfig):
        self.cfg, self.proc = cfg, None

    def _start(self) -> None:
        self.proc = subprocess.Popen([sys.executable, "-m", "raylm.pipelines.extract"], stdin=subprocess.PIPE, stdout=subprocess.PIPE)
        _send(self.proc.stdin, self.cfg.model_dump())
        if _recv(self.proc.stdout) != "ready":  # imports done: they do not count against a page's time
            raise RuntimeError("the extraction process did not start")

    def __call__(self, payload: bytes, charset: str | None) -> tuple[str | None, str | None]:
        if self.proc is None or self.proc.poll() is not None:
            self._start()
        _send(self.proc.stdin, (payload, charset))
        ready, _, _ = select.select([self.proc.stdout], [], [], self.cfg.timeout_s)
        if ready:
            return _recv(self.proc.stdout)
        self.close()
        return None, "reject:extract_timeout"

    def close(self) -> None:
        if self.proc is not None:
            self.proc.kill()
            self.proc.wait()
            self.proc = None


def _send(f, obj) -> None:
    data = pickle.dumps(obj, protocol=pickle.HIGHEST_PROTOCOL)
    f.write(struct.pack("<Q", len(data)) + data)
    f.flush()


def _recv(f):
    head = f.read(8)
    if len(head) < 8:
        raise EOFError("the extraction process ended")
    (n,) = struct.unpack("<Q", head)
    return pickle.loads(f.read(n))


def html_text(payload: bytes, charset: str | None, cfg: ExtractConfig) -> tuple[str | None, str | None]:
    """extract_text within cfg.timeout_s, in a sandbox of its own (a one-off: the step keeps one per actor)."""
    box = Sandbox(cfg)
    try:
        return box(payload, charset)
    finally:
        box.close()


def _serve() -> None:
    """The child's loop: the config, then (payload, charset) -> (text, why) until stdin closes."""
    src, out = sys.stdin.buffer, os.fdopen(os.dup(1), "wb")
    os.dup2(2, 1)  # whatever an extractor prints goes to stderr, not into the replies
    cfg = ExtractConfig(**_recv(src))
    ENGINES[cfg.engine]("<html></html>", cfg)  # imports the engine before the first timed page
    _send(out, "ready")
    while True:
        try:
            payload, charset = _recv(src)
        except EOFError:
            return
        _send(out, extract_text(payload, charset, cfg))


class Extract(Step):
    """Web pages to their main text; rewrites the chunk's texts, drops pages with none (see module doc)."""

    name = "extract"

    @classmethod
    def enabled(cls, cfg) -> bool:
        return cfg.has_web

    def __init__(self, cfg):
        super().__init__(cfg)
        if cfg.extract.engine == "trafilatura":
            try:
                import trafilatura  # noqa: F401
            except ImportError as e:
                raise RuntimeError('data.extract.engine: trafilatura is not installed (pip install "raylm[trafilatura]")') from e
        self.sandbox = Sandbox(cfg.extract)

    def __call__(self, chunk: Chunk) -> None:
        b, verdicts = chunk.block, []
        for k, i in enumerate(chunk.rows):
            if b.payloads[i] is None:
                verdicts.append(None)
                continue
            text, why = self.sandbox(b.payloads[i], b.charsets[i])
            chunk.texts[k] = text
            verdicts.append(why)
        chunk.drop(verdicts)


if __name__ == "__main__":
    _serve()
