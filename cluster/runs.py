"""`raylm runs`: the runs under a storage path, each with its stages' states, steps, best val loss and when
it ran (from each stage's run.json, metrics.jsonl and manifest); `raylm runs NAME` shows one run."""

from __future__ import annotations

import json
import sys

import fsspec

from raylm.cluster.provenance import RUN_JSON, read_run_json
from raylm.core.manifest import MANIFEST, has_manifest
from raylm.core.paths import METRICS, RunPaths
from raylm.core.progress import cell
from raylm.training.metrics import read_metrics

STAGES = ("data", "train", "tune", "eval")
# files whose presence makes a directory a stage directory, run.json or not (runs made before it existed)
_MARKERS = (RUN_JSON, MANIFEST, METRICS, "results.csv")


def find_runs(storage: str) -> list[str]:
    """The run directories under `storage` (any depth: a name may hold '/'), a campaign's trials left out."""
    fs, _ = fsspec.core.url_to_fs(storage)
    if not fs.isdir(storage):
        return []
    roots = set()
    for path in fs.find(storage, maxdepth=None):
        parts = path.rstrip("/").split("/")
        if len(parts) >= 3 and parts[-1] in _MARKERS and parts[-2] in STAGES and "trials" not in parts:
            roots.add("/".join(parts[:-2]))
    base = fs._strip_protocol(storage).rstrip("/")
    return sorted(storage.rstrip("/") + r[len(base) :] for r in roots)


def _stage_state(root: str, stage: str, rec: dict | None) -> str | None:
    fs, _ = fsspec.core.url_to_fs(root)
    if rec is not None:
        return rec.get("status")
    if not fs.exists(f"{root}/{stage}"):
        return None
    if stage == "data":
        return "succeeded" if has_manifest(f"{root}/data") else "unfinished"
    return "unknown"  # made before run.json existed


def summary(root: str) -> dict:
    """One run: each stage's run.json (or what its files show), the training steps and best validation loss."""
    stages = {s: read_run_json(f"{root}/{s}") for s in STAGES}
    out = {"root": root, "states": {s: _stage_state(root, s, rec) for s, rec in stages.items()}, "records": stages}
    rows = read_metrics(RunPaths.at(root).metrics)
    ev = [r for r in rows if r.get("val_loss") is not None]
    out["step"] = rows[-1]["step"] if rows else None
    out["max_steps"] = ((stages["train"] or {}).get("recipe") or {}).get("train", {}).get("max_steps")
    best = min(ev, key=lambda r: r["val_loss"]) if ev else None
    out["best_val_loss"] = best["val_loss"] if best else None
    out["best_val_bpb"] = best.get("val_bpb") if best else None
    out["when"] = max((r["started"] for r in stages.values() if r and r.get("started")), default=None) or _modified(root)
    return out


def _modified(root: str) -> str | None:
    """When a run without run.json last changed (its newest stage directory), as run.json's ISO time."""
    from datetime import datetime, timezone

    fs, _ = fsspec.core.url_to_fs(root)
    times = []
    for s in STAGES:
        try:
            info = fs.info(f"{root}/{s}")
        except FileNotFoundError:
            continue
        t = info.get("mtime") or info.get("LastModified")
        if isinstance(t, (int, float)):
            t = datetime.fromtimestamp(t, timezone.utc)
        if t is not None:
            times.append(t.isoformat(timespec="seconds"))
    return max(times, default=None)


def print_runs(storage: str) -> int:
    from rich.console import Console
    from rich.table import Table

    runs = [summary(r) for r in find_runs(storage)]
    if not runs:
        print(f"raylm runs: no runs under {storage}")
        return 0
    t = Table(title=f"raylm runs: {storage} ({len(runs)})", title_justify="left")
    for c in ("run", *STAGES, "steps", "best val loss", "bits/byte", "last started (UTC)"):
        t.add_column(c, justify="left" if c in ("run", *STAGES) else "right")
    for s in sorted(runs, key=lambda s: s["when"] or "", reverse=True):
        steps = f"{cell(s['step'], ',')}/{cell(s['max_steps'], ',')}" if s["step"] is not None else "-"
        when = s["when"][:19].replace("T", " ") if s["when"] else "-"
        name = s["root"][len(storage.rstrip("/")) + 1 :]
        t.add_row(name, *(s["states"][st] or "-" for st in STAGES), steps, cell(s["best_val_loss"], ".4f"), cell(s["best_val_bpb"], ".4f"), when)
    Console(width=None if sys.stdout.isatty() else 200).print(t)
    return 0


def print_run(root: str) -> int:
    """One run: per stage, how it ran (command, code, cluster, times, status) and what it made."""
    s = summary(root)
    print(f"raylm runs: {root}")
    for stage in STAGES:
        rec, state = s["records"][stage], s["states"][stage]
        if state is None:
            continue
        if rec is None:
            print(f"  {stage}: {state} (no run.json: made before raylm recorded runs)")
            continue
        git = rec.get("git") or {}
        code = f"{git['commit'][:12]}{' (dirty)' if git.get('dirty') else ''}" if git else "no git checkout"
        cl = rec.get("cluster") or {}
        gpus = " ".join(cl.get("gpu_types") or [])
        where = f"{cl.get('nodes')} node(s), {cl.get('cpus')} CPUs, {cl.get('gpus')} GPUs {gpus}".rstrip() if cl else "-"
        print(f"  {stage}: {state} (exit {rec.get('exit_code')}), {rec.get('started')} -> {rec.get('ended') or '...'}, {rec.get('seconds', '-')} s")
        print(f"    command: {' '.join(rec.get('command') or [])}")
        print(f"    code {code}; ray {rec['versions'].get('ray')}, torch {rec['versions'].get('torch')}; {where}")
        if rec.get("error"):
            print(f"    error: {rec['error']}")
        if rec.get("result") is not None:
            print(f"    result: {json.dumps(rec['result'], default=str)[:600]}")
    if s["step"] is not None:
        best = f"{cell(s['best_val_loss'], '.4f')} ({cell(s['best_val_bpb'], '.4f')} bits/byte)"
        print(f"  steps {s['step']:,}/{cell(s['max_steps'], ',')}; best val loss {best}")
    return 0


def is_run(path: str) -> bool:
    fs, _ = fsspec.core.url_to_fs(path)
    return any(fs.isdir(f"{path.rstrip('/')}/{s}") for s in STAGES)


def show(target: str | None, storage: str) -> int:
    """`raylm runs [TARGET]`: TARGET a storage path (list its runs), a run directory, or a run's name under
    `storage` (show it); none: list `storage`."""
    if target is None:
        return print_runs(storage)
    for path in (target, f"{storage.rstrip('/')}/{target}"):
        if is_run(path):
            return print_run(path.rstrip("/"))
    if fsspec.core.url_to_fs(target)[0].isdir(target):
        return print_runs(target)
    raise FileNotFoundError(f"{target} is neither a run under {storage} (--storage) nor a directory of runs")
