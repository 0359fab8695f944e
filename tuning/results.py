"""What a campaign leaves in tune/: results.csv (one row per trial), best.yaml (a complete recipe
that `raylm train` runs as is), curves.png (the metric against step for every trial), params.png
(the final metric against each searched parameter), and a summary table on the terminal."""

from __future__ import annotations

import csv
import io
import math
import os
import re
import sys
from dataclasses import dataclass, field

import fsspec
import yaml

from raylm.core.io import absolute, write_atomic
from raylm.core.plots import save_figure
from raylm.core.progress import cell
from raylm.training.metrics import read_metrics
from raylm.tuning.config import Recipe


def _trial_metrics(cfg: Recipe, trial_id: str) -> list[dict]:
    """A trial's metrics.jsonl rows; for a PBT trial, its own rows up to each point where it continued
    from a checkpoint (from-<step>-*/), then that run's rows."""
    base = cfg.paths.trial(trial_id).root
    hist = read_metrics(f"{base}/train/metrics.jsonl")
    fs, _ = fsspec.core.url_to_fs(base)
    for seg in sorted(fs.glob(f"{base}/from-*/train/metrics.jsonl")):
        start = int(re.search(r"/from-(\d+)-", seg).group(1))
        hist = [r for r in hist if r["step"] <= start] + read_metrics(fs.unstrip_protocol(seg) if "://" in base else seg)
    return hist


@dataclass
class Outcome:
    """What this driver saw of its campaign that Tune's ResultGrid does not say: whether it was interrupted, and
    which trials had ended before (a module global: Tune restores its own copies of the callbacks that add to it)."""

    interrupted: bool = False
    ended: set[str] = field(default_factory=set)


OUTCOME = Outcome()


def _status(res, trial_id: str, steps: int, max_steps: int) -> str:
    if res.error is not None:
        return "error"
    if steps >= max_steps:
        return "done"
    if not OUTCOME.interrupted or trial_id in OUTCOME.ended:
        return "stopped"  # by the scheduler (or the time budget)
    return "interrupted" if steps else "not started"


def trials_asked(cfg: Recipe) -> int:
    """The trials the campaign is to run: num_samples, times each combination of the grid entries."""
    sizes = [len(v["grid"]) for v in cfg.tune.param_space.values() if isinstance(v, dict) and "grid" in v]
    return cfg.tune.num_samples * math.prod(sizes)


def interrupted_summary(cfg: Recipe, rows: list[dict]) -> str:
    """What an interrupted campaign leaves: its trials by status, and those not yet drawn by the search."""
    counts = {s: sum(r["status"] == s for r in rows) for s in dict.fromkeys(r["status"] for r in rows)}
    parts = [f"{n} {s}" for s, n in counts.items()]
    missing = trials_asked(cfg) - len(rows)
    return f"interrupted: trials {', '.join(parts)}" + (f", {missing} not yet drawn" if missing > 0 else "")


def collect(cfg: Recipe, grid) -> list[dict]:
    """One dict per trial: id, the searched values, final and best metric, steps, status (done, stopped, error;
    not started or interrupted when the campaign was)."""
    metric, sign = cfg.tune.metric, (1 if cfg.tune.mode == "min" else -1)
    rows = []
    for res in grid:
        trial_id = _trial_id(res)
        hist = _trial_metrics(cfg, trial_id)
        evals = _values(hist, metric)
        steps = hist[-1]["step"] if hist else 0
        status = _status(res, trial_id, steps, cfg.train.max_steps)
        rows.append(
            {
                "trial_id": trial_id,
                **{k: res.config.get(k) for k in cfg.tune.param_space},
                f"final_{metric}": evals[-1] if evals else None,
                f"best_{metric}": min(evals, key=lambda v: sign * v) if evals else None,
                **{f"final_{m}": _last(hist, m) for m in also_reported(cfg)},
                "steps": steps,
                "status": status,
                "history": hist,
            }
        )
    return rows


def also_reported(cfg: Recipe) -> list[str]:
    """The evaluation metrics every row and the table also carry, besides the objective: val_loss and val_bpb
    (on train.eval.data_path when set: the same held-out data for every trial), and tasks/core with tasks."""
    found = ["val_loss", "val_bpb", *(["tasks/core"] if cfg.train.eval.tasks else [])]
    return [m for m in found if m != cfg.tune.metric]


def _values(hist: list[dict], metric: str) -> list[float]:
    """The metric's values in the trial's rows that carry it, in order."""
    return [r[metric] for r in hist if r.get(metric) is not None]


def _last(hist: list[dict], metric: str) -> float | None:
    values = _values(hist, metric)
    return values[-1] if values else None


def _trial_id(res) -> str:
    # from the trial's directory name: a PBT trial's last result may be a copy of its donor's, trial_id included
    m = re.search(r"_([0-9a-f]{5}_\d{5})", os.path.basename(res.path.rstrip("/")))
    if m:
        return m.group(1)
    return (res.metrics or {}).get("trial_id") or os.path.basename(res.path.rstrip("/"))


def best_row(cfg: Recipe, rows: list[dict]) -> dict | None:
    key, sign = f"final_{cfg.tune.metric}", (1 if cfg.tune.mode == "min" else -1)
    ok = [r for r in rows if r[key] is not None and math.isfinite(r[key]) and r["status"] != "error"]
    return min(ok, key=lambda r: sign * r[key]) if ok else None


def best_recipe(cfg: Recipe, row: dict) -> dict:
    """The campaign's recipe with the best trial's values: a new run name, the campaign's shards (a data
    ablation's: the best trial's data section, evaluated on the campaign's val split as the trials were)."""
    from raylm.tuning.datasections import section_dirs, value_key
    from raylm.tuning.space import apply_trial

    values = {k: row[k] for k in cfg.tune.param_space}
    r = apply_trial(cfg.model_dump(mode="json"), values)
    r["name"] = f"{cfg.name}-best"
    r["train"]["data_path"] = absolute(cfg.paths.shards)
    dirs = section_dirs(cfg)
    if dirs:
        r["train"]["data_path"] = dirs[value_key(values)]
        r["train"]["eval"]["data_path"] = r["train"]["eval"].get("data_path") or absolute(cfg.paths.shards)
    type(cfg).model_validate(r)
    return r


def write_results(cfg: Recipe, rows: list[dict]) -> dict[str, str]:
    out = cfg.paths.tune
    fs, _ = fsspec.core.url_to_fs(out)
    fs.makedirs(out, exist_ok=True)
    cols = [c for c in (rows[0] if rows else {}) if c != "history"]
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=cols, extrasaction="ignore")
    w.writeheader()
    w.writerows(rows)
    paths = {"results": f"{out}/results.csv"}
    write_atomic(paths["results"], buf.getvalue())
    best = best_row(cfg, rows)
    if best is not None:
        paths["best"] = f"{out}/best.yaml"
        final = best[f"final_{cfg.tune.metric}"]
        head = f"# best of {len(rows)} trials of {cfg.name}: trial {best['trial_id']}, final {cfg.tune.metric} {final:.4f}\n"
        write_atomic(paths["best"], head + yaml.safe_dump(best_recipe(cfg, best), sort_keys=False))
    paths.update(plot(cfg, rows, out))
    return paths


def plot(cfg: Recipe, rows: list[dict], out: str) -> dict[str, str]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    metric = cfg.tune.metric
    paths = {}
    fig, ax = plt.subplots(figsize=(7, 4), dpi=110)
    for r in rows:
        ev = [h for h in r["history"] if h.get(metric) is not None]
        if ev:
            ax.plot([h["step"] for h in ev], [h[metric] for h in ev], "o-", ms=3, lw=1, label=f"{r['trial_id']} ({r['status']})", alpha=0.85)
    ax.set_xlabel("optimizer step")
    ax.set_ylabel(metric)
    ax.set_title(f"{cfg.name}: {metric} of every trial")
    ax.grid(alpha=0.3)
    if len(rows) <= 12:
        ax.legend(fontsize=7)
    fig.tight_layout()
    paths["curves"] = save_figure(fig, f"{out}/curves.png")

    keys = list(cfg.tune.param_space)
    fig, axes = plt.subplots(1, len(keys), figsize=(4 * len(keys), 3.5), dpi=110, squeeze=False)
    for ax, k in zip(axes[0], keys):
        pts = [(r[k], r[f"final_{metric}"]) for r in rows if r[f"final_{metric}"] is not None]
        kind = next(iter(cfg.tune.param_space[k]))
        if pts and all(isinstance(x, (int, float)) and not isinstance(x, bool) for x, _ in pts):
            ax.scatter([x for x, _ in pts], [y for _, y in pts])
            if kind == "loguniform":
                ax.set_xscale("log")
        elif pts:
            labels = sorted({str(x) for x, _ in pts})
            ax.scatter([labels.index(str(x)) for x, _ in pts], [y for _, y in pts])
            ax.set_xticks(range(len(labels)), labels)
        ax.set_xlabel(k)
        ax.set_ylabel(f"final {metric}")
        ax.grid(alpha=0.3)
    fig.tight_layout()
    paths["params"] = save_figure(fig, f"{out}/params.png")
    return paths


def print_summary(cfg: Recipe, rows: list[dict], paths: dict[str, str]) -> None:
    from rich.console import Console
    from rich.table import Table

    metric = cfg.tune.metric
    best = best_row(cfg, rows)
    table = Table(title=f"raylm tune: {cfg.name} ({len(rows)} trials, {cfg.tune.scheduler.type}, {cfg.tune.search.type})")
    also = also_reported(cfg)
    for c in ["trial", *cfg.tune.param_space, f"final {metric}", f"best {metric}", *also, "steps", "status"]:
        table.add_column(c, justify="right" if c != "trial" else "left")
    key = f"final_{metric}"
    sign = 1 if cfg.tune.mode == "min" else -1
    for r in sorted(rows, key=lambda r: (r[key] is None, sign * (r[key] or 0.0))):  # trials without a metric last
        mark = " *" if best is not None and r["trial_id"] == best["trial_id"] else ""
        values = [cell(r[k]) for k in cfg.tune.param_space] + [cell(r[key]), cell(r[f"best_{metric}"])] + [cell(r.get(f"final_{m}")) for m in also]
        table.add_row(r["trial_id"] + mark, *values, str(r["steps"]), r["status"])
    Console(width=None if sys.stdout.isatty() else 200).print(table)  # not cut to 80 columns in logs
    for name, p in paths.items():
        print(f"{name}: {p}")
    if best is not None and not OUTCOME.interrupted:  # an interrupted campaign has no best configuration yet
        print(f"run the best configuration: raylm train {paths['best']}")
