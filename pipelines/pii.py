"""PII redaction: e-mail addresses, public IP addresses and (when on) phone numbers replaced by fixed
placeholders, after normalization and before the filters, dedup and tokenization; each kind counted
(stats.json: stages.process.counts.pii.<kind>). Offline: IPs are checked with `ipaddress` (private,
loopback, link-local and reserved ranges are left as they are), phone numbers validated by `phonenumbers`."""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Iterator
from functools import partial

from raylm.pipelines.stage import Chunk, Step

EMAIL, IP, PHONE = "<email>", "<ip>", "<phone>"
_EMAIL = re.compile(r"(?<![\w.+-])[A-Za-z0-9][A-Za-z0-9._%+-]{0,63}@(?:[A-Za-z0-9-]{1,63}\.)+[A-Za-z]{2,24}(?![\w-])")
# IP candidates are found from their first separator: a pattern that begins with a literal is searched at C
# speed, while one that begins with \d or a hex class costs ~30x more on prose (measured on the sample)
_IPV4_TAIL = re.compile(r"\.\d{1,3}\.\d{1,3}\.\d{1,3}")  # the address less its first number
_IPV6_HINT = re.compile(r":[0-9A-Fa-f]{0,4}:")
_HEX = frozenset("0123456789abcdefABCDEF:")


def _public_ip(s: str) -> bool:
    try:
        return ipaddress.ip_address(s).is_global
    except ValueError:
        return False


def _alone(text: str, start: int, end: int) -> bool:
    """No word character touches the span, nor a dot that makes it part of a longer number (a version, a date)."""
    before = text[start - 1] if start else " "
    after = text[end] if end < len(text) else " "
    if before.isalnum() or before in "._" or after.isalnum() or after == "_":
        return False
    return not (after == "." and text[end + 1 : end + 2].isdigit())


def _ipv4_spans(text: str) -> Iterator[tuple[int, int]]:
    for m in _IPV4_TAIL.finditer(text):
        start = m.start()
        while start > 0 and m.start() - start < 3 and text[start - 1].isdigit():
            start -= 1
        if start < m.start() and _alone(text, start, m.end()):
            yield start, m.end()


def _ipv6_spans(text: str) -> Iterator[tuple[int, int]]:
    last = -1
    for m in _IPV6_HINT.finditer(text):
        start, end = m.start(), m.end()
        if start < last:
            continue
        while start > 0 and text[start - 1] in _HEX and m.start() - start < 40:
            start -= 1
        while end < len(text) and text[end] in _HEX and end - m.start() < 40:
            end += 1
        last = end
        if _alone(text, start, end):
            yield start, end


def redact_ips(text: str) -> tuple[str, int]:
    spans = [sp for sp in (*_ipv4_spans(text), *(_ipv6_spans(text) if ":" in text else ())) if _public_ip(text[sp[0] : sp[1]])]
    for start, end in sorted(spans, reverse=True):
        text = text[:start] + IP + text[end:]
    return text, len(spans)


def redact_emails(text: str) -> tuple[str, int]:
    return _EMAIL.subn(EMAIL, text) if "@" in text else (text, 0)


def redact_phones(text: str, region: str) -> tuple[str, int]:
    import phonenumbers

    spans = [(m.start, m.end) for m in phonenumbers.PhoneNumberMatcher(text, region, leniency=phonenumbers.Leniency.VALID)]
    for start, end in reversed(spans):
        text = text[:start] + PHONE + text[end:]
    return text, len(spans)


class RedactPii(Step):
    name = "pii"

    @classmethod
    def enabled(cls, cfg) -> bool:
        return cfg.pii.enabled

    def __init__(self, cfg):
        super().__init__(cfg)
        p = cfg.pii
        every = {"email": redact_emails, "ip": redact_ips, "phone": partial(redact_phones, region=p.region)}
        self.redact = {k: f for k, f in every.items() if getattr(p, k) == "replace"}
        self.counts = {f"pii.{k}": 0 for k in self.redact}

    def __call__(self, chunk: Chunk) -> None:
        for k, text in enumerate(chunk.texts):
            if chunk.is_task(k):  # a task set's prompts and answers are the user's own examples
                continue
            for kind, redact in self.redact.items():
                text, n = redact(text)
                self.counts[f"pii.{kind}"] += n
            chunk.texts[k] = text
