"""Training throughput of `raylm train` (Ray Train) against a plain PyTorch loop, side by side.

    python benchmarks/train_throughput.py [--recipe cluster/recipes/local.yaml] [--steps 30]
                                          [--layouts auto,1x2,2x1] [--repeat 2] [--set KEY=VALUE ...]

Both run the same model, batch, optimizer, loader and step function (training.worker.train_step)
over the recipe's shards, on the same cores; the plain loop is torch alone (one process, or one per
rank with torch.distributed + DDP on gloo/nccl), no Ray. A layout WxC is W workers (processes) of
C CPU threads each. Throughput is tokens over wall time between the end of step `--skip` and the
end of the last step (per-step timestamps), so start-up, compile and the final checkpoint are left
out of both. Prints tokens/s, MFU where there is a GPU, and the ratio Ray Train / plain. The Ray side runs as
`raylm train` does, its progress lines printed by the driver (--no-progress: without them).
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from raylm.cluster.recipe import RunConfig, load_config  # noqa: E402
from raylm.core.io import absolute  # noqa: E402


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _plain_worker(rank: int, world: int, recipe: dict, steps: int, port: int, out: str) -> None:
    """One rank of the plain loop: the Ray Train worker's own Trainer (training.worker), driven without Ray."""
    import torch
    import torch.distributed as dist

    from raylm.training.config import TrainJob
    from raylm.training.worker import Trainer

    job = TrainJob.from_recipe(recipe)
    device = torch.device(f"cuda:{rank}" if job.train.scaling.use_gpu else "cpu")
    if device.type == "cuda":
        torch.cuda.set_device(device)
    if world > 1:
        os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo", rank=rank, world_size=world)
    trainer = Trainer(job, rank, world, device)
    rows = [trainer.train_step() for _ in range(steps)]
    if rank == 0:
        Path(out).write_text("\n".join(json.dumps(r) for r in rows))
    if world > 1:
        dist.destroy_process_group()


def rate(rows: list[dict], skip: int) -> float:
    a, b = rows[skip - 1], rows[-1]
    return (b["tokens"] - a["tokens"]) / (b["time"] - a["time"])


def run_plain(cfg: RunConfig, steps: int, out: Path) -> list[dict]:
    import torch.multiprocessing as mp

    world = cfg.train.scaling.num_workers
    recipe = cfg.train_job().absolute().recipe
    mp.spawn(_plain_worker, args=(world, recipe, steps, _free_port(), str(out)), nprocs=world, join=True)
    return [json.loads(x) for x in out.read_text().splitlines()]


def run_ray(cfg: RunConfig, progress: bool = True) -> list[dict]:
    """`raylm train`'s fit, with its driver-side progress lines on (as `raylm train` runs it) unless told not."""
    from contextlib import nullcontext

    from raylm.training.config import log_interval
    from raylm.training.driver import build_trainer
    from raylm.training.metrics import read_metrics
    from raylm.training.progress import TrainProgress

    job = cfg.train_job()
    watch = TrainProgress(job.paths.metrics, job.train.max_steps, log_interval(job.train)) if progress else nullcontext()
    with watch:
        result = build_trainer(job).fit()
    if result.error is not None:
        raise RuntimeError(result.error)
    return read_metrics(cfg.paths.metrics)


def _fresh_run(cfg: RunConfig, base: RunConfig, tag: str) -> RunConfig:
    """A new run name (so nothing resumes) that trains on the base run's shards."""
    return cfg.model_copy(
        update={"name": f"{cfg.name}-{tag}-{int(time.time())}", "train": cfg.train.model_copy(update={"data_path": absolute(base.paths.shards)})}
    )


def _print_results(results: list[tuple], fpt: float, repeat: int) -> None:
    import torch

    from raylm.training.worker import peak_flops

    peak = peak_flops(torch.device("cuda")) if torch.cuda.is_available() else None
    print(f"\nmedians of {repeat} alternated runs each")
    print(f"{'layout':>8} {'plain tok/s':>12} {'ray tok/s':>12} {'ray/plain':>10} {'MFU (ray)':>10}  same losses")
    for layout, rp, rr, same in results:
        w = int(layout.split("=")[-1].split("x")[0])
        mfu = f"{rr * fpt / (peak * w):.1%}" if peak else "n/a"
        print(f"{layout:>8} {rp:>12,.0f} {rr:>12,.0f} {rr / rp:>10.3f} {mfu:>10}  {same}")
    if len(results) > 1:
        best_plain = max(r[1] for r in results)
        for layout, _, rr, _ in results:
            print(f"ray {layout} / best plain layout: {rr / best_plain:.3f}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--recipe", default=str(ROOT / "cluster" / "recipes" / "local.yaml"))
    ap.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    ap.add_argument("--steps", type=int, default=30)
    ap.add_argument("--repeat", type=int, default=2, help="alternated plain/Ray runs per layout (medians reported)")
    ap.add_argument("--skip", type=int, default=5, help="steps left out at the start (warm-up, compile)")
    ap.add_argument("--layouts", default="auto,1x2,2x1", help="comma-separated WORKERSxCPUS (GPU runs: WORKERSx0), or auto (train.scaling's default)")
    ap.add_argument("--out", default=str(ROOT / "bench-out" / "train"))
    ap.add_argument("--no-progress", action="store_true", help="leave out the driver's progress lines (on by default, as in raylm train)")
    args = ap.parse_args()
    out = Path(args.out).resolve()
    out.mkdir(parents=True, exist_ok=True)

    import ray

    from raylm.cluster.runtime import init_ray
    from raylm.core.manifest import read_manifest
    from raylm.pipelines.run import run_data
    from raylm.training.model import GPT, GPTConfig
    from raylm.training.scaling import resolve_job

    base = load_config(args.recipe, [*args.overrides, f"storage_path={out}"])
    init_ray(base.ray)
    run_data(base.data, base.paths, summary=False)  # once; kept between runs of the benchmark
    n_vocab = read_manifest(base.paths.data).tokenizer.n_vocab
    fpt = GPT(GPTConfig.from_config(base.train.model, n_vocab)).flops_per_token()
    print(
        f"\nmodel {base.train.model.model_dump()}; {fpt / 6:,.0f} FLOPs/6 per token; global batch "
        f"{base.train.batch.global_batch_tokens:,} tokens; {args.steps} steps, timed from step {args.skip}; "
        f"{os.cpu_count()} CPUs on this machine"
    )
    results = []
    for layout in args.layouts.split(","):
        over = [f"train.max_steps={args.steps}", "train.eval.every=1000000000", "train.checkpoint.every=1000000000"]
        if layout == "auto":  # the schema default, whatever the recipe sets
            over.append("train.scaling={num_workers: auto, use_gpu: auto, resources_per_worker: auto}")
        else:
            w, c = (int(x) for x in layout.lower().split("x"))
            res = {"CPU": c} if c else {"GPU": 1}
            over += [f"train.scaling.num_workers={w}", f"train.scaling.resources_per_worker={json.dumps(res)}"]
            over += [f"train.scaling.use_gpu={str(c == 0).lower()}"]
        cfg = load_config(args.recipe, [*args.overrides, f"storage_path={out}", *over])
        cfg = cfg.model_copy(update={"train": resolve_job(cfg.train_job()).train})  # auto: as raylm train resolves it
        if layout == "auto":
            s = cfg.train.scaling
            layout = f"auto={s.num_workers}x{int(s.resources_per_worker.get('CPU', 0)) if not s.use_gpu else 0}"
        plain_rates, ray_rates, same = [], [], True
        for rep in range(args.repeat):  # alternated, so a drift of the machine's speed hits both alike
            plain = run_plain(cfg, args.steps, out / f"plain-{layout}.jsonl")
            rows = run_ray(_fresh_run(cfg, base, f"ray-{layout}-{rep}"), progress=not args.no_progress)
            plain_rates.append(rate(plain, args.skip))
            ray_rates.append(rate(rows, args.skip))
            same = same and [a["loss"] for a in plain] == [b["loss"] for b in rows]
            print(f"[{layout} #{rep + 1}] plain {plain_rates[-1]:,.0f} tok/s, ray {ray_rates[-1]:,.0f} tok/s", flush=True)
        results.append((layout, statistics.median(plain_rates), statistics.median(ray_rates), same))
    _print_results(results, fpt, args.repeat)
    ray.shutdown()


if __name__ == "__main__":
    main()
