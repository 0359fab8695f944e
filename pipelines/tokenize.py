"""The tokenize stage: the documents that survive dedup, tokenized (one `<staging file>.tokens` per staging
file, in Ray tasks), after a byte-level BPE (rustbpe, in a Ray task) is trained on them when the recipe
sets `data.tokenizer.train`. Tokenizing after dedup, as datatrove and NeMo Curator do, spends nothing on the
duplicates (a quarter of a corpus with many near copies)."""

from __future__ import annotations

import itertools
import time
from collections.abc import Iterator

import fsspec
import numpy as np
import pyarrow as pa
import pyarrow.dataset as pads
import pyarrow.parquet as pq
import ray

from raylm.core.io import atomic_open
from raylm.core.paths import TOKENIZER
from raylm.core.tokenizer import TokenizerSpec, encode_documents, encode_with_masks
from raylm.pipelines.shards import binary_column
from raylm.pipelines.stage import DataRun, Stage, built_once, settle
from raylm.pipelines.staging import final_texts, tokens_schema
from raylm.pipelines.stats import Stats
from raylm.pipelines.tokenizers import train_bpe


def kept_texts(staging: list[dict], dups: pads.Dataset | None, limit: int | None) -> Iterator[str]:
    """Texts of the final kept documents, in order (for tokenizer training)."""
    texts = (x for s in staging for x in final_texts(s["path"], s["first_uid"], s["last_uid"], dups)[0])
    return itertools.islice(texts, limit)


@ray.remote(num_cpus=1)
def _train_task(staging: list[dict], dups_dir: str | None, vocab_size: int, limit: int | None, out: str) -> TokenizerSpec:
    dups = pads.dataset(dups_dir, format="parquet") if dups_dir else None
    return train_bpe(kept_texts(staging, dups, limit), vocab_size, out)


class TokenizeFile:
    """Tokenizes the final kept documents of one staging file into `<file>.tokens` (tokens_schema)."""

    def __init__(self, spec: TokenizerSpec, dups_dir: str | None, masks: bool):
        self.enc, self.masks = spec.load(), masks
        self.dups = pads.dataset(dups_dir, format="parquet") if dups_dir else None

    def __call__(self, s: dict) -> dict:
        began, path = time.time(), s["path"]
        texts, prompts = final_texts(path, s["first_uid"], s["last_uid"], self.dups, self.masks)
        t = time.perf_counter()
        docs, masks = encode_with_masks(self.enc, texts, prompts) if self.masks else (encode_documents(self.enc, texts), None)
        seconds, where, lengths = time.perf_counter() - t, np.arange(len(docs)), [len(d) for d in docs]
        cols = {"ntokens": pa.array(lengths, pa.int32()), "tokens": binary_column(docs, len(docs), where, 4)}
        if self.masks:
            cols["mask"] = binary_column(masks, len(docs), where, 1)
        fs, _ = fsspec.core.url_to_fs(path)
        with atomic_open(path + ".tokens") as f:  # a retried task never leaves half a file
            pq.write_table(pa.table(cols, schema=tokens_schema(self.masks)), f, compression="none")
        # wall clock (not perf_counter): the driver compares it with its own, to time the stage's fixed costs
        return {"seconds": seconds, "tokens": sum(lengths), "began": began, "ended": time.time()}


@ray.remote
def _tokenize_file(s: dict, spec: TokenizerSpec, dups_dir: str | None, masks: bool) -> dict:
    """One staging file's task, with a TokenizeFile built once per worker process (pipelines.stage.built_once).
    Plain Ray tasks, one per file, not a Ray Data job: on few cores the streaming executor's own work in the
    driver took CPU from the tasks (the stage's wall time 1.38x its encode time, against 1.10x)."""
    return built_once(TokenizeFile, spec, dups_dir, masks)(s)


def _watch(refs: list) -> list[dict]:
    """The tasks' results in file order, with a live line of files and tokens done as they finish."""
    from raylm.core.progress import Live

    live, pending, tokens, t0 = Live("[raylm data] tokenize:", total=len(refs)), list(refs), 0, time.monotonic()
    try:
        while pending:
            done, pending = ray.wait(pending, num_returns=1)
            tokens += ray.get(done[0])["tokens"]
            rate = tokens / max(time.monotonic() - t0, 1e-9)
            live.status(
                f"{len(refs) - len(pending)} of {len(refs)} staging files, {tokens:,} tokens ({rate:,.0f} tokens/s)", len(refs) - len(pending)
            )
    except Exception:
        settle(pending)
        raise
    finally:
        live.close()
    return ray.get(refs)


class Tokenize(Stage):
    name = "tokenize"
    reads = ("_work/docs/*.parquet", "_work/dups/part-*.parquet")
    writes = ("_work/docs/*.parquet.tokens",)  # and TOKENIZER, when it trains one

    def run(self, run: DataRun, stats: Stats) -> None:
        dups_dir = run.dups_dir if run.dups is not None else None
        if run.trains_tokenizer:
            train = run.data.tokenizer.train
            with stats.timer("train"):
                run.say(f"training a BPE tokenizer (vocab {train.vocab_size}) with rustbpe on the kept documents")
                run.tokenizer = ray.get(_train_task.remote(run.staging, dups_dir, train.vocab_size, train.max_docs, f"{run.root}/{TOKENIZER}"))
        if not run.staging:
            return
        with stats.timer("encode"):
            done = _watch([_tokenize_file.remote(s, run.tokenizer, dups_dir, run.data.has_tasks) for s in run.staging])
        # seconds inside the tasks' encode calls, summed over workers (as the process stage's cpu.<step>)
        stats.seconds["cpu.encode"] += sum(r["seconds"] for r in done)
        run.tokenizing = (min(r["began"] for r in done), max(r["ended"] for r in done))
        stats.counts.update(staging_files=len(run.staging), tokens=sum(r["tokens"] for r in done))
        n, seconds = stats.counts["tokens"], stats.seconds["encode"]
        run.say(f"tokenize: {n:,} tokens from {len(run.staging)} staging file(s) in {seconds:.1f}s ({n / max(seconds, 1e-9):,.0f} tokens/s)")
