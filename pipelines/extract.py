"""HTML to text, the first step for web documents (WARC responses): the payload decoded (the HTTP header's
charset, else the page's <meta charset>, else detection) and its main text extracted by Resiliparse.

Outcomes besides a text: `reject:binary` (a payload that is no text, whatever its label),
`reject:extract_failed` (the extractor raised), `filter:extract_empty` (no main text on the page).
Documents that are not web pages (payload None) pass through untouched.
"""

from __future__ import annotations

from pipelines.config import ExtractConfig
from pipelines.stage import Chunk, Step

_SNIFF = 4096  # a NUL byte this early: a binary payload, whatever its Content-Type said


def decode_html(payload: bytes, charset: str | None) -> str:
    """The page as text: the server's charset, else <meta charset>, else uchardet (Resiliparse)."""
    from resiliparse.parse.encoding import bytes_to_str, detect_encoding

    enc = charset or detect_encoding(payload, from_html_meta=True)
    return bytes_to_str(payload, enc)


def html_text(payload: bytes, charset: str | None, cfg: ExtractConfig) -> tuple[str | None, str | None]:
    """(text, None), or (None, why) for a page that yields none."""
    if b"\x00" in payload[:_SNIFF]:
        return None, "reject:binary"
    try:
        from resiliparse.extract.html2text import extract_plain_text

        text = extract_plain_text(decode_html(payload, charset), main_content=cfg.main_content, preserve_formatting=True)
    except Exception:  # noqa: BLE001 - a page the extractor cannot handle costs that page only
        return None, "reject:extract_failed"
    return (text, None) if text.strip() else (None, "filter:extract_empty")


class Extract(Step):
    """Web pages to their main text; rewrites the chunk's texts, drops pages with none (see module doc)."""

    name = "extract"

    @classmethod
    def enabled(cls, cfg, enc) -> bool:
        return cfg.has_web

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
