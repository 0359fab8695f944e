"""PII redaction: e-mail addresses, public IP addresses and (when on) phone numbers replaced by fixed
placeholders, after normalization and before the filters, dedup and tokenization; each kind counted
(stats.json: stages.process.counts.pii.<kind>). Offline: IPs are checked with `ipaddress` (private,
loopback, link-local and reserved ranges are left as they are), phone numbers validated by `phonenumbers`."""

from __future__ import annotations

import ipaddress
import re
from functools import partial

from pipelines.stage import Chunk, Step

EMAIL, IP, PHONE = "<email>", "<ip>", "<phone>"
_EMAIL = re.compile(r"(?<![\w.+-])[A-Za-z0-9][A-Za-z0-9._%+-]{0,63}@(?:[A-Za-z0-9-]{1,63}\.)+[A-Za-z]{2,24}(?![\w-])")
_IPV4 = re.compile(r"(?<![\w.])(?:\d{1,3}\.){3}\d{1,3}(?!\w|\.\d)")  # not inside a longer dotted number
_IPV6 = re.compile(r"(?<![\w:.])(?:[0-9A-Fa-f]{0,4}:){2,7}[0-9A-Fa-f]{0,4}(?![\w:])")


def _public_ip(s: str) -> bool:
    try:
        return ipaddress.ip_address(s).is_global
    except ValueError:
        return False


def redact_emails(text: str) -> tuple[str, int]:
    return _EMAIL.subn(EMAIL, text) if "@" in text else (text, 0)


def redact_ips(text: str) -> tuple[str, int]:
    n = 0

    def sub(m: re.Match) -> str:
        nonlocal n
        if _public_ip(m.group(0)):
            n += 1
            return IP
        return m.group(0)

    if "." in text:
        text = _IPV4.sub(sub, text)
    if "::" in text or text.count(":") >= 7:
        text = _IPV6.sub(sub, text)
    return text, n


def redact_phones(text: str, region: str) -> tuple[str, int]:
    import phonenumbers

    spans = [(m.start, m.end) for m in phonenumbers.PhoneNumberMatcher(text, region, leniency=phonenumbers.Leniency.VALID)]
    for start, end in reversed(spans):
        text = text[:start] + PHONE + text[end:]
    return text, len(spans)


class RedactPii(Step):
    name = "pii"

    @classmethod
    def enabled(cls, cfg, enc) -> bool:
        return cfg.pii.enabled

    def __init__(self, cfg, enc):
        super().__init__(cfg, enc)
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
