"""Near-duplicate detection against brute-force Jaccard on a corpus with injected duplicates."""

import itertools

import pyarrow.parquet as pq
import pytest

from benchmarks.corpus import injected
from raylm.cluster.recipe import load_config
from raylm.core.io import makedirs
from raylm.pipelines.clean import normalize
from raylm.pipelines.dedup import run_dedup, words_of
from raylm.pipelines.process import Process
from raylm.pipelines.read import Read
from raylm.pipelines.run import run_data, run_stages
from raylm.pipelines.stage import DataRun
from raylm.pipelines.tokenizers import spec_from_config
from tests.conftest import ROOT, write_jsonl

pytestmark = pytest.mark.slow


def _shingles(text: str, n: int) -> set:
    w = words_of(text)
    return {tuple(w[i : i + n]) for i in range(max(1, len(w) - n + 1))}


def test_precision_recall_at_0_8(ray_session, tmp_path):
    import ray

    docs = injected(n_base=240, seed=0)
    write_jsonl(tmp_path / "in" / "docs.jsonl", docs)
    cfg = load_config(
        ROOT / "cluster" / "recipes" / "local.yaml",
        [
            f"storage_path={tmp_path}",
            "name=q",
            f"data.inputs=[{{path: '{tmp_path}/in/*.jsonl'}}]",
            "data.clean.enabled=false",
            "data.execution.batch_bytes=200000",
            "data.dedup.partitions=3",
            "data.tokenizer={name: cl100k_base}",
        ],
    )
    ng, thr = cfg.data.dedup.minhash.ngram, cfg.data.dedup.minhash.threshold
    # brute force: exact Jaccard of every pair of shingle sets
    sets = {d["id"]: _shingles(normalize(d["text"], cfg.data.clean.normalize), ng) for d in docs}
    truth = {tuple(sorted((a, b))) for a, b in itertools.combinations(sets, 2) if len(sets[a] & sets[b]) / len(sets[a] | sets[b]) >= thr}
    assert len(truth) >= 60  # the corpus must actually contain near duplicates

    # the pipeline's confirmed edges (LSH candidates with estimated Jaccard >= threshold)
    run = DataRun(cfg.data, str(tmp_path / "stages"), tokenizer=spec_from_config(cfg.data.tokenizer))
    makedirs(run.docs_dir)
    run_stages(run, (Read(), Process()))
    summaries = run.staging
    res = run_dedup([s["path"] for s in summaries], cfg.data.dedup)
    uid_to_id = {}
    for s in summaries:
        t = pq.read_table(s["path"], columns=["uid", "id"])
        uid_to_id.update(zip(t["uid"].to_pylist(), t["id"].to_pylist()))
    edges = ray.get(res.edges)
    found = {tuple(sorted((uid_to_id[u], uid_to_id[v]))) for e in edges for u, v in zip(e["u"].to_pylist(), e["v"].to_pylist())}
    tp = len(found & truth)
    precision, recall = tp / max(len(found), 1), tp / len(truth)
    print(f"\nnear-dup @0.8: {len(truth)} true pairs, {len(found)} found, precision {precision:.4f}, recall {recall:.4f}")
    assert precision >= 0.99 and recall >= 0.99

    # and the run's removed.parquet: each removed doc is a true duplicate of the doc it names as kept
    man = run_data(cfg.data, cfg.paths).as_json()
    rem = [r for r in pq.read_table(f"{tmp_path}/q/data/removed.parquet").to_pylist() if r["reason"] in ("exact", "near")]
    assert len(rem) == man["stats"]["removed"].get("exact", 0) + man["stats"]["removed"].get("near", 0)
    assert all(tuple(sorted((r["id"], r["kept_id"]))) in truth for r in rem)
    assert all(r["kept_id"] < r["id"] for r in rem)  # the smallest id of each component is kept
    dup_docs = {max(p) for p in truth}
    assert len(rem) >= 0.99 * len(dup_docs)
