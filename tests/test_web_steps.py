"""The web steps alone, without Ray: URL blocklists (offline registered domains) and PII redaction."""

import ipaddress

from hypothesis import given
from hypothesis import strategies as st

from raylm.pipelines.pii import EMAIL, IP, PHONE, redact_emails, redact_ips, redact_phones
from raylm.pipelines.url_filter import Blocklist, read_list


def test_list_files_have_comments_and_blank_lines(tmp_path):
    p = tmp_path / "domains.txt"
    p.write_text("# ad servers\nads.example.com\n\n  tracker.example.net  # since 2024\n*.spam.test\n")
    assert read_list(str(p)) == ["ads.example.com", "tracker.example.net", "*.spam.test"]


def test_a_domain_blocks_its_subdomains_and_nothing_above():
    b = Blocklist(["ads.example.com", "example.co.uk", "*.spam.test", "co.uk"], ["http://ok.example.org/bad-page"])
    assert b.blocks("http://ads.example.com/x") and b.blocks("https://a.b.ads.example.com:8443/y?z")
    assert not b.blocks("http://example.com/") and not b.blocks("http://notads.example.com/")
    assert b.blocks("http://www.example.co.uk/") and b.blocks("http://x.spam.test/")
    assert not b.blocks("http://other.co.uk/")  # co.uk is a public suffix: it blocks no registered domain under it
    assert b.blocks("http://ok.example.org/bad-page") and not b.blocks("http://ok.example.org/good-page")
    assert not b.blocks("http://[::1/") and not b.blocks("")  # unparseable or empty: not blocked, never an error


def test_emails_ips_and_phones_are_replaced_private_ranges_are_not():
    assert redact_emails("mail jane.doe+news@mail.example.com or x@y.io.")[0] == f"mail {EMAIL} or {EMAIL}."
    text, n = redact_ips("dns 8.8.8.8, lan 192.168.1.5, lo 127.0.0.1, v6 2001:4860:4860::8888, fe80::1, v1.2.3.4.5, 999.1.1.1")
    assert text == f"dns {IP}, lan 192.168.1.5, lo 127.0.0.1, v6 {IP}, fe80::1, v1.2.3.4.5, 999.1.1.1" and n == 2
    text, n = redact_phones("Call (650) 253-0000 or +44 20 7946 0958; not 12345 or 2024.", "US")
    assert text == f"Call {PHONE} or {PHONE}; not 12345 or 2024." and n == 2


_words = st.lists(st.sampled_from(["the", "play", "act", "scene", "3", "1.5", "12:30", "King", "-", "a.b"]), max_size=12).map(" ".join)


@given(before=_words, after=_words, ip=st.ip_addresses())
def test_an_ip_address_in_text_is_replaced_iff_it_is_public(before, after, ip):
    text, n = redact_ips(f"{before} {ip} {after}")
    public = ipaddress.ip_address(ip).is_global
    assert (text == f"{before} {IP} {after}") == public and n == int(public)
    if not public:
        assert text == f"{before} {ip} {after}"


@given(text=_words)
def test_text_without_personal_data_is_left_as_it_is(text):
    assert redact_emails(text) == (text, 0) and redact_ips(text) == (text, 0)


def test_language_id_on_the_benchmark_set_is_at_least_95_percent():
    import json
    from pathlib import Path

    from raylm.pipelines.language import identify

    rows = [json.loads(x) for x in (Path(__file__).resolve().parents[1] / "benchmarks" / "data" / "langid.jsonl").read_text().splitlines()]
    assert len({r["lang"] for r in rows}) >= 8 and all(len(r["text"]) >= 200 for r in rows)
    got = [identify(r["text"], 4096) for r in rows]
    right = sum(lang == r["lang"] for (lang, _), r in zip(got, rows))
    assert right / len(rows) >= 0.95, [(r["lang"], g) for g, r in zip(got, rows) if g[0] != r["lang"]]
    assert all(0 < score <= 1 for _, score in got)


def test_language_keep_takes_iso_codes_only():
    import pytest

    from raylm.core.schema import ConfigError
    from raylm.pipelines.config import LanguageConfig

    assert LanguageConfig(keep=["en", "fr"]).keep == ["en", "fr"]
    with pytest.raises((ValueError, ConfigError)):
        LanguageConfig(keep=["English"])
