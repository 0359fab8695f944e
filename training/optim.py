"""Optimizer and learning-rate schedule from the recipe (train.optim, train.schedule)."""

from __future__ import annotations

import math

import torch

from raylm.training.config import OptimConfig, ScheduleConfig


def param_groups(model: torch.nn.Module, weight_decay: float, lr: float) -> list[dict]:
    """Matrices (linear and embedding weights) decay; biases and norm gains do not (as nanoGPT).
    Under muP the hidden matrices (inside blocks) get lr x model.hidden_lr_scale(). Tied parameters
    appear once. The first group is the embedding's: its lr is the one reported."""
    gpt = model.module if hasattr(model, "module") else model
    scale = gpt.hidden_lr_scale() if hasattr(gpt, "hidden_lr_scale") else 1.0
    seen, decay, hidden, no_decay = set(), [], [], []
    for name, p in model.named_parameters():
        if not p.requires_grad or id(p) in seen:
            continue
        seen.add(id(p))
        if p.dim() < 2:
            no_decay.append(p)
        elif "blocks." in name and scale != 1.0:
            hidden.append(p)
        else:
            decay.append(p)
    groups = [{"params": decay, "weight_decay": weight_decay, "lr": lr}, {"params": no_decay, "weight_decay": 0.0, "lr": lr}]
    if hidden:
        groups.insert(1, {"params": hidden, "weight_decay": weight_decay, "lr": lr * scale})
    return groups


def build_optimizer(model: torch.nn.Module, cfg: OptimConfig, device_type: str) -> torch.optim.Optimizer:
    groups = param_groups(model, cfg.weight_decay, cfg.lr)
    if cfg.name == "sgd":
        return torch.optim.SGD(groups, lr=cfg.lr, momentum=cfg.betas[0])
    return torch.optim.AdamW(groups, lr=cfg.lr, betas=tuple(cfg.betas), fused=device_type == "cuda")


def lr_factor(step: int, cfg: ScheduleConfig, max_steps: int) -> float:
    """Multiplier of the peak lr at optimizer step `step` (0-based): linear warmup, then constant,
    cosine to min_lr_ratio at max_steps, or WSD (warmup-stable-decay: linear to min_lr_ratio over
    the last decay_fraction of the steps)."""
    if step < cfg.warmup_steps:
        return (step + 1) / cfg.warmup_steps
    if cfg.decay == "constant":
        return 1.0
    lo = cfg.min_lr_ratio
    if cfg.decay == "cosine":
        span = max(1, max_steps - cfg.warmup_steps)
        t = min(1.0, (step - cfg.warmup_steps) / span)
        return lo + (1 - lo) * 0.5 * (1 + math.cos(math.pi * t))
    decay_start = max(cfg.warmup_steps, int(max_steps * (1 - cfg.decay_fraction)))
    if step < decay_start:
        return 1.0
    t = min(1.0, (step - decay_start) / max(1, max_steps - decay_start))
    return 1 - (1 - lo) * t


def build_scheduler(opt: torch.optim.Optimizer, cfg: ScheduleConfig, max_steps: int) -> torch.optim.lr_scheduler.LambdaLR:
    return torch.optim.lr_scheduler.LambdaLR(opt, lambda s: lr_factor(s, cfg, max_steps))


def hyperparams(opt: torch.optim.Optimizer) -> list[dict]:
    """Each param group's hyperparameters (all but its params), as the recipe set them."""
    return [{k: v for k, v in g.items() if k != "params"} for g in opt.param_groups]


def reapply_hyperparams(opt: torch.optim.Optimizer, sched: torch.optim.lr_scheduler.LambdaLR, hyper: list[dict]) -> None:
    """After loading a checkpoint's optimizer and schedule state: the recipe's hyperparameters win over
    the checkpoint's, at the loaded point of the schedule. On a plain resume they are the same values
    (the lr comes out bit for bit); PBT continues a donor trial's state with perturbed ones."""
    sched.base_lrs = [h["initial_lr"] for h in hyper]
    for g, h, factor, base in zip(opt.param_groups, hyper, sched.lr_lambdas, sched.base_lrs):
        g.update(h)
        g["lr"] = base * factor(sched.last_epoch)  # LambdaLR's own formula
