"""Each document's bits per byte under a raylm checkpoint: CCNet's perplexity score, for the data stage's
`data.quality.perplexity` (pipelines/perplexity.py).

A document is scored as `raylm eval --file` scores a file holding that one document: encoded as the shards hold a
document (end-of-text first), cut into non-overlapping windows of the model's seq_len, every token after the
first predicted; its bits per byte are the summed negative log-likelihood in bits over the UTF-8 bytes of the
text. Windows of many documents share forward passes (longest first, right-padded: a causal model's logits at a
position do not depend on what follows it), so a batch of documents costs about as many passes as its tokens
fill.
"""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F

from raylm.core.tokenizer import encode_documents

IGNORE = -100  # cross_entropy's ignore_index: padding


def windows(n: int, seq_len: int) -> list[tuple[int, int]]:
    """(start, end) of the token windows of a document of n tokens: each predicts tokens start+1..end-1."""
    return [(s, min(s + seq_len + 1, n)) for s in range(0, max(n - 1, 0), seq_len)]


@torch.no_grad()
def doc_nats(model, docs: list[np.ndarray], device: str, batch: int) -> np.ndarray:
    """The summed negative log-likelihood (nats) of each document's tokens after its first."""
    seq_len, pad = model.cfg.seq_len, int(docs[0][0]) if docs else 0
    items = sorted(((d, s, e) for d, doc in enumerate(docs) for s, e in windows(len(doc), seq_len)), key=lambda x: x[1] - x[2])
    total = np.zeros(len(docs), dtype=np.float64)
    for i in range(0, len(items), batch):
        part = items[i : i + batch]
        width = max(e - s for _, s, e in part) - 1
        x = torch.full((len(part), width), pad, dtype=torch.long)
        y = torch.full((len(part), width), IGNORE, dtype=torch.long)
        for k, (d, s, e) in enumerate(part):
            w = torch.from_numpy(docs[d][s:e].astype(np.int64))
            x[k, : e - s - 1], y[k, : e - s - 1] = w[:-1], w[1:]
        logits, _ = model(x.to(device))  # (B, T, vocab)
        nll = F.cross_entropy(logits.float().flatten(0, 1), y.to(device).flatten(), ignore_index=IGNORE, reduction="none")
        sums = nll.view(len(part), width).double().sum(1).cpu().numpy()  # (B,)
        np.add.at(total, [d for d, _, _ in part], sums)
    return total


def bits_per_byte(model, enc, texts: list[str], device: str = "cpu", batch: int = 16) -> list[float | None]:
    """Each text's bits per byte under the model (None for a text of no bytes)."""
    nats = doc_nats(model, encode_documents(enc, texts), device, batch)
    sizes = [len(t.encode("utf-8")) for t in texts]
    return [float(n / (b * math.log(2))) if b else None for n, b in zip(nats, sizes)]


class PerplexityScorer:
    """A Ray Data actor holding the checkpoint's model: rows of (uid, text) in, (uid, score) out."""

    def __init__(self, checkpoint: str, device: str = "cpu", batch: int = 16):
        from raylm.training.checkpoint import load_model

        torch.set_num_threads(1)  # one core an actor: the pool's size is the parallelism
        self.model, self.enc, _, _ = load_model(checkpoint, device)
        self.device, self.batch = device, batch

    def __call__(self, rows: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        scores = bits_per_byte(self.model, self.enc, [str(t) for t in rows["text"]], self.device, self.batch)
        return {"uid": rows["uid"], "score": np.array([np.nan if s is None else s for s in scores], dtype=np.float64)}
