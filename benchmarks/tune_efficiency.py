"""ASHA against FIFO-to-completion on the same trials: trial-steps spent and best val loss of each.

    python benchmarks/tune_efficiency.py [--recipe cluster/recipes/tune-local.yaml] [--set KEY=VALUE ...]

Both campaigns draw the same configurations (the recipe's seeded random search) and train on the
same shards (`raylm data` once); one runs the recipe's ASHA scheduler, the other FIFO, every trial
to `train.max_steps`. Trial-steps are the optimizer steps each trial actually took (from its
metrics.jsonl, so a trial stopped between evaluations counts the steps it ran past its last one).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from raylm.cluster.recipe import load_config  # noqa: E402


def campaign(recipe: str, overrides: list[str], scheduler: str, data_dir: str) -> tuple[list[dict], float]:
    from raylm.tuning.campaign import run_tune
    from raylm.tuning.results import collect

    base = load_config(recipe, overrides)
    cfg = load_config(
        recipe,
        [*overrides, f"name={base.name}-bench-{scheduler}-{int(time.time())}", f"tune.scheduler.type={scheduler}", f"train.data_path={data_dir}"],
    )
    t0 = time.perf_counter()
    grid = run_tune(cfg)
    return collect(cfg, grid), time.perf_counter() - t0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--recipe", default=str(ROOT / "cluster" / "recipes" / "tune-local.yaml"))
    ap.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    args = ap.parse_args()
    from raylm.core.io import absolute
    from raylm.pipelines.run import run_data

    base = load_config(args.recipe, args.overrides)
    run_data(base.data, base.paths, summary=False)
    data_dir = absolute(base.paths.shards)
    res = {s: campaign(args.recipe, args.overrides, s, data_dir) for s in ("asha", "fifo")}
    metric = f"final_{base.tune.metric}"
    print(f"\n{'scheduler':>10} {'trials':>7} {'trial-steps':>12} {'best ' + base.tune.metric:>15} {'wall s':>8}")
    summary = {}
    for s, (rows, wall) in res.items():
        steps = sum(r["steps"] for r in rows)
        best = min(r[metric] for r in rows if r[metric] is not None)
        summary[s] = (steps, best)
        print(f"{s:>10} {len(rows):>7} {steps:>12} {best:>15.4f} {wall:>8.0f}")
    (sa, ba), (sf, bf) = summary["asha"], summary["fifo"]
    print(f"\nASHA / FIFO trial-steps: {sa / sf:.2f}; best {base.tune.metric}: ASHA {ba:.4f} vs FIFO {bf:.4f} ({(ba - bf) / bf:+.2%})")

    def draws(rows):
        return sorted(tuple(round(r[k], 12) if isinstance(r[k], float) else r[k] for k in base.tune.param_space) for r in rows)

    same = draws(res["asha"][0]) == draws(res["fifo"][0])
    print(f"same configurations drawn in both: {same}")


if __name__ == "__main__":
    main()
