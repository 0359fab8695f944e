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
from raylm.training.docscore import PerplexityScorer
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


def _ppl_docs() -> list[dict]:
    """12 documents of the plays (about 1,500 characters each: several windows of the session model's seq_len),
    normalized as the data stage normalizes them, so that the text scored is the text written."""
    from raylm.pipelines.clean import normalize
    from raylm.pipelines.config import NormalizeConfig

    text = sample_docs()[0]["text"]
    return [{"id": f"p{i}", "text": normalize(text[i * 1500 : (i + 1) * 1500], NormalizeConfig()).strip()} for i in range(12)]


@pytest.fixture(scope="module")
def scored(pretrained, tmp_path_factory):
    """The data stage with data.quality.perplexity under the session's pretrained run, 2 actors."""
    run_root = pretrained[0] / "tr"
    tmp_path = tmp_path_factory.mktemp("ppl")
    docs = _ppl_docs()
    write_jsonl(tmp_path / "in" / "docs.jsonl", docs)
    sets = [f"storage_path={tmp_path}", "name=ppl", f"data.inputs=[{{path: {tmp_path}/in/docs.jsonl}}]", "data.clean.enabled=false"]
    sets += [f"data.tokenizer={{path: {run_root}/data/tokenizer.tiktoken}}", "data.dedup.minhash.enabled=false", "data.output.val_fraction=0"]
    sets.append(f"data.quality.perplexity={{checkpoint: {run_root}, concurrency: 2, batch: 4, docs_per_call: 5, keep_fraction: 0.5}}")
    cfg = load_config(RECIPE, sets)
    man = run_data(cfg.data, cfg.paths, summary=False, scorer=PerplexityScorer)
    root = cfg.paths.data
    return cfg, run_root, docs, man, pq.read_table(f"{root}/docs.parquet"), pq.read_table(f"{root}/removed.parquet")


def test_perplexity_scores_are_raylm_evals_bits_per_byte(scored, tmp_path):
    """Three documents, each alone as `raylm eval --file`: the same bits per byte within 1e-4."""
    from raylm.training.config import EvalOptions
    from raylm.training.evaluate import run_eval

    cfg, run_root, docs, _, kept, removed = scored
    got = dict(
        zip(kept["id"].to_pylist() + removed["id"].to_pylist(), kept["quality_perplexity"].to_pylist() + removed["quality_perplexity"].to_pylist())
    )
    for d in docs[:3]:
        (tmp_path / f"{d['id']}.txt").write_text(d["text"])
        res = run_eval(cfg.train_job(), EvalOptions(checkpoint=str(run_root), file=str(tmp_path / f"{d['id']}.txt")))
        assert abs(got[d["id"]] - res["lm"]["bpb"]) <= 1e-4, (d["id"], got[d["id"]], res["lm"]["bpb"])


def test_perplexity_keep_fraction_keeps_the_lowest_half(scored):
    _, _, _, man, kept, removed = scored
    assert kept.num_rows == 6 and man.quality["perplexity"]["kept"] == 6
    assert max(kept["quality_perplexity"].to_pylist()) <= min(removed["quality_perplexity"].to_pylist())
    assert set(removed["reason"].to_pylist()) == {"filter:quality:perplexity"}


def test_a_reference_model_of_another_tokenizer_exits_2_before_ray(pretrained, tmp_path, capsys):
    from raylm.cluster.cli import main

    run_root = pretrained[0] / "tr"
    sets = ["--set", f"storage_path={tmp_path}", "--set", "name=x", "--set", "data.tokenizer={name: cl100k_base}"]
    sets += ["--set", f"data.quality.perplexity={{checkpoint: {run_root}}}"]
    assert main(["data", str(RECIPE), *sets]) == 2
    err = capsys.readouterr().err
    assert "data.quality.perplexity.checkpoint" in err and "is not data.tokenizer" in err
