"""Synthetic corpora built from the bundled sample: scene-sized pieces, with injected exact and
near duplicates at known word-edit rates. Used by the dedup tests and the throughput benchmark. And random token
shards (`random_shards`), for the Trainer driven without a data stage (tests, checkpoint benchmark)."""

from __future__ import annotations

import gzip
import json
import random
from collections.abc import Iterator
from pathlib import Path

SAMPLE = Path(__file__).resolve().parents[1] / "data" / "sample" / "shakespeare.jsonl.gz"


def pieces(min_chars: int = 2000, max_chars: int = 4000) -> list[dict]:
    """The sample's plays cut at blank lines into pieces of min..max chars, ids `play#k`."""
    out = []
    with gzip.open(SAMPLE, "rt", encoding="utf-8") as f:
        for line in f:
            doc = json.loads(line)
            buf, k = [], 0
            size = 0
            for para in doc["text"].split("\n\n"):
                buf.append(para)
                size += len(para) + 2
                if size >= min_chars:
                    text = "\n\n".join(buf)[:max_chars]
                    out.append({"id": f"{doc['id']}#{k:04d}", "text": text})
                    buf, size, k = [], 0, k + 1
    return out


def edit_words(text: str, rate: float, rng: random.Random, vocab: list[str]) -> str:
    """Replace each word with a random vocabulary word with probability `rate`, keeping layout."""
    if rate <= 0:
        return text
    lines = []
    for line in text.split("\n"):
        words = line.split(" ")
        lines.append(" ".join(rng.choice(vocab) if w and rng.random() < rate else w for w in words))
    return "\n".join(lines)


def vocabulary(docs: list[dict]) -> list[str]:
    vocab = sorted({w for d in docs[:500] for w in d["text"].split()})
    return vocab


def injected(n_base: int, seed: int = 0, rates: tuple[float, ...] = (0.003, 0.007, 0.1, 0.2), dup_share: float = 0.5) -> list[dict]:
    """`n_base` pieces; for a `dup_share` of them one extra document: an exact copy or a copy with
    words edited at one of `rates`. Each base gets at most one variant, so every true near-duplicate
    pair is (base, variant) and its Jaccard sits where its edit rate puts it."""
    rng = random.Random(seed)
    base = pieces()
    rng.shuffle(base)
    base = base[:n_base]
    vocab = vocabulary(base)
    docs = list(base)
    for d in base:
        if rng.random() < dup_share:
            rate = rng.choice((0.0,) + rates)
            docs.append({"id": f"{d['id']}~{rate}", "text": edit_words(d["text"], rate, rng, vocab)})
    rng.shuffle(docs)
    return docs


def scaled(target_bytes: int, seed: int = 0, near_share: float = 0.05, exact_share: float = 0.03) -> Iterator[dict]:
    """About `target_bytes` of text: rounds of the sample's pieces, each round with 35% of words
    replaced (new, non-duplicate text), plus near duplicates (1% edits) and exact copies."""
    rng = random.Random(seed)
    base = pieces()
    vocab = vocabulary(base)
    total, rnd = 0, 0
    while total < target_bytes:
        for d in base:
            text = d["text"] if rnd == 0 else edit_words(d["text"], 0.35, rng, vocab)
            doc = {"id": f"r{rnd}/{d['id']}", "text": text}
            yield doc
            total += len(text)
            r = rng.random()
            if r < near_share:
                yield {"id": f"r{rnd}/{d['id']}~near", "text": edit_words(text, 0.01, rng, vocab)}
                total += len(text)
            elif r < near_share + exact_share:
                yield {"id": f"r{rnd}/{d['id']}~copy", "text": text}
                total += len(text)
            if total >= target_bytes:
                return
        rnd += 1


def long_docs(target_bytes: int, seed: int = 0, near_share: float = 0.3, parts: tuple[int, int] = (10, 30)) -> Iterator[dict]:
    """About `target_bytes` of long documents (10-30 consecutive pieces: ~30-120 KB each, like licences,
    manuals or books) with many near copies (`near_share` of them get a copy with 1% of words edited)."""
    rng = random.Random(seed)
    base = pieces()
    vocab = vocabulary(base)
    total, k = 0, 0
    while total < target_bytes:
        start, n = rng.randrange(len(base)), rng.randint(*parts)
        text = "\n\n".join(edit_words(d["text"], 0.35, rng, vocab) for d in base[start : start + n])
        yield {"id": f"long{k}", "text": text}
        total += len(text)
        if rng.random() < near_share:
            yield {"id": f"long{k}~near", "text": edit_words(text, 0.01, rng, vocab)}
            total += len(text)
        k += 1


def random_shards(data_dir: Path, docs: tuple[int, int], lengths: tuple[int, int], shard_tokens: int) -> None:
    """Shards of random documents (vocab 100, end-of-text 99) with their manifest under `data_dir`: `docs` train
    and val documents, each of a length in [lengths[0], lengths[1]), seed 0."""
    import numpy as np

    from raylm.core.manifest import write_manifest
    from raylm.pipelines.shards import ShardWriter

    rng = np.random.default_rng(0)
    splits = {}
    for split, count in zip(("train", "val"), docs):
        w = ShardWriter(str(data_dir), split, np.dtype(np.uint16), shard_tokens=shard_tokens)
        for _ in range(count):
            n = int(rng.integers(*lengths))
            w.add(np.r_[99, rng.integers(0, 99, n - 1)].astype(np.uint32), np.array([n]))
        splits[split] = w.close()
    man = {"format": "raylm-shards", "version": 1, "dtype": "uint16", "splits": splits, "tokenizer": {"name": "t", "n_vocab": 100, "eot": 99}}
    write_manifest(str(data_dir), man)
