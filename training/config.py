"""Options of the training package's commands, kept apart from the code that needs torch so that the CLI can
build its parser (and `raylm validate`, `submit`, `jobs` can run) without importing torch."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass
class SampleOptions:
    """`raylm sample`: generation from a checkpoint."""

    prompt: str = "\n"
    max_new_tokens: int = 200
    temperature: float = 0.8  # 0: greedy
    top_k: int | None = 200  # sample among the k likeliest tokens (None: all)
    seed: int = 0
    num_samples: int = 1


@dataclass
class EvalOptions:
    """`raylm eval`: LM and task metrics on a split or a file."""

    checkpoint: str | None = None  # run dir or checkpoint dir; None: the recipe's run
    split: str = "val"
    file: str | None = None  # a .txt (perplexity) or a prompt/completion .jsonl instead of a split
    max_windows: int | None = None  # LM metrics on at most this many windows (evenly spread); None: all
    max_examples: int = 1000  # task metrics on the first N examples
    max_labels: int = 50  # completions count as labels (accuracy, macro-F1) when there are at most this many distinct
    max_new_tokens: int = 64  # generation cap (also bounded by the longest reference + 2)
    device: str = "cpu"
