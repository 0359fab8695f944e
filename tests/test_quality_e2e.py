"""Quality scoring in the data stage on the session's Ray instance: the data stage trains its classifier first
(the plays' lines against web boilerplate), scores every document (docs.parquet's and removed.parquet's
quality_fasttext), and keep_fraction 0.5 keeps 50% +- 1% of 10,000 scored documents, the same documents on a
rerun with other workers and blocks; every document is accounted for."""

import random

import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest

from raylm.cluster.recipe import load_config
from raylm.pipelines.run import run_data
from tests.conftest import ROOT, sample_docs, write_jsonl
from tests.test_quality import WEB

pytestmark = pytest.mark.slow
RECIPE = ROOT / "cluster" / "recipes" / "local.yaml"
N = 10_000


def _corpus(tmp_path):
    """Labelled files (600 lines of the plays, 600 of boilerplate) and N documents mixing the two in random
    proportions, so that their scores spread over (0, 1)."""
    rng = random.Random(0)
    lines = [ln.strip() for d in sample_docs() for ln in d["text"].splitlines() if len(ln.strip()) > 30]
    web = [" ".join(rng.choice(WEB) for _ in range(rng.randint(5, 14))) for _ in range(2000)]
    write_jsonl(tmp_path / "hq.jsonl", [{"text": t} for t in lines[:600]])
    (tmp_path / "lq.txt").write_text("\n".join(web[:600]) + "\n")
    docs = []
    for i in range(N):
        share = rng.random()
        parts = [rng.choice(lines) if rng.random() < share else rng.choice(web) for _ in range(6)]
        docs.append({"id": f"d{i}", "text": "\n".join(parts) + f"\nDocument {i}."})
    write_jsonl(tmp_path / "in" / "docs.jsonl", docs)


def _run(tmp_path, name, workers, batch_bytes):
    spec = f"{{labels: {{hq: [{tmp_path}/hq.jsonl], lq: [{tmp_path}/lq.txt]}}, bucket: 50000}}"
    cfg = load_config(
        RECIPE,
        [
            f"storage_path={tmp_path}",
            f"name={name}",
            f"data.inputs=[{{path: {tmp_path}/in/docs.jsonl}}]",
            "data.tokenizer={name: cl100k_base}",
            "data.clean.enabled=false",
            "data.dedup.minhash.enabled=false",
            f"data.quality.fasttext={{train: {spec}, keep_fraction: 0.5}}",
            f"data.execution={{workers: {workers}, batch_bytes: {batch_bytes}}}",
        ],
    )
    man = run_data(cfg.data, cfg.paths, summary=False)
    root = cfg.paths.data
    return man, pq.read_table(f"{root}/docs.parquet"), pq.read_table(f"{root}/removed.parquet")


@pytest.fixture(scope="module")
def two_runs(ray_session, tmp_path_factory):
    tmp_path = tmp_path_factory.mktemp("keep")
    _corpus(tmp_path)
    return _run(tmp_path, "a", 2, 300_000), _run(tmp_path, "b", 1, 1_000_000)


def test_keep_fraction_keeps_half_of_the_scored_documents(two_runs):
    (man, docs, removed), _ = two_runs
    q = man.quality["fasttext"]
    assert q["candidates"] == N and abs(q["kept"] / N - 0.5) <= 0.01, q


def test_the_kept_documents_are_the_best_scored(two_runs):
    (man, docs, removed), _ = two_runs
    dropped = removed.filter(pc.equal(removed["reason"], "filter:quality:fasttext"))
    assert min(docs["quality_fasttext"].to_pylist()) >= max(dropped["quality_fasttext"].to_pylist())


def test_every_document_is_accounted_for(two_runs):
    (man, docs, removed), _ = two_runs
    assert docs.num_rows + removed.num_rows == N and man.stats.removed == {"filter:quality:fasttext": removed.num_rows}


def test_other_workers_and_blocks_keep_the_same_documents(two_runs):
    (man_a, docs_a, _), (man_b, docs_b, _) = two_runs
    assert man_a.stats == man_b.stats
    assert sorted(docs_a["id"].to_pylist()) == sorted(docs_b["id"].to_pylist())
    assert man_a.quality == man_b.quality


def test_the_manifest_names_the_classifier_it_trained(two_runs):
    (man, _, _), _ = two_runs
    q = man.quality["fasttext"]
    assert q["model"] == "quality/classifier.bin" and len(q["sha256"]) == 64 and q["label"] == "hq"
    assert q["held_out_accuracy"] >= 0.95
