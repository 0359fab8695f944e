"""The data stage's tokenizer: the one a recipe's `data.tokenizer` names, or a byte-level BPE trained with rustbpe
on the run's documents and saved into it. Loading and using a tokenizer is raylm.core.tokenizer."""

from __future__ import annotations

import base64
import posixpath
from collections.abc import Iterable
from pathlib import Path

import fsspec

from raylm.core.io import write_json
from raylm.core.tokenizer import CL100K_PATTERN, EOT, TokenizerError, TokenizerSpec, meta_path, registered
from raylm.pipelines.config import TokenizerConfig


def spec_from_config(cfg: TokenizerConfig) -> TokenizerSpec:
    if cfg.train is not None:
        raise TokenizerError("a trained tokenizer has no spec until it is trained")
    if cfg.path is not None:
        return TokenizerSpec(name=Path(cfg.path).stem, path=cfg.path)
    registered(cfg.name)  # fail early on a bad name
    return TokenizerSpec(name=cfg.name)


def train_bpe(texts: Iterable[str], vocab_size: int, out_path: str) -> TokenizerSpec:
    """Train a byte-level BPE with rustbpe; save ranks as .tiktoken and pattern/specials as .json."""
    import rustbpe

    specials = [EOT]
    tok = rustbpe.Tokenizer()
    tok.train_from_iterator(iter(texts), vocab_size - len(specials), pattern=CL100K_PATTERN)
    ranks = {bytes(k): v for k, v in tok.get_mergeable_ranks()}
    lines = [f"{base64.b64encode(k).decode()} {v}\n" for k, v in sorted(ranks.items(), key=lambda kv: kv[1])]
    fs, path = fsspec.core.url_to_fs(out_path)
    fs.makedirs(posixpath.dirname(path), exist_ok=True)
    with fsspec.open(out_path, "w") as f:
        f.writelines(lines)
    meta = {"name": "rustbpe", "pattern": tok.get_pattern(), "special_tokens": {s: len(ranks) + i for i, s in enumerate(specials)}}
    write_json(meta_path(out_path), meta)
    return TokenizerSpec(name="rustbpe", path=out_path)
