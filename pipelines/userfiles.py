"""The files a recipe or a command names besides its inputs (a tokenizer file, decontamination sets, URL
blocklists), checked before Ray starts: each exists, is a regular file that can be read,
and parses, read by the very function that will read it in the run, so the check and the use cannot disagree.
A file that fails is a UserFileError (exit 2), one line naming the recipe key, the file and, for a bad record,
its line."""

from __future__ import annotations

import os
from collections.abc import Callable

import fsspec

from raylm.core.io import RecordError, is_local
from raylm.pipelines.config import DataConfig
from raylm.pipelines.decontaminate import eval_examples
from raylm.pipelines.tokenizers import spec_from_config
from raylm.pipelines.url_filter import read_list


class UserFileError(ValueError):
    """A file the user named that cannot be used: `key: path[:line]: why`."""

    def __init__(self, key: str, path: str, why: str, line: int | None = None):
        super().__init__(f"{key}: {path}{f':{line}' if line is not None else ''}: {why}")


def _not_a_file(path: str) -> str | None:
    """Why `path` is not a regular file that can be read (None if it is one)."""
    fs, p = fsspec.core.url_to_fs(path)
    if not fs.exists(p):
        return "no such file"
    if fs.isdir(p):
        return "a directory, not a file"
    if is_local(fs):
        if not os.path.isfile(p):  # a FIFO, a device, a socket: opening one may block
            return "not a regular file"
        if not os.access(p, os.R_OK):
            return "not readable (permission denied)"
    return None


def check_file(key: str, path: str, read: Callable[[str], object] | None = None) -> None:
    """`path`, the value of `key`, is a regular readable file, and `read(path)` (the reader the run uses) takes
    it whole; else a UserFileError."""
    why = _not_a_file(path)
    if why is not None:
        raise UserFileError(key, path, why)
    if read is None:
        return
    try:
        read(path)
    except RecordError as e:
        raise UserFileError(key, path, e.why, e.line) from None
    except Exception as e:  # noqa: BLE001 - whatever the run's reader raises on this file, the run would fail on it
        raise UserFileError(key, path, f"cannot be read: {type(e).__name__}: {e}") from None


def check_data_files(data: DataConfig) -> None:
    """Every file the data section names, read as the data stage reads it: the tokenizer (a `.tiktoken` file
    loads; a name resolves offline), the decontamination sets and the URL blocklists."""
    tok = data.tokenizer
    if tok.path is not None:
        check_file("data.tokenizer.path", tok.path)
    if tok.train is None:
        spec_from_config(tok).load()  # a TokenizerError (exit 2) naming the key
    for k, path in enumerate(data.decontaminate.files):
        check_file(f"data.decontaminate.files[{k}]", path, lambda p: sum(1 for _ in eval_examples(p)))
    ft = data.quality.fasttext
    if ft.model is not None:
        from raylm.pipelines.quality import load_classifier, local_copy

        loaded = []  # loaded once: a model such as DCLM's is gigabytes
        check_file("data.quality.fasttext.model", ft.model, lambda p: loaded.append(load_classifier(local_copy(p))))
        labels = loaded[0].labels
        if ft.label not in labels:
            shown = ", ".join(labels[:12]) + (f" and {len(labels) - 12} more" if len(labels) > 12 else "")
            raise UserFileError("data.quality.fasttext.label", ft.model, f"the model has no label {ft.label!r} (its labels: {shown})")
    for key in ("block_domains", "block_urls"):
        for k, path in enumerate(getattr(data.url_filter, key)):
            check_file(f"data.url_filter.{key}[{k}]", path, read_list)
