"""The per-document pass, run in a Ray Data actor pool (encoder built once per actor):
normalize -> reject/filter -> exact hash -> MinHash signature -> split -> tokenize,
written as one staging parquet file per block, named by its first uid so that the concatenation
of all staging files in name order is the input order, whatever the batching was.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import xxhash

from pipelines.clean import normalize, quality_filter
from pipelines.config import DataConfig, MinHashConfig
from pipelines.dedup import signatures_from_words, text_hash, words_of
from pipelines.shards import binary_column
from pipelines.stats import Stats
from pipelines.tokenize import TokenizerSpec, encode_documents, encode_with_masks

SPLIT_TRAIN, SPLIT_VAL = 0, 1
_CHUNK = 256  # documents processed together inside a block


def staging_schema(cfg: DataConfig, tokenized: bool) -> pa.Schema:
    fields = [
        ("uid", pa.int64()),
        ("id", pa.string()),
        ("src", pa.string()),
        ("status", pa.string()),
        ("nbytes", pa.int64()),
        ("hash", pa.uint64()),
        ("split", pa.int8()),
    ]
    if cfg.dedup.minhash.enabled:
        fields.append(("sig", pa.binary(4 * cfg.dedup.minhash.num_perm)))
    fields.append(("tokens", pa.large_binary()) if tokenized else ("text", pa.large_string()))
    if tokenized and cfg.has_tasks:
        fields.append(("mask", pa.large_binary()))  # uint8 loss mask per token (see encode_with_masks)
    return pa.schema(fields)


def split_of(doc_id: str, seed: int, val_fraction: float) -> int:
    """Stable train/val assignment from a hash of the id: the same on every rerun and machine."""
    return SPLIT_VAL if xxhash.xxh64_intdigest(doc_id.encode("utf-8"), seed=seed) < val_fraction * 2.0**64 else SPLIT_TRAIN


# the steps a processing actor times, in order (stats.json: actor_cpu_seconds)
STEPS = ("clean", "minhash", "tokenize", "write")


@dataclass
class _Batch:
    """One block's columns as Python lists, and what processing fills in."""

    raw: list
    rejects: list
    ids: list
    prompt_chars: list
    hashes: np.ndarray
    split: np.ndarray
    sig: np.ndarray | None
    status: list = field(default_factory=list)
    kept_idx: list = field(default_factory=list)
    kept_out: list = field(default_factory=list)  # token arrays, or cleaned texts when the tokenizer is trained later
    kept_masks: list = field(default_factory=list)

    @classmethod
    def of(cls, batch: pa.Table, mh: MinHashConfig) -> _Batch:
        n = batch.num_rows
        return cls(
            batch["text"].to_pylist(),
            batch["reject"].to_pylist(),
            batch["id"].to_pylist(),
            batch["prompt_chars"].to_pylist(),
            np.zeros(n, dtype=np.uint64),
            np.zeros(n, dtype=np.int8),
            np.zeros((n, mh.num_perm), dtype=np.uint32) if mh.enabled else None,
        )


class DocProcessor:
    def __init__(self, cfg: DataConfig, staging_dir: str, tokenizer: TokenizerSpec | None):
        import fsspec

        self.cfg, self.staging_dir = cfg, staging_dir
        self.fs, _ = fsspec.core.url_to_fs(staging_dir)
        self.enc = tokenizer.load() if tokenizer is not None else None
        self.schema = staging_schema(cfg, tokenized=self.enc is not None)

    def _clean(self, text: str | None, reject: str | None, task: bool) -> tuple[str, str | None, list[str] | None]:
        """(status, cleaned text, words) of one document."""
        if reject is not None:
            return f"reject:{reject}", None, None
        if task:  # a curated example: normalizing could move the prompt/completion boundary, the filters are for web text
            return "kept", text, words_of(text)
        cfg = self.cfg.clean
        if cfg.enabled:
            text = normalize(text, cfg.normalize)
            if not text:
                return "reject:empty", None, None
        words = words_of(text)
        why = quality_filter(text, cfg, words) if cfg.enabled else None
        return ("kept", text, words) if why is None else (f"filter:{why}", None, None)

    def _chunk(self, batch: _Batch, lo: int, hi: int, stats: Stats) -> None:
        """Clean, hash, sign and tokenize documents lo..hi of a block: word and token lists live for one chunk."""
        cfg, b = self.cfg, batch
        with stats.timer("clean"):
            idx, texts, words = [], [], []
            for i in range(lo, hi):
                st, text, w = self._clean(b.raw[i], b.rejects[i], b.prompt_chars[i] is not None)
                b.status.append(st)
                if text is not None:
                    idx.append(i)
                    texts.append(text)
                    words.append(w)
                    b.hashes[i] = text_hash(text)
                    b.split[i] = split_of(b.ids[i], cfg.output.seed, cfg.output.val_fraction)
        with stats.timer("minhash"):
            if b.sig is not None and idx:
                b.sig[idx] = signatures_from_words(words, cfg.dedup.minhash)
        with stats.timer("tokenize"):
            if self.enc is not None and cfg.has_tasks:
                docs, masks = encode_with_masks(self.enc, texts, [b.prompt_chars[i] for i in idx])
                b.kept_out += docs
                b.kept_masks += masks
            elif self.enc is not None:
                b.kept_out += encode_documents(self.enc, texts)
            else:
                b.kept_out += texts
        b.kept_idx += idx

    def _columns(self, batch: pa.Table, b: _Batch) -> dict[str, pa.Array]:
        """The staging file's columns (staging_schema)."""
        n = batch.num_rows
        cols = {
            "uid": batch["uid"],
            "id": batch["id"],
            "src": batch["src"],
            "status": pa.array(b.status, pa.string()),
            "nbytes": batch["nbytes"],
            "hash": pa.array(b.hashes),
            "split": pa.array(b.split),
        }
        if b.sig is not None:
            cols["sig"] = pa.FixedSizeBinaryArray.from_buffers(pa.binary(b.sig.shape[1] * 4), n, [None, pa.py_buffer(b.sig.tobytes())])
        where = np.asarray(b.kept_idx, dtype=np.int64)
        if self.enc is not None:
            cols["tokens"] = binary_column(b.kept_out, n, where, 4)
            if self.cfg.has_tasks:
                cols["mask"] = binary_column(b.kept_masks, n, where, 1)
        else:
            texts = [None] * n
            for k, i in enumerate(b.kept_idx):
                texts[i] = b.kept_out[k]
            cols["text"] = pa.array(texts, pa.large_string())
        return cols

    def __call__(self, batch: pa.Table) -> pa.Table:
        stats = Stats()
        n = batch.num_rows
        b = _Batch.of(batch, self.cfg.dedup.minhash)
        for lo in range(0, n, _CHUNK):
            self._chunk(b, lo, min(lo + _CHUNK, n), stats)
        uids = batch["uid"]
        first, last = int(uids[0].as_py()), int(uids[-1].as_py())
        if last - first + 1 < n or first >> 32 != last >> 32:  # a block must be one contiguous run of one file
            raise RuntimeError(f"block is not one contiguous input range: uids {first}..{last} for {n} rows")
        path = f"{self.staging_dir}/{first:020d}.parquet"
        with stats.timer("write"):
            table = pa.table(self._columns(batch, b), schema=self.schema)
            with self.fs.open(path + ".tmp", "wb") as f:  # tmp + rename: a retried task never leaves half a file
                pq.write_table(table, f, compression="zstd" if self.enc is None else "none")
            self.fs.mv(path + ".tmp", path)
        seconds = {f"s_{k}": [stats.seconds[k]] for k in STEPS}
        return pa.table({"path": [path], "first_uid": [first], "last_uid": [last], "rows": [n], **seconds})
