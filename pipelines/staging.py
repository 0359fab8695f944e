"""The staging files between the process stage and the tokenize and write stages (data/_work/docs/<first
uid>.parquet): one per input block, every input row in it (kept with its cleaned text, or with the reason it
was removed), named by its first uid so that the files in name order are the input order, whatever the
batching was. Beside each, the tokenize stage leaves `<file>.tokens`: the tokens of its documents that
survived dedup."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.dataset as pads
import pyarrow.parquet as pq
import xxhash

from raylm.pipelines.config import DataConfig
from raylm.pipelines.stage import Column, schema_of

SPLIT_TRAIN, SPLIT_VAL = 0, 1
# a record that is no document by its kind (a WARC request, a redirect, an image): counted as skipped, never
# listed in removed.parquet, which holds documents
SKIP = "skip:"


def staging_schema(cfg: DataConfig, columns: tuple[Column, ...]) -> pa.Schema:
    """A staging file's columns: every run's, then the steps' own (`columns`, pipelines.stage.columns_of)."""
    fields = [
        ("uid", pa.int64()),
        ("id", pa.string()),
        ("src", pa.string()),
        ("status", pa.string()),
        ("nbytes", pa.int64()),
        ("hash", pa.uint64()),
        ("split", pa.int8()),
        ("url", pa.string()),  # web input: the page's URL and WARC-Date (else null), for docs.parquet
        ("date", pa.string()),
    ]
    fields += [(c.name, c.type) for c in columns]
    if cfg.dedup.minhash.enabled:
        fields.append(("sig", pa.binary(4 * cfg.dedup.minhash.num_perm)))
    # UTF-8 bytes of a kept document's cleaned text (0 for the others): the splits' bytes in the manifest, which
    # turn a loss per token into bits per byte
    fields.append(("text_bytes", pa.int64()))
    fields.append(("text", pa.large_string()))  # a kept document's cleaned text (else null), which the tokenize stage encodes
    if cfg.has_tasks:
        fields.append(("prompt_chars", pa.int32()))  # a task record's prompt length in characters (see encode_with_masks)
    return schema_of(fields)


def tokens_schema(masks: bool) -> pa.Schema:
    """`<staging file>.tokens`: the tokenize stage's output, one row per document that survived dedup, in order.
    The token count apart: the write stage lays shards out from counts without reading the tokens."""
    fields = [("ntokens", pa.int32()), ("tokens", pa.large_binary())]  # tokens: uint32, the shard format's document
    if masks:
        fields.append(("mask", pa.large_binary()))  # uint8 loss mask per token (see encode_with_masks)
    return pa.schema(fields)


def split_of(doc_id: str, seed: int, val_fraction: float) -> int:
    """Stable train/val assignment from a hash of the id: the same on every rerun and machine."""
    return SPLIT_VAL if xxhash.xxh64_intdigest(doc_id.encode("utf-8"), seed=seed) < val_fraction * 2.0**64 else SPLIT_TRAIN


def dups_in(dups: pads.Dataset | None, first: int, last: int) -> dict[int, tuple[str, str]]:
    """uid -> (reason, kept_id) of the duplicates among uids first..last (one staging file)."""
    if dups is None:
        return {}
    t = dups.to_table(filter=(pads.field("uid") >= first) & (pads.field("uid") <= last), columns=["uid", "reason", "kept_id"])
    return dict(zip(t["uid"].to_pylist(), zip(t["reason"].to_pylist(), t["kept_id"].to_pylist())))


def final_mask(t: pa.Table, dups: dict) -> np.ndarray:
    """Which rows of a staging table survive both processing and dedup."""
    kept = np.asarray(t["status"].to_numpy(zero_copy_only=False) == "kept")
    if dups:
        uid = t["uid"].to_numpy()
        kept &= ~np.isin(uid, np.fromiter(dups.keys(), dtype=np.int64, count=len(dups)))
    return kept


def survivors(path: str, first: int, last: int, dups: pads.Dataset | None, columns: list[str] | None = None) -> tuple[pa.Table, np.ndarray]:
    """A staging file's columns (None: all of them) and which of its rows are documents after processing and dedup,
    task records aside: what the stages after dedup (paragraphs, perplexity, select) work on."""
    if columns is not None:
        names = pq.read_schema(path).names
        columns = [c for c in dict.fromkeys((*columns, "uid", "status", "prompt_chars")) if c in names]
    t = pq.read_table(path, columns=columns)
    mask = final_mask(t, dups_in(dups, first, last))
    if "prompt_chars" in t.column_names:  # a task record is an example the user chose: never edited or scored
        mask &= t["prompt_chars"].is_null().to_numpy(zero_copy_only=False)
    return t, mask


def final_texts(path: str, first: int, last: int, dups: pads.Dataset | None, prompts: bool = False) -> tuple[list[str], list[int | None]]:
    """Cleaned texts of the documents of one staging file that survive dedup, in order, and (`prompts`: a task
    recipe's staging) their prompts' lengths (else all None)."""
    t = pq.read_table(path, columns=["uid", "status", "text", *(["prompt_chars"] if prompts else [])])
    keep = pa.array(final_mask(t, dups_in(dups, first, last)))
    texts = t["text"].filter(keep).to_pylist()
    return texts, t["prompt_chars"].filter(keep).to_pylist() if prompts else [None] * len(texts)


def groups_of(staging: list[dict], n: int) -> list[list[dict]]:
    """The staging files (in uid order) cut into at most n runs of consecutive files, as even as can be."""
    n = max(1, min(n, len(staging)))
    bounds = np.linspace(0, len(staging), n + 1).round().astype(int)
    return [staging[a:b] for a, b in zip(bounds[:-1], bounds[1:]) if b > a]
