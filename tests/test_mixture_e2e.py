"""Data mixtures end to end: `data.sources` through the real data stage on Ray (shards per source, dedup across
sources keeping the first-listed source's copy, per-source counts), then 1,000 steps of training drawing from
the two sources at 0.8/0.2: the per-step source counts are within 1% of the weights, identical across two runs,
and identical again after a Ray Train worker is SIGKILLed mid-run and the run recovers from its checkpoint.
That last run is also the suite's worker-failure test: its per-step losses equal, bit for bit, those of the
run never stopped (the single-source loader's exact resume is tested without Ray in tests/test_loader.py). The
model is the llama arch (grouped-query attention) trained with Muon on 2 workers: their exact resume after a kill."""

import json
import os
import signal
import threading
import time

import numpy as np
import pyarrow.parquet as pq
import pytest

from raylm.cluster.recipe import load_config
from raylm.pipelines.run import run_data
from raylm.training.config import EvalOptions
from raylm.training.driver import run_train
from raylm.training.evaluate import print_results, run_eval
from tests.conftest import ROOT, sample_docs, session_train_workers, write_jsonl

pytestmark = pytest.mark.slow

STEPS = 1000
# tokens a step: 2 workers x 2 windows of 32 tokens (the point of the 1,000 steps is the draw, not the model)
TOKENS = 128


@pytest.fixture(scope="module")
def mixture(ray_session, sample_shards, tmp_path_factory):
    """Two sources made from the sample, with one document of `plays` copied into `other` under an id that
    sorts first (the dedup rule before sources kept the smallest id: here the first-listed source must win)."""
    tmp = tmp_path_factory.mktemp("mix")
    docs = sample_docs()
    plays, other = docs[:30], docs[30:45]
    other = [{"id": "000-copy", "text": plays[3]["text"]}, *other]
    write_jsonl(tmp / "in" / "plays.jsonl", plays)
    write_jsonl(tmp / "in" / "other.jsonl", other)
    sources = (
        f"data.sources={{plays: {{inputs: [{{path: '{tmp}/in/plays.jsonl'}}], weight: 0.8}}, "
        f"other: {{inputs: [{{path: '{tmp}/in/other.jsonl'}}], weight: 0.2}}}}"
    )
    cfg = load_config(
        ROOT / "cluster" / "recipes" / "local.yaml",
        [f"storage_path={tmp}", "name=mix", sources, "data.output.val_fraction=0.1"]
        + [f"data.tokenizer={{path: '{sample_shards}/tokenizer.tiktoken'}}"],
    )
    manifest = run_data(cfg.data, cfg.paths, summary=False).as_json()
    return tmp, cfg, manifest, plays


def test_sources_get_their_own_shards_and_counts(mixture):
    tmp, cfg, man, plays = mixture
    root = tmp / "mix" / "data"
    assert list(man["sources"]) == ["plays", "other"]
    assert man["sources"]["plays"]["weight"] == 0.8 and man["sources"]["other"]["weight"] == 0.2
    for split in ("train", "val"):
        entry = man["splits"][split]
        assert list(entry["sources"]) == ["plays", "other"]
        for name, src in entry["sources"].items():
            assert src["docs"] > 0 and all(s["path"].startswith(f"{split}/{name}/shard-") for s in src["shards"])
            for s in src["shards"]:
                assert len(np.load(root / s["path"], mmap_mode="r")) == s["tokens"]
        # the split's totals and shards are its sources', source after source
        assert entry["tokens"] == sum(s["tokens"] for s in entry["sources"].values())
        assert entry["shards"] == [s for src in entry["sources"].values() for s in src["shards"]]
    for name, src in man["sources"].items():  # every record of each source accounted for, on its own
        assert src["docs_in"] == src["docs_kept"] + sum(src["removed"].values()), name
        assert src["tokens"] == man["splits"]["train"]["sources"][name]["tokens"] + man["splits"]["val"]["sources"][name]["tokens"]
    assert man["sources"]["other"]["removed"].get("exact") == 1 and "exact" not in man["sources"]["plays"]["removed"]
    removed = pq.read_table(root / "removed.parquet").to_pylist()
    copy = [r for r in removed if r["id"] == "000-copy"]
    assert copy == [
        {
            "id": "000-copy",
            "reason": "exact",
            "kept_id": plays[3]["id"],
            "src": f"{tmp}/in/other.jsonl:1",
            "quality_fasttext": None,
            "quality_perplexity": None,
        }
    ]
    # the kept copy is in the plays' shards (docs.parquet names the shard)
    kept = [r for r in pq.read_table(root / "docs.parquet").to_pylist() if r["id"] == plays[3]["id"]]
    assert len(kept) == 1 and "/plays/" in kept[0]["shard"]


def _cfg(tmp, name, shards):
    return load_config(
        ROOT / "cluster" / "recipes" / "local.yaml",
        [
            f"storage_path={tmp}",
            f"name={name}",
            f"train.data_path={shards}",
            # the llama arch with grouped-query attention and Muon: what the killed worker's exact resume covers too
            "train.model={arch: llama, n_layer: 1, n_head: 2, n_kv_head: 1, d_model: 32, seq_len: 32}",
            "train.optim.name=muon",
            f"train.batch={{micro_batch_size: 2, global_batch_tokens: {TOKENS}}}",
            f"train.max_steps={STEPS}",
            "train.schedule.warmup_steps=10",
            "train.eval={every: 500, batches: 1}",
            "train.checkpoint={every: 200, keep: 2}",  # the kill at step 450+ resumes from step 400
            "train.log_every=1000",
            "train.scaling.num_workers=2",
            "train.failure.max_failures=2",
            "train.mixture=[{weights: {plays: 0.8, other: 0.2}}]",
        ],
    )


def _rows(tmp, name):
    return [json.loads(x) for x in (tmp / name / "train" / "metrics.jsonl").read_text().splitlines()]


def _kill_worker_after(metrics, step: int, th: threading.Thread) -> int | None:
    deadline = time.time() + 600
    while th.is_alive() and time.time() < deadline:
        lines = metrics.read_text().splitlines() if metrics.exists() else []
        if lines and json.loads(lines[-1])["step"] >= step:
            workers = session_train_workers()
            assert workers, "no Ray Train worker process found"
            os.kill(workers[-1], signal.SIGKILL)
            return json.loads(lines[-1])["step"]
        time.sleep(0.02)
    return None


def test_thousand_steps_by_weight_same_across_runs_and_a_killed_worker(mixture, capsys):
    tmp, _, man, _ = mixture
    shards = str(tmp / "mix" / "data")
    run_train(_cfg(tmp, "a", shards).train_job())
    a = _rows(tmp, "a")
    assert [r["step"] for r in a] == list(range(1, STEPS + 1))
    drawn = {n: sum(r["source_tokens"][n] for r in a) for n in ("plays", "other")}
    total = sum(drawn.values())
    assert total == STEPS * TOKENS
    assert abs(drawn["plays"] / total - 0.8) < 0.01 and abs(drawn["other"] / total - 0.2) < 0.01, drawn
    assert "other" in a[-1]["val_sources"] and "plays" in a[-1]["val_sources"]
    assert a[-1]["val_mixture"]["weights"] == pytest.approx({"plays": 0.8, "other": 0.2})
    # raylm eval: each source's LM metrics beside the whole split's
    res = run_eval(_cfg(tmp, "a", shards).train_job(), EvalOptions(max_windows=8))
    assert set(res["lm_sources"]) == {"plays", "other"} and all(s["bpb"] > 0 for s in res["lm_sources"].values())
    print_results(res)
    shown = capsys.readouterr().out
    assert all(f"loss of source {n}" in shown for n in ("plays", "other")) and "bits/byte" in shown

    cfg = _cfg(tmp, "b", shards)
    result = {}
    th = threading.Thread(target=lambda: result.setdefault("r", run_train(cfg.train_job())))
    th.start()
    killed_at = _kill_worker_after(tmp / "b" / "train" / "metrics.jsonl", 450, th)
    th.join(timeout=600)
    assert killed_at is not None and killed_at < STEPS, "the run ended before a worker could be killed"
    assert result["r"].error is None
    b = _rows(tmp, "b")
    assert [r["step"] for r in b] == list(range(1, STEPS + 1))
    assert [r["source_tokens"] for r in b] == [r["source_tokens"] for r in a]  # the same draw, step by step
    assert [r["loss"] for r in b] == [r["loss"] for r in a]  # and the same training, bit for bit
