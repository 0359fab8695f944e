"""Decontamination (data.decontaminate): a training document that shares an n-gram of `ngram` words with any
evaluation example is removed (`filter:contamination`; removed.parquet's kept_id names the example, file:line).

The evaluation side is small, so every processing task holds its n-grams (built once per worker process), and
the corpus streams past them: no process ever holds the corpus's n-grams. Words are lowercased runs of letters
and digits (`\\w+`), so punctuation, case and spacing do not hide a copy (GPT-3's and the Pile's convention);
an n-gram is hashed from its words' xxhash64 values (a polynomial over the n words, wrapping at 2^64)."""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Iterator

import fsspec
import numpy as np
import pyarrow as pa
import xxhash

from raylm.core.io import RecordError, text_lines
from raylm.pipelines.stage import Chunk, Column, Step

_WORD = re.compile(r"\w+")
_BASE = np.uint64(0x100000001B3)  # FNV-64's prime: an odd multiplier, so each word's place changes the hash
REASON = "filter:contamination"


def ngram_hashes(text: str, n: int) -> np.ndarray:
    """uint64 hashes of every run of `n` consecutive words of the text (none when it has fewer words)."""
    words = _WORD.findall(text.lower())
    if len(words) < n:
        return np.zeros(0, dtype=np.uint64)
    wh = np.fromiter((xxhash.xxh64_intdigest(w.encode()) for w in words), dtype=np.uint64, count=len(words))
    acc = np.zeros(len(words) - n + 1, dtype=np.uint64)
    with np.errstate(over="ignore"):
        for j in range(n):
            acc = acc * _BASE + wh[j : len(words) - n + 1 + j]
    return acc


def eval_examples(path: str) -> Iterator[tuple[int, str]]:
    """(line number, text) of each example of an evaluation file: a .jsonl record's `text`, or its prompt and
    completion (any string fields); a line of any other file. A line that is not UTF-8, or in a .jsonl not a
    JSON object, is a RecordError naming it (checked before Ray starts: pipelines/userfiles.py)."""
    with fsspec.open(path, "rb", compression="infer") as f:
        for i, line in text_lines(f):
            if not line.strip():
                continue
            if ".jsonl" in path or ".json" in path:
                yield i, _record_text(line, i)
            else:
                yield i, line


def _record_text(line: str, i: int) -> str:
    try:
        rec = json.loads(line)
    except ValueError as e:
        raise RecordError(f"not valid JSON ({getattr(e, 'msg', e)})", i) from None
    if not isinstance(rec, dict):
        raise RecordError(f"not a JSON object (a {type(rec).__name__})", i)
    text = rec.get("text")
    if text is not None and not isinstance(text, str):
        raise RecordError(f"'text' is a {type(text).__name__}, not a string", i)
    return text if text is not None else " ".join(v for v in rec.values() if isinstance(v, str))


class EvalNgrams:
    """The n-grams of the evaluation files: sorted hashes and, beside each, which example it came from."""

    def __init__(self, examples: Iterable[tuple[str, str]], n: int):
        """`examples`: (name, text) pairs."""
        hashes, owner, self.names = [], [], []
        for name, text in examples:
            h = ngram_hashes(text, n)
            hashes.append(h)
            owner.append(np.full(len(h), len(self.names), dtype=np.int64))
            self.names.append(name)
        h, o = (np.concatenate(hashes), np.concatenate(owner)) if hashes else (np.zeros(0, np.uint64), np.zeros(0, np.int64))
        order = np.argsort(h, kind="stable")
        self.hashes, self.owner, self.n = h[order], o[order], n

    @classmethod
    def from_files(cls, files: list[str], n: int) -> EvalNgrams:
        """The examples of evaluation files, each named file:line."""
        return cls(((f"{path}:{line}", text) for path in files for line, text in eval_examples(path)), n)

    def match(self, text: str) -> str | None:
        """The first evaluation example (file:line) sharing an n-gram with the text, or None."""
        if not len(self.hashes):
            return None
        h = ngram_hashes(text, self.n)
        pos = np.searchsorted(self.hashes, h)
        hit = (pos < len(self.hashes)) & (self.hashes[np.minimum(pos, len(self.hashes) - 1)] == h)
        return self.names[int(self.owner[pos[np.argmax(hit)]])] if hit.any() else None


class Decontaminate(Step):
    """Drops documents that share an n-gram with an evaluation example (data.decontaminate)."""

    name = "decontaminate"
    # the evaluation example (file:line) a removed document matched: removed.parquet's kept_id, not a kept document's
    columns = (Column("match", pa.string(), docs=False),)

    @classmethod
    def enabled(cls, cfg) -> bool:
        return bool(cfg.decontaminate.files)

    def __init__(self, cfg):
        super().__init__(cfg)
        self.ngrams = EvalNgrams.from_files(cfg.decontaminate.files, cfg.decontaminate.ngram)
        self.counts = {"contaminated": 0}

    def __call__(self, c: Chunk) -> None:
        found = [self.ngrams.match(t) for t in c.texts]
        for k, m in enumerate(found):
            if m is not None:
                c.set("match", k, m)
        self.counts["contaminated"] += sum(m is not None for m in found)
        c.drop([REASON if m is not None else None for m in found])
