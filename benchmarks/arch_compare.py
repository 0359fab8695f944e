"""The main job's model against GPT-2 + AdamW, side by side: the same shards, tokens, batch, schedule and workers.

    python benchmarks/arch_compare.py [--recipe cluster/recipes/local.yaml] [--data DIR] [--order ABA]
                                      [--set KEY=VALUE ...]

A is GPT-2 + AdamW (BASELINE: the main job's train section before the llama arch and Muon became its defaults,
280 steps), B the recipe's own train section (with `--set` overrides: a candidate). As given, the two are the old
and the new main job, each with its own steps (the same wall-clock budget); `--steps N` trains both N steps (the
same tokens). Each is a Ray Train run as `raylm train`
does it (run_train, the recipe's workers), one after another on the same cores; `--order ABA` (the default)
brackets B between two A's, since this machine's speed drifts within the hour. Prints, per run, the val bits per
byte at the last step and the training wall time from the first step's end to the last's (Ray's and the workers'
start-up left out), then B - A (bits/byte) and B / A (time). The shards are `--data` (a complete data/ of
the recipe's data stage, e.g. runs/shakespeare-local/data), else built once under --out (data-run/data) and
reused by later invocations.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from raylm.cluster.recipe import load_config  # noqa: E402

# the main job's train section as GPT-2 + AdamW (cluster/recipes/local.yaml until the llama arch and Muon): its
# model, optimizer, schedule, steps and evaluations; the batch and workers are the recipe's (the same)
BASELINE = [
    "train.model={n_layer: 4, n_head: 4, d_model: 192, seq_len: 256, dropout: 0.0, bias: false}",
    "train.optim={name: adamw, lr: 3.0e-3, weight_decay: 0.1, betas: [0.9, 0.95], grad_clip: 1.0}",
    "train.schedule={warmup_steps: 40, decay: cosine, min_lr_ratio: 0.1}",
    "train.max_steps=280",
    "train.eval={every: 56, batches: 32}",
]


def _shards(recipe: str, data: str | None, out: Path) -> str:
    if data:
        return str(Path(data).resolve())
    from raylm.pipelines.run import run_data

    cfg = load_config(recipe, [f"storage_path={out}", "name=data-run"])
    run_data(cfg.data, cfg.paths, summary=False)  # a finished one is reused
    return str(cfg.paths.data)


def _run(recipe: str, shards: str, out: Path, name: str, sets: list[str]) -> dict:
    from raylm.training.driver import preflight, run_train

    over = [f"storage_path={out}", f"name={name}", f"train.data_path={shards}", "train.checkpoint.every=100000", *sets]
    job = preflight(load_config(recipe, over).train_job())
    result = run_train(job)
    if result.error is not None:
        raise SystemExit(f"{name}: training failed: {result.error}")
    rows = [json.loads(x) for x in (out / name / "train" / "metrics.jsonl").read_text().splitlines()]
    val = [r for r in rows if r.get("val_bpb") is not None]
    return {"bpb": val[-1]["val_bpb"], "train_s": rows[-1]["time"] - rows[0]["time"], "steps": rows[-1]["step"], "tokens": rows[-1]["tokens"]}


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--recipe", default=str(ROOT / "cluster" / "recipes" / "local.yaml"))
    p.add_argument("--data", help="a complete data/ of the recipe's data stage (default: built under --out)")
    p.add_argument("--order", default="ABA", help="the runs in order: A (GPT-2 + AdamW) and B (the recipe)")
    p.add_argument("--out", default=str(ROOT / "bench-out" / "arch"))
    p.add_argument("--set", action="append", default=[], help="KEY=VALUE for B only (a candidate)")
    p.add_argument("--steps", type=int, help="train.max_steps for both (default: the recipe's)")
    args = p.parse_args(argv)
    import ray

    out = Path(args.out).resolve() / time.strftime("%Y%m%d-%H%M%S")
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    shards = _shards(args.recipe, args.data, Path(args.out).resolve())
    runs: dict[str, list[dict]] = {"A": [], "B": []}
    for i, which in enumerate(args.order):
        sets = (BASELINE if which == "A" else args.set) + ([f"train.max_steps={args.steps}"] if args.steps else [])
        r = _run(args.recipe, shards, out, f"{which}{i}", sets)
        runs[which].append(r)
        label = "gpt2 + adamw" if which == "A" else "recipe"
        line = f"{r['steps']} steps, {r['tokens']:,} tokens, val {r['bpb']:.4f} bits/byte, training {r['train_s']:.1f} s"
        print(f"{which} ({label}): {line}", flush=True)
    a, b = runs["A"], runs["B"]
    if a and b:
        abpb, bbpb = statistics.mean(r["bpb"] for r in a), statistics.mean(r["bpb"] for r in b)
        at, bt = statistics.mean(r["train_s"] for r in a), statistics.mean(r["train_s"] for r in b)
        print(f"B - A: {bbpb - abpb:+.4f} bits/byte ({abpb:.4f} -> {bbpb:.4f}); training time B / A: {bt / at:.3f} ({at:.1f} s -> {bt:.1f} s)")


if __name__ == "__main__":
    main()
