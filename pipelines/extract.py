"""HTML to text, the first step for web documents (WARC responses): the payload decoded (the HTTP header's
charset, else the page's <meta charset>, else detection) and its text extracted by Resiliparse (the default)
or trafilatura (`data.extract.engine`), within `data.extract.timeout_s` a page.

Outcomes besides a text: `reject:binary` (a payload that is no text, whatever its label),
`reject:extract_failed` (the extractor raised), `reject:extract_timeout` (it ran past the limit),
`filter:extract_empty` (no main text on the page). Documents that are not web pages (payload None) pass
through untouched.
"""

from __future__ import annotations

import signal
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager

from pipelines.config import ExtractConfig
from pipelines.stage import Chunk, Step

_SNIFF = 4096  # a NUL byte this early: a binary payload, whatever its Content-Type said


def decode_html(payload: bytes, charset: str | None) -> str:
    """The page as text: the server's charset, else <meta charset>, else uchardet (Resiliparse)."""
    from resiliparse.parse.encoding import bytes_to_str, detect_encoding

    enc = charset or detect_encoding(payload, from_html_meta=True)
    return bytes_to_str(payload, enc)


def _resiliparse(html: str, cfg: ExtractConfig) -> str:
    from resiliparse.extract.html2text import extract_plain_text

    return extract_plain_text(html, main_content=cfg.main_content, preserve_formatting=True)


def _trafilatura(html: str, cfg: ExtractConfig) -> str:
    import trafilatura

    return trafilatura.extract(html, include_comments=False, include_tables=True, favor_precision=cfg.main_content) or ""


ENGINES: dict[str, Callable[[str, ExtractConfig], str]] = {"resiliparse": _resiliparse, "trafilatura": _trafilatura}


class ExtractTimeout(BaseException):
    """A BaseException, so that an extractor's own `except Exception` cannot swallow it."""


@contextmanager
def time_limit(seconds: float) -> Iterator[None]:
    """Raises ExtractTimeout in the block after `seconds` (SIGALRM: it interrupts Python code, and a C call
    once it returns). Needs the main thread, where Ray runs the tasks of an actor with max_concurrency 1."""

    def expire(signum, frame):
        raise ExtractTimeout

    old = signal.signal(signal.SIGALRM, expire)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, old)


def html_text(payload: bytes, charset: str | None, cfg: ExtractConfig) -> tuple[str | None, str | None]:
    """(text, None), or (None, why) for a page that yields none."""
    if threading.current_thread() is not threading.main_thread():  # loudly: never a page run without its limit
        raise RuntimeError("extraction time limits need the main thread (an actor with max_concurrency 1)")
    if b"\x00" in payload[:_SNIFF]:
        return None, "reject:binary"
    try:
        with time_limit(cfg.timeout_s):
            text = ENGINES[cfg.engine](decode_html(payload, charset), cfg)
    except ExtractTimeout:
        return None, "reject:extract_timeout"
    except Exception:  # noqa: BLE001 - a page the extractor cannot handle costs that page only
        return None, "reject:extract_failed"
    return (text, None) if text.strip() else (None, "filter:extract_empty")


class Extract(Step):
    """Web pages to their main text; rewrites the chunk's texts, drops pages with none (see module doc)."""

    name = "extract"

    @classmethod
    def enabled(cls, cfg, enc) -> bool:
        return cfg.has_web

    def __init__(self, cfg, enc):
        super().__init__(cfg, enc)
        if cfg.extract.engine == "trafilatura":
            try:
                import trafilatura  # noqa: F401
            except ImportError as e:
                raise RuntimeError('data.extract.engine: trafilatura is not installed (pip install "raylm[trafilatura]")') from e

    def __call__(self, chunk: Chunk) -> None:
        b, verdicts = chunk.block, []
        for k, i in enumerate(chunk.rows):
            if b.payloads[i] is None:
                verdicts.append(None)
                continue
            text, why = html_text(b.payloads[i], b.charsets[i], self.cfg.extract)
            chunk.texts[k] = text
            verdicts.append(why)
        chunk.drop(verdicts)
