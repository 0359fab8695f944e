"""The training loop run by every Ray Train worker: DDP model, shard loader, AdamW with warmup and
decay, gradient accumulation up to `batch.global_batch_tokens`, clipping, periodic evaluation,
per-step metrics through `ray.train.report`, checkpoints that carry everything a resume needs.
"""
from __future__ import annotations

import json
import math
import os
import random
import tempfile
import time
from contextlib import nullcontext

import fsspec
import numpy as np
import torch

from cluster.config import RunConfig
from pipelines.shards import read_manifest
from training.data import ShardWindows, TrainLoader, val_windows
from training.model import GPT, GPTConfig
from training.optim import build_optimizer, build_scheduler

# bf16 dense peak of the accelerators MFU is reported against (per GPU); null where unknown or CPU
PEAK_FLOPS = {"H100": 989e12, "H200": 989e12, "A100": 312e12}


def accumulation_steps(cfg: RunConfig, world: int) -> int:
    """Micro-steps per optimizer step so that one step sees `global_batch_tokens` (at least one)."""
    b = cfg.train.batch
    per_micro = b.micro_batch_size * cfg.train.model.seq_len * world
    return max(1, round(b.global_batch_tokens / per_micro))


def _peak_flops(device: torch.device) -> float | None:
    if device.type != "cuda":
        return None
    name = torch.cuda.get_device_name(device)
    return next((v for k, v in PEAK_FLOPS.items() if k in name), None)


def _rng_state() -> dict:
    """Every RNG a worker uses, in types `torch.load(weights_only=True)` accepts."""
    name, keys, pos, has_gauss, gauss = np.random.get_state()
    return {"python": list(random.getstate()[1]), "python_version": random.getstate()[0],
            "numpy": [name, torch.from_numpy(keys.astype(np.int64)), pos, has_gauss, gauss],
            "torch": torch.get_rng_state(), "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None}


def _set_rng_state(s: dict) -> None:
    random.setstate((s["python_version"], tuple(s["python"]), None))
    name, keys, pos, has_gauss, gauss = s["numpy"]
    np.random.set_state((name, keys.numpy().astype(np.uint32), pos, has_gauss, gauss))
    torch.set_rng_state(s["torch"])
    if s.get("cuda") is not None and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(s["cuda"])


@torch.no_grad()
def evaluate(model: torch.nn.Module, windows: ShardWindows, ids: np.ndarray, micro_batch: int, device, autocast) -> float:
    model.eval()
    total, n = 0.0, 0
    for i in range(0, len(ids), micro_batch):
        arr = torch.from_numpy(windows.window(ids[i:i + micro_batch])).to(device)
        with autocast:
            _, loss = model(arr[:, :-1], arr[:, 1:])
        total += loss.item() * len(arr)
        n += len(arr)
    model.train()
    return total / max(n, 1)


def train_loop_per_worker(config: dict) -> None:
    import ray.train
    import ray.train.torch as rtt

    cfg = RunConfig.model_validate(config["recipe"])
    t = cfg.train
    ctx = ray.train.get_context()
    rank, world = ctx.get_world_rank(), ctx.get_world_size()
    device = rtt.get_device()
    data_root = f"{cfg.run_dir}/data"
    man = read_manifest(data_root)

    random.seed(t.seed + rank)
    np.random.seed(t.seed + rank)
    torch.use_deterministic_algorithms(device.type == "cpu")  # bitwise-reproducible steps on CPU
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True

    torch.manual_seed(t.seed)  # the same initial weights on every rank
    model = GPT(GPTConfig.from_recipe(t.model, man["tokenizer"]["n_vocab"])).to(device)
    torch.manual_seed(t.seed + rank)  # then per-rank streams (dropout)
    flops_per_token = model.flops_per_token()
    opt = build_optimizer(model, t.optim, device.type)
    sched = build_scheduler(opt, t.schedule, t.max_steps)
    windows = ShardWindows(data_root, "train", t.model.seq_len)
    loader = TrainLoader(windows, t.batch.micro_batch_size, rank, world, t.seed)
    val = ShardWindows(data_root, "val", t.model.seq_len) if man["splits"]["val"]["tokens"] > t.model.seq_len else None
    val_ids = val_windows(val, t.eval.batches * t.batch.micro_batch_size) if val is not None else None

    step = 0
    ckpt = ray.train.get_checkpoint()
    if ckpt is not None:  # resume: weights, optimizer, schedule, loader position, every rank's RNG
        with ckpt.as_directory() as d:
            state = torch.load(os.path.join(d, "state.pt"), map_location=device, weights_only=True)
            model.load_state_dict(state["model"])
            opt.load_state_dict(state["optimizer"])
            sched.load_state_dict(state["scheduler"])
            loader.load_state_dict(state["loader"])
            step = state["step"]
            rng_path = os.path.join(d, f"rng-{rank}.pt")
            if os.path.exists(rng_path):
                _set_rng_state(torch.load(rng_path, weights_only=True))

    model = rtt.prepare_model(model)  # DDP across workers (no-op wrapper for one worker)
    raw = model.module if hasattr(model, "module") else model
    use_bf16 = t.precision == "bf16" or (t.precision == "auto" and device.type == "cuda")
    autocast = torch.autocast(device.type, dtype=torch.bfloat16) if use_bf16 else nullcontext()
    accum = accumulation_steps(cfg, world)
    tokens_per_step = accum * t.batch.micro_batch_size * t.model.seq_len * world
    peak = _peak_flops(device)
    metrics_path = f"{cfg.run_dir}/train/metrics.jsonl"
    if rank == 0:
        fs, _ = fsspec.core.url_to_fs(metrics_path)
        fs.makedirs(f"{cfg.run_dir}/train", exist_ok=True)
        if fs.exists(metrics_path):  # after a resume, the steps past the checkpoint are redone: drop their rows
            keep = [ln for ln in fs.cat(metrics_path).decode().splitlines() if ln and json.loads(ln)["step"] <= step]
            with fsspec.open(metrics_path, "w") as f:
                f.write("".join(ln + "\n" for ln in keep))

    while step < t.max_steps:
        t0 = time.perf_counter()
        loss_sum = 0.0
        for micro in range(accum):
            x, y = (a.to(device, non_blocking=True) for a in loader.next())
            sync = micro == accum - 1 or not hasattr(model, "no_sync")
            with (nullcontext() if sync else model.no_sync()), autocast:
                _, loss = model(x, y)
                (loss / accum).backward()
            loss_sum += loss.item()
        grad_norm = torch.nn.utils.clip_grad_norm_(model.parameters(), t.optim.grad_clip).item()
        lr = opt.param_groups[0]["lr"]
        opt.step()
        sched.step()
        opt.zero_grad(set_to_none=True)
        step += 1
        dt = time.perf_counter() - t0
        loss_t = torch.tensor([loss_sum / accum], device=device)
        if world > 1:
            torch.distributed.all_reduce(loss_t, op=torch.distributed.ReduceOp.AVG)
        tps = tokens_per_step / dt
        row = {"step": step, "tokens": step * tokens_per_step, "loss": loss_t.item(), "lr": lr, "grad_norm": grad_norm,
               "tokens_per_s": tps, "mfu": (tps * flops_per_token / (peak * world)) if peak else None}
        if val is not None and (step % t.eval.every == 0 or step == t.max_steps):
            vl = evaluate(model, val, val_ids, t.batch.micro_batch_size, device, autocast)
            row.update(val_loss=vl, val_ppl=math.exp(min(vl, 50)))
        if rank == 0:
            with fsspec.open(metrics_path, "a") as f:
                f.write(json.dumps(row) + "\n")
        if step % t.checkpoint.every == 0 or step == t.max_steps:
            with tempfile.TemporaryDirectory() as d:
                torch.save(_rng_state(), os.path.join(d, f"rng-{rank}.pt"))
                if rank == 0:
                    torch.save({"model": raw.state_dict(), "optimizer": opt.state_dict(), "scheduler": sched.state_dict(),
                                "loader": loader.state_dict(), "step": step, "config": cfg.model_dump(mode="json"),
                                "tokenizer": man["tokenizer"]}, os.path.join(d, "state.pt"))
                ray.train.report(row, checkpoint=ray.train.Checkpoint.from_directory(d))
        else:
            ray.train.report(row)
