"""The perplexity stage: each document's bits per byte under a raylm checkpoint (CCNet's perplexity filter),
`data.quality.perplexity`.

    data.quality.perplexity: {checkpoint: runs/reference, max_bits_per_byte: 2.5, concurrency: 2}

It runs after dedup and paragraph dedup, on the documents that survived them (a removed one costs no forward
pass), as a Ray Data pipeline: one task per staging file reads its candidates, then `map_batches` over an actor
pool of `concurrency` PerplexityScorers (training/docscore.py), each holding the model (one CPU, or one GPU each
with device cuda), scores them in batched forward passes, and the scores are written as parquet under
_work/scores/perplexity/. Then one Ray task per group of staging files puts each score into its document's row
(`quality_perplexity`, in docs.parquet and removed.parquet) and removes a document above `max_bits_per_byte` as
filter:quality:perplexity; `keep_fraction` (the lowest-scored share) is the select stage's.

The reference model must read text as the data stage does: its tokenizer is checked against data.tokenizer before
Ray starts (pipelines/userfiles.py)."""

from __future__ import annotations

from typing import Protocol

import numpy as np
import pyarrow as pa
import pyarrow.dataset as pads
import pyarrow.parquet as pq
import ray

from raylm.core.io import absolute, atomic_open, makedirs
from raylm.core.paths import WORK
from raylm.pipelines.stage import Column, DataRun, Stage, gather
from raylm.pipelines.staging import groups_of, survivors
from raylm.pipelines.stats import Stats

REASON = "filter:quality:perplexity"
COLUMN = "quality_perplexity"


class DocScorer(Protocol):
    """The perplexity stage's Ray Data actor (training/docscore.py's PerplexityScorer): built on each actor with
    the checkpoint, device and windows per forward pass; called on a batch of documents, it returns their uids and
    scores (bits per byte, NaN for a document of no bytes). The caller of run_data gives the class: the data stage
    does not import training/."""

    def __init__(self, checkpoint: str, device: str, batch: int) -> None: ...

    def __call__(self, rows: dict[str, np.ndarray]) -> dict[str, np.ndarray]: ...


def candidates(rows: dict, dups_dir: str | None) -> dict:
    """A staging file's documents to score (kept, not duplicates, not task records): uid and text."""
    dups = pads.dataset(dups_dir, format="parquet") if dups_dir is not None else None
    uids, texts = [], []
    for path, first, last in zip(rows["path"], rows["first_uid"], rows["last_uid"]):
        t, mask = survivors(str(path), int(first), int(last), dups, ["text"])
        keep = pa.array(mask)
        uids += t["uid"].filter(keep).to_pylist()
        texts += t["text"].filter(keep).to_pylist()
    return {"uid": np.array(uids, dtype=np.int64), "text": np.array(texts, dtype=object)}


@ray.remote
def _fill(group: list[dict], scores_dir: str, max_bpb: float | None) -> dict:
    """Each score into its row of the group's staging files; a document above max_bpb removed."""
    scores = pads.dataset(scores_dir, format="parquet")
    counts = {"scored": 0, "removed": 0}
    if not scores.files:  # no document to score (every one removed before): Ray Data wrote no file
        return counts
    # the group's files are consecutive in uid order: its scores in one read of the score files, not one per file
    f = (pads.field("uid") >= group[0]["first_uid"]) & (pads.field("uid") <= group[-1]["last_uid"])
    got = scores.to_table(filter=f, columns=["uid", "score"])
    by_uid = dict(zip(got["uid"].to_pylist(), got["score"].to_pylist()))
    have = np.sort(got["uid"].to_numpy())
    for s in group:
        scored = int(np.searchsorted(have, s["last_uid"], "right") - np.searchsorted(have, s["first_uid"]))
        if scored == 0:  # a file none of whose documents was scored is not rewritten
            continue
        t = pq.read_table(s["path"])
        uids, status, text = t["uid"].to_pylist(), t["status"].to_pylist(), t["text"].to_pylist()
        values = [by_uid.get(u) for u in uids]
        for i, v in enumerate(values):
            if v is not None and max_bpb is not None and v > max_bpb:
                status[i], text[i] = REASON, None
                counts["removed"] += 1
        counts["scored"] += scored
        for name, col in ((COLUMN, values), ("status", status), ("text", text)):
            t = t.set_column(t.schema.get_field_index(name), name, pa.array(col, t.schema.field(name).type))
        with atomic_open(s["path"]) as out:
            pq.write_table(t, out, compression="zstd")
    return counts


class Perplexity(Stage):
    """data.quality.perplexity (see the module's docstring). Its column is declared here, as a step declares
    its own: pipelines/process.py's COLUMNS."""

    name = "perplexity"
    columns = (Column(COLUMN, pa.float32(), removed=True),)
    reads = ("_work/docs/*.parquet", "_work/dups/part-*.parquet")
    writes = ("_work/scores/perplexity/*.parquet",)

    def enabled(self, run: DataRun) -> bool:
        return run.data.quality.perplexity.checkpoint is not None

    def run(self, run: DataRun, stats: Stats) -> None:
        import ray.data as rd

        cfg = run.data.quality.perplexity
        device = cfg.device if cfg.device != "auto" else ("cuda" if ray.cluster_resources().get("GPU", 0) >= 1 else "cpu")
        dups_dir = run.dups_dir if run.dups is not None else None
        files = [{k: s[k] for k in ("path", "first_uid", "last_uid")} for s in run.staging]
        scores_dir = f"{run.root}/{WORK}/scores/perplexity"
        ds = rd.from_items(files, override_num_blocks=max(1, len(files)))
        ds = ds.map_batches(candidates, fn_args=(dups_dir,), batch_size=1, batch_format="numpy")
        ds = ds.map_batches(
            run.scorer,
            fn_constructor_args=(absolute(cfg.checkpoint), device, cfg.batch),  # actors may not share the driver's directory
            batch_size=cfg.docs_per_call,
            batch_format="numpy",
            compute=rd.ActorPoolStrategy(size=cfg.concurrency),
            num_cpus=0 if device == "cuda" else 1,
            num_gpus=1 if device == "cuda" else 0,
        )
        makedirs(scores_dir)
        ds.write_parquet(scores_dir)
        counts = gather([_fill.remote(g, scores_dir, cfg.max_bits_per_byte) for g in groups_of(run.staging, run.workers)])
        scored, removed = sum(c["scored"] for c in counts), sum(c["removed"] for c in counts)
        stats.counts.update(scored=scored, removed=removed)
        run.quality.setdefault("perplexity", {}).update(checkpoint=cfg.checkpoint, max_bits_per_byte=cfg.max_bits_per_byte, scored=scored)
        run.say(f"perplexity: {scored:,} documents scored on {cfg.concurrency} {device} actor(s); {removed:,} above max_bits_per_byte")
