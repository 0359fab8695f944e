"""Where per-step metrics go besides `ray.train.report`: `train/metrics.jsonl` (one JSON object per
optimizer step) and TensorBoard event files in `train/tensorboard/`, written by rank 0; and the
loss-curve PNG drawn from metrics.jsonl at the end of a run.
"""

from __future__ import annotations

import json
import math
import tempfile

import fsspec

from raylm.core.io import is_local
from raylm.core.manifest import Manifest
from raylm.core.paths import METRICS, TENSORBOARD
from raylm.core.plots import save_figure
from raylm.core.progress import cell

SCALARS = ("loss", "lr", "grad_norm", "tokens_per_s", "mfu", "val_loss", "val_ppl", "val_bpb")


def bits_per_byte(loss: float | None, tokens: int, nbytes: int | None) -> float | None:
    """A loss in nats per token as bits per byte of UTF-8 text, over text of `tokens` tokens (end-of-text
    tokens included: their loss counts, they decode to no text) and `nbytes` bytes: what compares across
    tokenizers. None without a loss or a byte count (a manifest written before splits had `bytes`)."""
    if loss is None or not nbytes:
        return None
    return loss * tokens / (nbytes * math.log(2))


def split_bpb(loss: float | None, manifest: Manifest, split: str) -> float | None:
    """bits_per_byte of a loss over one split of a manifest. None under a loss mask: that loss counts only
    completion tokens, which the split's token and byte counts do not separate."""
    if manifest.loss_mask:
        return None
    s = manifest.splits[split]
    return bits_per_byte(loss, s.tokens, s.bytes)


def loss_text(loss: float, bpb: float | None) -> str:
    """A loss with its bits per byte beside it when known, as summaries print it: `6.4351 (2.8524 bits/byte)`."""
    return cell(loss, ".4f") + (f" ({cell(bpb, '.4f')} bits/byte)" if bpb is not None else "")


def read_metrics(path: str) -> list[dict]:
    fs, _ = fsspec.core.url_to_fs(path)
    if not fs.exists(path):
        return []
    return [json.loads(ln) for ln in fs.cat(path).decode().splitlines() if ln.strip()]


class MetricsLog:
    """Rank 0's metrics sink. Opening it after a resume from step `step` drops the rows (and
    TensorBoard points) of the steps past it, which are about to be redone."""

    def __init__(self, train_dir: str, step: int, tensorboard: bool = True, trackers=None):
        self.trackers = trackers  # training.tracking.Trackers (MLflow, W&B), or None
        self.path = f"{train_dir}/{METRICS}"
        fs, _ = fsspec.core.url_to_fs(train_dir)
        fs.makedirs(train_dir, exist_ok=True)
        keep = [r for r in read_metrics(self.path) if r["step"] <= step]
        with fsspec.open(self.path, "w") as f:
            f.write("".join(json.dumps(r) + "\n" for r in keep))
        self._f = fsspec.open(self.path, "a").open()
        self.tb = None
        if tensorboard:
            self._open_tensorboard(train_dir, fs, step)

    def _open_tensorboard(self, train_dir: str, fs, step: int) -> None:
        # TensorBoard writes local files; on remote storage they are uploaded at every flush()
        self.tb_remote = None if is_local(fs) else f"{train_dir}/{TENSORBOARD}"
        tb_dir = f"{train_dir}/{TENSORBOARD}" if self.tb_remote is None else tempfile.mkdtemp(prefix="raylm-tb-")
        if self.tb_remote is not None and fs.exists(self.tb_remote):
            fs.get(self.tb_remote, tb_dir, recursive=True)
        from tensorboardX import SummaryWriter

        self.tb = SummaryWriter(tb_dir, purge_step=step + 1 if step else None, flush_secs=30)
        self.tb_dir = tb_dir

    def log(self, row: dict) -> None:
        from raylm.training.tasks import scalars

        self._f.write(json.dumps(row) + "\n")
        self._f.flush()
        if self.tb is not None:
            for k in SCALARS:
                if row.get(k) is not None:
                    self.tb.add_scalar(f"train/{k}" if not k.startswith("val") else f"eval/{k}", row[k], row["step"])
            for name, v in (row.get("val_sources") or {}).items():  # per source of a mixture
                self.tb.add_scalar(f"eval/val_loss/{name}", v["loss"], row["step"])
            if row.get("val_mixture"):  # the sources' val losses weighted as training draws them
                self.tb.add_scalar("eval/val_loss_mixture", row["val_mixture"]["loss"], row["step"])
            for k, v in scalars(row).items():  # train.eval.tasks: eval/tasks/<name>/acc ..., eval/tasks/core
                self.tb.add_scalar(f"eval/{k}", v, row["step"])
        if self.trackers is not None:
            self.trackers.log(row)

    def flush(self) -> None:
        if self.tb is None:
            return
        self.tb.flush()
        if self.tb_remote is not None:
            fs, _ = fsspec.core.url_to_fs(self.tb_remote)
            fs.put(self.tb_dir.rstrip("/") + "/", self.tb_remote, recursive=True)

    def close(self) -> None:
        self.flush()
        if self.tb is not None:
            self.tb.close()
        if self.trackers is not None:
            self.trackers.close()
        self._f.close()


def plot_losses(rows: list[dict], out_path: str, title: str | None = None) -> str | None:
    """Train loss per step and val loss at eval steps against tokens seen (what compares runs of different
    batch sizes), the learning rate on a second axis, as a PNG at `out_path` (any fsspec URL)."""
    if not rows:
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7.5, 4), dpi=110)
    ax.plot([r["tokens"] for r in rows], [r["loss"] for r in rows], lw=1, label="train loss")
    ev = [r for r in rows if r.get("val_loss") is not None]
    if ev:
        ax.plot([r["tokens"] for r in ev], [r["val_loss"] for r in ev], "o-", ms=3, label="val loss")
    ax.set_xlabel(f"tokens seen ({rows[-1]['step']:,} optimizer steps)")
    ax.set_ylabel("cross-entropy (nats/token)")
    ax.set_title(title or "loss")
    ax.grid(alpha=0.3)
    lr = ax.twinx()
    lr.plot([r["tokens"] for r in rows], [r["lr"] for r in rows], color="tab:gray", lw=1, ls="--", label="learning rate")
    lr.set_ylabel("learning rate")
    lr.ticklabel_format(axis="y", style="sci", scilimits=(-2, 2))
    lines = ax.get_legend_handles_labels(), lr.get_legend_handles_labels()
    ax.legend(lines[0][0] + lines[1][0], lines[0][1] + lines[1][1], loc="upper right")
    fig.tight_layout()
    return save_figure(fig, out_path)
