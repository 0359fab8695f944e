"""The tokenizer stage, when the recipe sets `data.tokenizer.train`: a byte-level BPE (rustbpe, in a Ray
task) trained on the documents that survive dedup, which then tokenizes them (one `<staging>.tokens`
file per staging file, in Ray Data tasks). With a named or file tokenizer the process stage tokenized
already and this stage is left out."""

from __future__ import annotations

import itertools
from collections.abc import Iterator

import fsspec
import numpy as np
import pyarrow as pa
import pyarrow.dataset as pads
import pyarrow.parquet as pq
import ray

from pipelines.paths import TOKENIZER
from pipelines.shards import binary_column
from pipelines.stage import DataRun, Stage, built_once
from pipelines.staging import final_texts
from pipelines.stats import Stats
from pipelines.tokenize import TokenizerSpec, encode_documents, train_bpe


def kept_texts(staging: list[dict], dups: pads.Dataset | None, limit: int | None) -> Iterator[str]:
    """Texts of the final kept documents, in order (for tokenizer training)."""
    texts = (x for s in staging for x in final_texts(s["path"], s["first_uid"], s["last_uid"], dups))
    return itertools.islice(texts, limit)


@ray.remote(num_cpus=1)
def _train_task(staging: list[dict], dups_dir: str | None, vocab_size: int, limit: int | None, out: str) -> TokenizerSpec:
    dups = pads.dataset(dups_dir, format="parquet") if dups_dir else None
    return train_bpe(kept_texts(staging, dups, limit), vocab_size, out)


class TokenizeFile:
    """Tokenizes the final kept documents of one staging file into `<file>.tokens`."""

    def __init__(self, spec: TokenizerSpec, dups_dir: str | None):
        self.enc = spec.load()
        self.dups = pads.dataset(dups_dir, format="parquet") if dups_dir else None

    def __call__(self, batch: dict) -> dict:
        for path, first, last in zip(batch["path"], batch["first_uid"], batch["last_uid"]):
            texts = final_texts(path, int(first), int(last), self.dups)
            parts = encode_documents(self.enc, texts)
            col = binary_column(parts, len(parts), np.arange(len(parts)), 4)
            ntokens = pa.array([len(p) for p in parts], pa.int32())
            pq.write_table(pa.table({"ntokens": ntokens, "tokens": col}), path + ".tokens.tmp", compression="none")
            fs, _ = fsspec.core.url_to_fs(path)
            fs.mv(path + ".tokens.tmp", path + ".tokens")
        return {"path": batch["path"]}


def tokenize_files(batch: dict, spec: TokenizerSpec, dups_dir: str | None) -> dict:
    """The encode step's Ray Data task: a TokenizeFile built once per worker process (pipelines.stage.built_once)."""
    return built_once(TokenizeFile, spec, dups_dir)(batch)


class TrainTokenizer(Stage):
    name = "tokenizer"
    reads = ("_work/docs/*.parquet", "_work/dups/part-*.parquet")
    writes = (TOKENIZER, "_work/docs/*.parquet.tokens")

    def enabled(self, run: DataRun) -> bool:
        return run.trains_tokenizer

    def run(self, run: DataRun, stats: Stats) -> None:
        import ray.data as rd

        train = run.data.tokenizer.train
        dups_dir = run.dups_dir if run.dups is not None else None
        with stats.timer("train"):
            run.say(f"training a BPE tokenizer (vocab {train.vocab_size}) with rustbpe on the kept documents")
            run.tokenizer = ray.get(_train_task.remote(run.staging, dups_dir, train.vocab_size, train.max_docs, f"{run.root}/{TOKENIZER}"))
        with stats.timer("encode"):
            rd.from_items([{k: s[k] for k in ("path", "first_uid", "last_uid")} for s in run.staging]).map_batches(
                tokenize_files,
                fn_args=(run.tokenizer, dups_dir),
                batch_size=1,
                compute=rd.TaskPoolStrategy(size=run.workers),
            ).materialize()
        stats.counts["staging_files"] = len(run.staging)
