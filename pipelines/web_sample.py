"""The bundled web sample: a small WARC that raylm builds itself from the Shakespeare sample, so that
`raylm data cluster/recipes/web.yaml` shows the whole web path on a fresh clone.

Scenes of the plays as pages of a made-up theatre site (navigation, cookie banner, footer around the text),
with what a crawl holds besides: request records, a few pages in other languages, an image and a stylesheet,
a redirect, a 404, a revisit, a page on a blocklisted ad domain, an exact mirror and a near copy of a page.
Records are written by FastWARC's own writer, one gzip member each (Common Crawl's layout); ids and dates
are fixed, so the file is the same on every build:

    python -m pipelines.web_sample            # writes data/sample/web.warc.gz
"""

from __future__ import annotations

import argparse
import gzip
import io
import json
import uuid
from pathlib import Path

from fastwarc.warc import WarcRecord, WarcRecordType

SAMPLE = Path(__file__).resolve().parents[1] / "data" / "sample"
OUT = SAMPLE / "web.warc.gz"
DATE = "2024-05-01T12:00:00Z"
SITE = "https://globe-theatre.example"

NAV = "<nav><a href='/'>Home</a> | <a href='/plays'>Plays</a> | <a href='/tickets'>Tickets</a> | <a href='/about'>About us</a></nav>"
BANNER = (
    "<div id='cookie-banner'>We use cookies to improve your experience on our site. "
    "<button>Accept all</button> <button>Manage preferences</button></div>"
)
FOOTER = (
    "<footer><p>Copyright 2024 The Globe Theatre Company. All rights reserved.</p>"
    "<p><a href='/privacy'>Privacy</a> | <a href='/terms'>Terms</a> | Contact: box office</p></footer>"
)

# a paragraph each in other languages (the language filter's and its tests' material)
OTHER_LANGUAGES = {
    "fr": "Le théâtre du Globe présente cette saison une nouvelle mise en scène de Hamlet. Les comédiens répètent depuis "
    "trois mois dans la grande salle, et les billets pour la première sont déjà presque tous vendus. Venez découvrir "
    "la troupe, les décors et la musique composée spécialement pour cette production ambitieuse.",
    "de": "Das Globe-Theater zeigt in dieser Saison eine neue Inszenierung von Hamlet. Die Schauspieler proben seit drei "
    "Monaten im großen Saal, und die Karten für die Premiere sind bereits fast ausverkauft. Entdecken Sie das Ensemble, "
    "das Bühnenbild und die Musik, die eigens für diese ehrgeizige Produktion komponiert wurde.",
    "es": "El teatro del Globo presenta esta temporada una nueva puesta en escena de Hamlet. Los actores ensayan desde hace "
    "tres meses en la sala grande, y las entradas para el estreno ya están casi agotadas. Venga a descubrir la compañía, "
    "la escenografía y la música compuesta especialmente para esta ambiciosa producción.",
    "it": "Il teatro del Globo presenta in questa stagione un nuovo allestimento di Amleto. Gli attori provano da tre mesi "
    "nella sala grande e i biglietti per la prima sono già quasi esauriti. Venite a scoprire la compagnia, le scenografie "
    "e la musica composta appositamente per questa ambiziosa produzione.",
    "ru": "Театр «Глобус» представляет в этом сезоне новую постановку «Гамлета». Актёры репетируют уже три месяца в большом "
    "зале, и билеты на премьеру почти распроданы. Приходите познакомиться с труппой, декорациями и музыкой, написанной "
    "специально для этой амбициозной постановки.",
    "ja": "グローブ座は今シーズン、ハムレットの新しい演出を上演します。俳優たちは三か月前から大ホールで稽古を重ねており、"
    "初日のチケットはすでにほぼ完売です。劇団、舞台美術、そしてこの意欲的な作品のために特別に作曲された音楽をぜひご覧ください。",
}


def record(kind: str, uri: str = "", body: bytes = b"", http: str | None = None, headers: dict | None = None, rid: str | None = None) -> bytes:
    """One WARC record's bytes. `http`: a response's status line and headers (its payload is `body`).
    The record id is derived from kind and URI unless given (`rid`: "uuid:...")."""
    r = WarcRecord()
    rid = rid or uuid.uuid5(uuid.NAMESPACE_URL, f"{kind} {uri} {len(body)}").urn[4:]
    r.init_headers(record_type=getattr(WarcRecordType, kind), record_urn=rid.encode())
    r.headers["WARC-Date"] = DATE
    if uri:
        r.headers["WARC-Target-URI"] = uri
    for k, v in (headers or {}).items():
        r.headers[k] = v
    if http is not None:
        r.headers["Content-Type"] = "application/http; msgtype=response"
        body = http.replace("\n", "\r\n").encode() + b"\r\n\r\n" + body
    r.set_bytes_content(body)
    out = io.BytesIO()
    r.write(out)
    return out.getvalue()


def page(uri: str, html: str | bytes, status: str = "200 OK", ctype: str = "text/html; charset=utf-8", **kw) -> bytes:
    """A response record: HTTP status and Content-Type, the page as payload."""
    body = html.encode("utf-8") if isinstance(html, str) else html
    return record("response", uri, body, http=f"HTTP/1.1 {status}\nContent-Type: {ctype}", **kw)


def request(uri: str) -> bytes:
    req = f"GET {uri} HTTP/1.1\r\nHost: example\r\n\r\n".encode()
    return record("request", uri, req, headers={"Content-Type": "application/http; msgtype=request"})


def per_record_gzip(records: list[bytes]) -> bytes:
    """Common Crawl's layout: one gzip member per record."""
    return b"".join(gzip.compress(r, mtime=0) for r in records)


def html_page(title: str, text: str, lang: str = "en") -> str:
    """A page of the site: boilerplate around the text, one <p> a paragraph."""
    paras = "".join(f"<p>{p}</p>" for p in text.split("\n\n") if p.strip())
    head = f"<head><meta charset='utf-8'><title>{title}</title></head>"
    main = f"<main><article><h1>{title}</h1>{paras}</article></main>"
    return f"<!doctype html><html lang='{lang}'>{head}<body>{BANNER}{NAV}{main}{FOOTER}</body></html>"


def _scenes(text: str, n: int, size: int = 2500) -> list[str]:
    """The first n stretches of about `size` characters of a play, cut at blank lines."""
    paras, out, cur = [p.strip() for p in text.split("\n\n") if p.strip()], [], ""
    for p in paras[10:]:  # past the title page and the list of persons
        cur = f"{cur}\n\n{p}" if cur else p
        if len(cur) >= size:
            out.append(cur)
            cur = ""
            if len(out) == n:
                break
    return out


def build(sample: Path = SAMPLE / "shakespeare.jsonl.gz") -> bytes:
    with gzip.open(sample, "rt", encoding="utf-8") as f:
        plays = [json.loads(line) for line in f][::4]
    recs = [record("warcinfo", body=b"software: raylm pipelines/web_sample.py\r\nformat: WARC File Format 1.1\r\n")]
    first = None
    for play in plays:
        for i, scene in enumerate(_scenes(play["text"], 3)):
            url = f"{SITE}/plays/{play['id']}/{i + 1}"
            recs += [request(url), page(url, html_page(f"{play['id'].replace('_', ' ').title()}, part {i + 1}", scene))]
            first = first or (url, scene)
    for lang, text in OTHER_LANGUAGES.items():
        url = f"{SITE}/{lang}/saison"
        recs += [request(url), page(url, html_page("Globe", text, lang))]
    url, scene = first
    recs += [
        page(f"https://mirror.globe-theatre.example{url[len(SITE) :]}", html_page("Mirror", scene)),  # exact copy of a page
        page(f"{url}?print=1", html_page("Print version", scene.replace("\n\n", "\n\nPrinted from globe-theatre.example.\n\n", 1))),
        page(f"{SITE}/logo.png", b"\x89PNG\r\n\x1a\n" + bytes(range(256)) * 4, ctype="image/png"),
        page(f"{SITE}/style.css", b"body { font-family: serif; }", ctype="text/css"),
        page(f"{SITE}/old-home", "", status="301 Moved Permanently"),
        page(f"{SITE}/missing", "<html><body>Not found</body></html>", status="404 Not Found"),
        record("revisit", url, headers={"WARC-Refers-To-Target-URI": url}),
        page("https://ads.adnetwork.example/banner", html_page("Sponsored", scene.split("\n\n")[0] + "\n\nBuy tickets now at half price!")),
        record("metadata", url, b"fetchTimeMs: 120\r\n", headers={"Content-Type": "application/warc-fields"}),
    ]
    return per_record_gzip(recs)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", default=str(OUT))
    out = Path(ap.parse_args().out)
    data = build()
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_bytes(data)
    print(f"{out}: {len(data):,} bytes")


if __name__ == "__main__":
    main()
