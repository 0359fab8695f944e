"""Paragraph dedup (pipelines/paragraphs.py): the unit logic and the reduce step without Ray; then on the
session's Ray instance a banner planted in 100 of 200 documents is removed from 99 of them, the first keeps
it, and every other byte of every document is as it was."""

import json
import random
from collections import Counter

import pyarrow as pa
import pytest

from raylm.cluster.recipe import load_config
from raylm.core.shards import iter_documents
from raylm.core.tokenizer import TokenizerSpec, load_encoding
from raylm.pipelines.config import ParagraphConfig
from raylm.pipelines.paragraphs import PAIRS, _reduce, doc_hashes, unit_hash, without
from raylm.pipelines.run import run_data
from tests.conftest import ROOT, sample_docs, write_jsonl

RECIPE = ROOT / "cluster" / "recipes" / "local.yaml"
BANNER = "We use cookies to improve your experience. By continuing to browse you accept our cookie policy."


def test_a_unit_is_hashed_by_its_stripped_text():
    assert unit_hash("  a line \n", 0) == unit_hash("a line", 0) != 0


def test_blank_and_short_units_are_not_counted():
    assert unit_hash(" \n ", 0) == 0 and unit_hash("abc", 4) == 0


def test_a_document_repeating_a_unit_counts_it_once():
    assert len(doc_hashes("one\n\ntwo\n\none", ParagraphConfig(enabled=True))) == 2


def test_removing_keeps_the_other_units_and_their_separators():
    cfg = ParagraphConfig(enabled=True, unit="line")
    text, n = without("keep\ndrop\n  keep too\ndrop", {unit_hash("drop", 0)}, cfg)
    assert (text, n) == ("keep\n  keep too", 2)


def test_reduce_removes_a_repeat_from_all_but_the_smallest_uid():
    pairs = pa.table({"hash": [7, 7, 7, 9], "uid": [30, 10, 20, 10]}, schema=PAIRS)
    *groups, (repeated, top) = _reduce(1, [0, 25], pairs)
    assert [g.to_pylist() for g in groups] == [[{"hash": 7, "uid": 20}], [{"hash": 7, "uid": 30}]]


def test_reduce_counts_the_repeats_and_the_most_repeated():
    pairs = pa.table({"hash": [7, 7, 7, 9, 9, 5], "uid": [1, 2, 3, 1, 2, 4]}, schema=PAIRS)
    *_, (repeated, top) = _reduce(1, [0], pairs)
    assert (repeated, top) == (2, [(7, 3), (9, 2)])


def test_max_docs_sets_how_many_documents_make_a_repeat():
    pairs = pa.table({"hash": [7, 7], "uid": [1, 2]}, schema=PAIRS)
    (group, (repeated, _)) = _reduce(2, [0], pairs)
    assert group.num_rows == 0 and repeated == 0


def _docs() -> list[dict]:
    """200 documents of the plays' paragraphs, each paragraph in one document only; the banner as the second
    paragraph of every other document (100 of them)."""
    paras = [p.strip() for d in sample_docs() for p in d["text"].split("\n\n") if len(p.strip()) > 40]
    counts = Counter(paras)
    once = [p for p in counts if counts[p] == 1]
    random.Random(0).shuffle(once)
    docs = []
    for i in range(200):
        body = once[i * 6 : i * 6 + 6]
        docs.append({"id": f"d{i:03d}", "text": "\n\n".join([body[0], BANNER, *body[1:]] if i % 2 == 0 else body)})
    return docs


@pytest.mark.slow
def test_a_banner_in_100_documents_is_removed_from_99_and_nothing_else(ray_session, tmp_path):
    docs = _docs()
    planted = [d["id"] for d in docs if BANNER in d["text"]]
    assert len(planted) == 100
    write_jsonl(tmp_path / "in" / "docs.jsonl", docs)
    sets = [f"storage_path={tmp_path}", "name=p", f"data.inputs=[{{path: {tmp_path}/in/docs.jsonl}}]", "data.tokenizer={name: cl100k_base}"]
    sets += ["data.clean.enabled=false", "data.output.val_fraction=0", "data.dedup.paragraph={enabled: true}"]
    cfg = load_config(RECIPE, sets)
    run_data(cfg.data, cfg.paths, summary=False)
    root = cfg.paths.data
    enc = load_encoding(TokenizerSpec("cl100k_base"))
    got = sorted(enc.decode(d[1:].tolist()) for d in iter_documents(root, "train"))
    first = planted[0]
    want = sorted(d["text"] if d["id"] == first or BANNER not in d["text"] else d["text"].replace(BANNER + "\n\n", "") for d in docs)
    assert got == want
    stats = json.loads((tmp_path / "p" / "data" / "stats.json").read_text())["stages"]["paragraphs"]
    assert stats["counts"]["units_removed"] == 99 and stats["counts"]["docs_changed"] == 99
    assert stats["top"][0] == {"docs": 100, "text": BANNER}


@pytest.mark.slow
def test_the_web_samples_navigation_and_cookie_lines_are_counted(ray_session, tmp_path):
    """The bundled WARC with the whole page kept (main_content off): its navigation, cookie banner, footer and
    copyright lines, on every page, are removed from all pages but the first and listed in stats.json."""
    sets = [f"storage_path={tmp_path}", "name=w", "data.extract.main_content=false", "data.dedup.paragraph={enabled: true, unit: line}"]
    cfg = load_config(ROOT / "cluster" / "recipes" / "web.yaml", [*sets, "data.tokenizer={name: cl100k_base}"])
    man = run_data(cfg.data, cfg.paths, summary=False)
    stats = json.loads((tmp_path / "w" / "data" / "stats.json").read_text())["stages"]["paragraphs"]
    pages = man.stats.docs_kept
    boilerplate = {t["text"] for t in stats["top"] if t["docs"] == pages}
    assert {"Home | Plays | Tickets | About us", "We use cookies to improve your experience on our site."} <= boilerplate
    assert stats["counts"]["docs_changed"] == pages - 1 and stats["counts"]["units_removed"] >= 4 * (pages - 1)
