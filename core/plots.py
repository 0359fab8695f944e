"""Pictures a stage leaves beside its numbers (matplotlib, headless), written to any fsspec URL:
`data/removed.png` here; training's loss.png and a campaign's plots use `save_figure` too."""

from __future__ import annotations

import os
import tempfile

from raylm.core.manifest import Stats


def save_figure(fig, path: str) -> str:
    """Write a matplotlib figure as PNG to `path` (any fsspec URL) and close it."""
    import fsspec
    import matplotlib.pyplot as plt

    with tempfile.TemporaryDirectory() as d:
        local = os.path.join(d, "fig.png")
        fig.savefig(local)
        plt.close(fig)
        fs, _ = fsspec.core.url_to_fs(path)
        fs.put_file(local, path)
    return path


def plot_removed(stats: Stats, nbytes: dict[str, int | None], path: str, title: str) -> str:
    """Documents kept and removed by reason (a manifest's `stats`), and the input bytes against the bytes of
    text kept (`nbytes`: bytes_in, kept), as one PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = [("kept", stats.docs_kept)] + sorted(stats.removed.items(), key=lambda kv: -kv[1])
    # records that are no documents (web input: requests, redirects, ...): counted apart, no share of documents
    rows += [(f"skipped: {k.removeprefix('skip:')}", v) for k, v in sorted((stats.skipped or {}).items(), key=lambda kv: -kv[1])]
    fig, (ax, bx) = plt.subplots(1, 2, figsize=(10, 0.9 + 0.35 * len(rows)), dpi=110, width_ratios=[3, 1])
    labels, counts = [r[0] for r in rows][::-1], [r[1] for r in rows][::-1]
    colors = ["tab:green" if lb == "kept" else "tab:gray" if lb.startswith("skipped") else "tab:red" for lb in labels]
    bars = ax.barh(labels, counts, color=colors)
    shares = [f"{c:,}" if lb.startswith("skipped") else f"{c:,} ({c / max(stats.docs_in, 1):.1%})" for lb, c in zip(labels, counts)]
    ax.bar_label(bars, labels=shares, padding=3, fontsize=8)
    ax.set_xlabel(f"documents (of {stats.docs_in:,} in)")
    ax.set_xlim(0, max(counts + [1]) * 1.35)
    ax.set_title(title)
    names = [k for k, v in nbytes.items() if v is not None]
    bx.bar(names, [nbytes[k] / 1e6 for k in names], color=["tab:blue", "tab:green"][: len(names)])
    bx.set_ylabel("MB")
    bx.set_title("input bytes / text kept")
    fig.tight_layout()
    return save_figure(fig, path)
