"""`raylm data` on web crawl files: a WARC of pages around real text, damaged in every way the reader must
survive (a lying Content-Length, a record cut by the end of the file, a non-WARC file and an empty file named
.warc.gz, a binary payload labelled text/html, a windows-1251 page with no charset), and a WET file. Every
record is accounted for; every intact page is read."""

import gzip
import json

import pyarrow.parquet as pq
import pytest

from raylm.pipelines.run import run_data
from raylm.pipelines.web_sample import page, per_record_gzip, record, request
from tests.conftest import ROOT, sample_docs
from tests.test_pipeline_e2e import _cfg

pytestmark = pytest.mark.slow

NAV = "<nav><a href='/'>Home</a> | <a href='/plays'>Plays</a> | <a href='/about'>About us</a></nav>"
FOOTER = "<footer>Copyright 2024 The Example Theatre Company. All rights reserved. Privacy | Terms</footer>"


def _html(text: str) -> str:
    paras = "".join(f"<p>{p}</p>" for p in text.split("\n") if p.strip())
    return f"<html><head><title>A scene</title></head><body>{NAV}<main><article>{paras}</article></main>{FOOTER}</body></html>"


def _crawl(docs: list[dict]) -> tuple[list[bytes], dict]:
    recs, expect = [record("warcinfo", body=b"software: raylm-test\r\nformat: WARC File Format 1.1\r\n")], {}
    for i, d in enumerate(docs):
        url = f"http://theatre.example/{i}"
        recs += [request(url), page(url, _html(d["text"]))]
    ru = "Это страница на русском языке, и у неё нет заголовка с кодировкой. " * 8
    recs += [
        page("http://theatre.example/logo.png", b"\x89PNG\r\n\x1a\n", ctype="image/png"),
        page("http://theatre.example/old", "", status="301 Moved Permanently"),
        page("http://theatre.example/gone", "<html>gone</html>", status="404 Not Found"),
        record("revisit", "http://theatre.example/0"),
        page("http://theatre.example/binary", b"\x00\x01\x02binary\x00" * 50),
        page("http://theatre.example/ru", f"<html><body><p>{ru}</p></body></html>".encode("windows-1251"), ctype="text/html"),
        page("http://ads.tracker.example/banner", _html(docs[1]["text"] + "\nsponsored")),  # blocked by domain
        page("http://theatre.example/contact", _html(docs[2]["text"] + "\nWrite to box-office@theatre.example, host 8.8.4.4")),
        page("http://theatre.example/last", _html(docs[0]["text"])),  # cut short by the end of the file
    ]
    expect.update(skip_request=1 + len(docs), not_html=1, http_status=2, revisit=1)
    return recs, expect


def test_a_damaged_crawl_keeps_every_intact_page_and_accounts_for_every_record(ray_session, tmp_path):
    docs = sample_docs()[:40]
    recs, expect = _crawl(docs)
    liar = 2 * 20 + 2  # the 21st page: its Content-Length claims 300 bytes more than it has
    head, sep, rest = recs[liar].partition(b"Content-Length: ")
    n = int(rest.split(b"\r\n", 1)[0])
    recs[liar] = head + sep + str(n + 300).encode() + rest[len(str(n)) :]
    src = tmp_path / "crawl"
    src.mkdir()
    data = per_record_gzip(recs)
    (src / "a.warc.gz").write_bytes(data[: len(data) - 40])  # the last record (the Russian page) cut short
    (src / "b.warc.gz").write_bytes(gzip.compress(b"".join(recs[1:11])))  # whole-file gzip: 5 pages again
    (src / "notwarc.warc.gz").write_bytes(b"this is not gzip, nor a WARC file\n" * 10)
    (src / "empty.warc.gz").write_bytes(b"")
    (tmp_path / "block.txt").write_text("# ad networks\ntracker.example\n")
    cfg = _cfg(tmp_path, f"data.inputs=[{{path: '{src}/*.warc.gz'}}]", f"data.url_filter.block_domains=['{tmp_path}/block.txt']")
    man = run_data(cfg.data, cfg.paths).as_json()
    st = man["stats"]
    assert st["records_in"] == st["docs_in"] + sum(st["skipped"].values())
    assert st["docs_in"] == st["docs_kept"] + sum(st["removed"].values())
    assert st["skipped"] == {
        "skip:request_or_metadata": expect["skip_request"] + 5,
        "skip:not_html": 1,
        "skip:http_status": 2,
        "skip:revisit": 1,
    }
    # a.warc.gz: 39 intact pages, the liar, the binary page, the Russian page, the ad, the contact page, the cut one;
    # b.warc.gz: 5 pages;
    # notwarc.warc.gz: one reject (it is no gzip stream); empty.warc.gz: no record
    assert (st["docs_in"], st["records_in"]) == (45 + 5 + 1, 45 + 45 + 10 + 1)
    rem = pq.read_table(f"{tmp_path}/t/data/removed.parquet").to_pylist()
    rejects = sorted((r["reason"], r["src"].rsplit("/", 1)[1].split(":")[0]) for r in rem if r["reason"].startswith("reject:"))
    assert rejects == [
        ("reject:binary", "a.warc.gz"),
        ("reject:corrupt", "notwarc.warc.gz"),
        ("reject:warc_bad_length", "a.warc.gz"),
        ("reject:warc_truncated", "a.warc.gz"),
    ]
    assert all(r["src"].rsplit(":", 1)[1].isdigit() for r in rem)  # file:offset
    assert [r["id"] for r in rem if r["reason"] == "filter:url"] and len([r for r in rem if r["reason"] == "filter:url"]) == 1
    stats = json.loads((tmp_path / "t" / "data" / "stats.json").read_text())
    counts = stats["stages"]["process"]["counts"]
    assert counts["pii.email"] == 1 and counts["pii.ip"] == 1
    fixed, total = stats["fixed_seconds"], stats["seconds"]["total"]  # what the run cost besides processing blocks
    assert set(fixed) == {"to_first_block", "process_to_tokenize", "after_last_block"} and all(v > 0 for v in fixed.values())
    assert sum(fixed.values()) < total
    # b.warc.gz's 5 pages are a.warc.gz's first 5 again: exact duplicates, each naming the page it repeats
    dup_of_b = [r for r in rem if "b.warc.gz" in r["src"] and r["reason"] == "exact"]
    assert len(dup_of_b) == 5 and all(r["kept_id"].startswith("<urn:uuid:") for r in dup_of_b)


def test_the_bundled_web_recipe_end_to_end(ray_session, tmp_path, capsys):
    from raylm.cluster.cli import main
    from raylm.core.shards import iter_documents
    from raylm.core.tokenizer import TokenizerSpec, load_encoding
    from raylm.pipelines.web_sample import OUT, build

    assert OUT.read_bytes() == build()  # the committed sample is what the builder makes
    assert main(["data", str(ROOT / "cluster" / "recipes" / "web.yaml"), "--set", f"storage_path={tmp_path}"]) == 0
    data = tmp_path / "shakespeare-web" / "data"
    st = json.loads((data / "manifest.json").read_text())["stats"]
    assert st["records_in"] == st["docs_in"] + sum(st["skipped"].values()) and st["docs_in"] == st["docs_kept"] + sum(st["removed"].values())
    assert set(st["skipped"]) == {"skip:request_or_metadata", "skip:not_html", "skip:http_status", "skip:revisit"}
    assert st["removed"]["filter:url"] == 1 and 6 <= st["removed"]["filter:language"] <= 8 and st["docs_kept"] >= 50
    enc = load_encoding(TokenizerSpec("rustbpe", str(data / "tokenizer.tiktoken")))
    man = json.loads((data / "manifest.json").read_text())
    at = {}  # (shard, index) -> text, from the shards themselves
    for split in ("train", "val"):
        docs = iter(iter_documents(str(data), split))
        for shard in man["splits"][split]["shards"]:
            for i in range(shard["docs"]):
                at[(shard["path"], i)] = enc.decode(next(docs)[1:].tolist())
    texts = list(at.values())
    assert not any("cookies" in t or "All rights reserved" in t or "Tickets" in t for t in texts)  # boilerplate gone
    assert sum("ROMEO" in t or "HAMLET" in t.upper() for t in texts) > 0
    assert "records in" in capsys.readouterr().out
    # docs.parquet: each kept document once, where it is in the shards and the page it came from
    table = pq.read_table(data / "docs.parquet")
    assert table.column_names == [
        "id",
        "shard",
        "index",
        "src",
        "url",
        "date",
        "language",
        "language_score",
        "quality_fasttext",
        "quality_perplexity",
    ]  # the steps' after every run's
    rows = table.to_pylist()
    assert sorted((r["shard"], r["index"]) for r in rows) == sorted(at)
    assert all(r["url"].startswith("https://") and r["date"] == "2024-05-01T12:00:00Z" and r["id"].startswith("<urn:uuid:") for r in rows)
    # the file as the recipe names it (relative to the working directory): the same rows wherever the job runs
    assert all(r["src"].startswith("data/sample/web.warc.gz:") for r in rows)
    assert all(r["language"] == "en" and r["language_score"] >= 0.2 for r in rows)
    assert not [r for r in rows if "/saison" in r["url"]]  # the six pages in other languages
    from raylm.pipelines.web_sample import SITE

    page_one = [r for r in rows if r["url"].startswith(f"{SITE}/plays/") and r["url"].endswith("/1")]
    assert page_one and all(", part 1" in at[(r["shard"], r["index"])] for r in page_one)  # the page's own heading
