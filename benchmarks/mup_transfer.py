"""muP learning-rate transfer: an LR sweep at two widths, with and without muP.

    python benchmarks/mup_transfer.py [--widths 64,256] [--lrs 2e-4..3e-2 as --lr-min/--lr-max/--points]
                                      [--steps 80] [--recipe cluster/recipes/tune-local.yaml]

Every point is the same short training run (AdamW, warmup then cosine, same seed, same batches from
the recipe's shards: `raylm data` runs first if needed) in one process, no Ray: only the model's
parametrization differs. Prints the final val loss per (parametrization, width, lr), the optimal lr
at each width and how far it moved between the widths (muP: base width = the smallest width).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402
import torch  # noqa: E402

from raylm.cluster.recipe import load_config  # noqa: E402


def one_run(cfg, data_dir: str, width: int, base: int | None, lr: float, steps: int) -> float:
    from contextlib import nullcontext

    from raylm.core.manifest import read_manifest
    from raylm.training.config import accumulation_steps
    from raylm.training.data import ShardWindows, TrainLoader, val_windows
    from raylm.training.evaluate import lm_metrics, window_batches
    from raylm.training.model import GPT, GPTConfig
    from raylm.training.optim import build_optimizer, build_scheduler
    from raylm.training.worker import train_step

    t = cfg.train
    model_cfg = type(t.model).model_validate({**t.model.model_dump(), "d_model": width, "mup": {"base_width": base} if base else None})
    torch.manual_seed(t.seed)
    model = GPT(GPTConfig.from_config(model_cfg, read_manifest(data_dir).tokenizer.n_vocab))
    opt = build_optimizer(model, t.optim.model_copy(update={"lr": lr}), "cpu")
    sched = build_scheduler(opt, t.schedule, steps)
    loader = TrainLoader(ShardWindows(data_dir, "train", model_cfg.seq_len), t.batch.micro_batch_size, 0, 1, t.seed)
    accum = accumulation_steps(t, 1)
    for _ in range(steps):
        loss, _ = train_step(model, opt, sched, loader, accum, t.optim.grad_clip, nullcontext(), torch.device("cpu"), 1)
        if not torch.isfinite(loss):
            return float("inf")
    val = ShardWindows(data_dir, "val", model_cfg.seq_len)
    return lm_metrics(model, window_batches(val, val_windows(val, 16 * t.batch.micro_batch_size), t.batch.micro_batch_size), "cpu")["loss"]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--recipe", default=str(ROOT / "cluster" / "recipes" / "tune-local.yaml"))
    ap.add_argument("--widths", default="64,256")
    ap.add_argument("--lr-min", type=float, default=2.5e-4)
    ap.add_argument("--lr-max", type=float, default=6.4e-2)
    ap.add_argument("--points", type=int, default=9, help="learning rates, log-spaced (a factor 2 apart by default)")
    ap.add_argument("--steps", type=int, default=80)
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    cfg = load_config(args.recipe)
    from raylm.core.manifest import has_manifest
    from raylm.pipelines.run import run_data

    if not has_manifest(cfg.paths.shards):
        run_data(cfg.data, cfg.paths, summary=False)
    widths = [int(w) for w in args.widths.split(",")]
    lrs = np.geomspace(args.lr_min, args.lr_max, args.points)
    best = {}
    for p in ("sp", "mup"):
        for w in widths:
            losses = [one_run(cfg, cfg.paths.shards, w, widths[0] if p == "mup" else None, float(lr), args.steps) for lr in lrs]
            best[p, w] = float(lrs[int(np.argmin(losses))])
            print(
                f"{p:>4} width {w:>4}: " + "  ".join(f"{lr:.2e}:{v:.3f}" for lr, v in zip(lrs, losses)) + f"   -> best lr {best[p, w]:.2e}",
                flush=True,
            )
    print(f"\noptimal lr, width {widths[0]} -> {widths[-1]} ({args.steps} steps, {args.points} lrs a factor {lrs[1] / lrs[0]:.2f} apart):")
    for p in ("sp", "mup"):
        a, b = best[p, widths[0]], best[p, widths[-1]]
        print(f"  {p:>4}: {a:.2e} -> {b:.2e}  shift x{max(a, b) / min(a, b):.1f}")


if __name__ == "__main__":
    main()
