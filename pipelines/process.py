"""The per-document pass, run in a Ray Data actor pool (encoder built once per actor):
normalize -> reject/filter -> exact hash -> MinHash signature -> split -> tokenize,
written as one staging parquet file per block, named by its first uid so that the concatenation
of all staging files in name order is the input order, whatever the batching was.
"""

from __future__ import annotations

import time

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import xxhash

from pipelines.clean import normalize, quality_filter
from pipelines.config import DataConfig
from pipelines.dedup import signatures_from_words, text_hash, words_of
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


def binary_column(parts: list[np.ndarray], n_rows: int, where: np.ndarray, itemsize: int) -> pa.Array:
    """One large_binary value per row: the bytes of parts[k] at row where[k], empty elsewhere."""
    lengths = np.zeros(n_rows, dtype=np.int64)
    lengths[where] = [len(p) * itemsize for p in parts]
    offsets = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64)
    data = np.concatenate(parts).tobytes() if parts else b""
    return pa.LargeBinaryArray.from_buffers(pa.large_binary(), n_rows, [None, pa.py_buffer(offsets), pa.py_buffer(data)])


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

    def __call__(self, batch: pa.Table) -> pa.Table:
        cfg = self.cfg
        timings = {"clean": 0.0, "minhash": 0.0, "tokenize": 0.0, "write": 0.0}
        n = batch.num_rows
        raw, rejects, ids = batch["text"].to_pylist(), batch["reject"].to_pylist(), batch["id"].to_pylist()
        prompt_chars = batch["prompt_chars"].to_pylist()
        status: list[str] = []
        hashes = np.zeros(n, dtype=np.uint64)
        split = np.zeros(n, dtype=np.int8)
        mh = cfg.dedup.minhash
        sig = np.zeros((n, mh.num_perm), dtype=np.uint32) if mh.enabled else None
        kept_idx: list[int] = []
        kept_out: list = []  # token arrays, or cleaned texts when the tokenizer is trained later
        kept_masks: list = []
        # chunks of documents: word lists and token lists live for one chunk, not the whole block
        for lo in range(0, n, _CHUNK):
            t0 = time.perf_counter()
            idx, texts, words = [], [], []
            for i in range(lo, min(lo + _CHUNK, n)):
                st, text, w = self._clean(raw[i], rejects[i], prompt_chars[i] is not None)
                status.append(st)
                if text is not None:
                    idx.append(i)
                    texts.append(text)
                    words.append(w)
                    hashes[i] = text_hash(text)
                    split[i] = split_of(ids[i], cfg.output.seed, cfg.output.val_fraction)
            t1 = time.perf_counter()
            if sig is not None and idx:
                sig[idx] = signatures_from_words(words, mh)
            del words
            t2 = time.perf_counter()
            if self.enc is not None and self.cfg.has_tasks:
                docs, masks = encode_with_masks(self.enc, texts, [prompt_chars[i] for i in idx])
                kept_out += docs
                kept_masks += masks
            elif self.enc is not None:
                kept_out += encode_documents(self.enc, texts)
            else:
                kept_out += texts
            kept_idx += idx
            t3 = time.perf_counter()
            timings["clean"] += t1 - t0
            timings["minhash"] += t2 - t1
            timings["tokenize"] += t3 - t2
        t3 = time.perf_counter()
        where = np.asarray(kept_idx, dtype=np.int64)
        cols = {
            "uid": batch["uid"],
            "id": batch["id"],
            "src": batch["src"],
            "status": pa.array(status, pa.string()),
            "nbytes": batch["nbytes"],
            "hash": pa.array(hashes),
            "split": pa.array(split),
        }
        if sig is not None:
            cols["sig"] = pa.FixedSizeBinaryArray.from_buffers(pa.binary(4 * mh.num_perm), n, [None, pa.py_buffer(sig.tobytes())])
        if self.enc is not None:
            cols["tokens"] = binary_column(kept_out, n, where, 4)
            if self.cfg.has_tasks:
                cols["mask"] = binary_column(kept_masks, n, where, 1)
        else:
            texts = [None] * n
            for k, i in enumerate(kept_idx):
                texts[i] = kept_out[k]
            cols["text"] = pa.array(texts, pa.large_string())
        uids = batch["uid"]
        first, last = int(uids[0].as_py()), int(uids[-1].as_py())
        if last - first + 1 < n or first >> 32 != last >> 32:  # a block must be one contiguous run of one file
            raise RuntimeError(f"block is not one contiguous input range: uids {first}..{last} for {n} rows")
        path = f"{self.staging_dir}/{first:020d}.parquet"
        table = pa.table(cols, schema=self.schema)
        with self.fs.open(path + ".tmp", "wb") as f:  # tmp + rename: a retried task never leaves half a file
            pq.write_table(table, f, compression="zstd" if self.enc is None else "none")
        self.fs.mv(path + ".tmp", path)
        timings["write"] = time.perf_counter() - t3
        return pa.table({"path": [path], "first_uid": [first], "last_uid": [last], "rows": [n], **{f"s_{k}": [v] for k, v in timings.items()}})
