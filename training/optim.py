"""Optimizer and learning-rate schedule from the recipe (train.optim, train.schedule)."""

from __future__ import annotations

import collections
import math

import torch

from raylm.training.config import OptimConfig, ScheduleConfig


def _named_params(model: torch.nn.Module) -> list[tuple[str, torch.nn.Parameter]]:
    """Trainable parameters by name, a tied one once (under its first name)."""
    seen, out = set(), []
    for name, p in model.named_parameters():
        if p.requires_grad and id(p) not in seen:
            seen.add(id(p))
            out.append((name, p))
    return out


def is_hidden_matrix(name: str, p: torch.nn.Parameter) -> bool:
    """A 2-D weight inside the blocks (attention and MLP projections): what Muon and muP's hidden lr treat apart
    from the embeddings and the head."""
    return p.dim() == 2 and "blocks." in name


def param_groups(model: torch.nn.Module, cfg: OptimConfig) -> list[dict]:
    """Matrices (linear and embedding weights) decay; biases and norm gains do not (as nanoGPT). Under muP the
    hidden matrices get lr x model.hidden_lr_scale(); with Muon they form the last group, `"muon": True`, at
    muon.lr (its orthogonalized update is width-independent: no muP scale). Tied parameters appear once. The
    first group is the embedding's: its lr is the one reported. Each group's `names` says what it holds."""
    gpt = model.module if hasattr(model, "module") else model
    scale = gpt.hidden_lr_scale() if hasattr(gpt, "hidden_lr_scale") else 1.0
    muon = cfg.name == "muon"
    decay, hidden, no_decay = ([], []), ([], []), ([], [])
    for name, p in _named_params(model):
        bucket = no_decay if p.dim() < 2 else hidden if is_hidden_matrix(name, p) and (muon or scale != 1.0) else decay
        bucket[0].append(p)
        bucket[1].append(name)
    groups = [
        {"params": decay[0], "names": decay[1], "weight_decay": cfg.weight_decay, "lr": cfg.lr},
        {"params": no_decay[0], "names": no_decay[1], "weight_decay": 0.0, "lr": cfg.lr},
    ]
    if muon:
        groups.append({"params": hidden[0], "names": hidden[1], "weight_decay": cfg.muon.weight_decay, "lr": cfg.muon.lr, "muon": True})
    elif hidden[0]:
        groups.insert(1, {"params": hidden[0], "names": hidden[1], "weight_decay": cfg.weight_decay, "lr": cfg.lr * scale})
    return groups


class Combined(torch.optim.Optimizer):
    """Optimizers stepped as one (torchtitan's OptimizersContainer): their param groups, in order, are this one's
    (the same dicts), so one LR schedule and the hyperparameter code drive them all; checkpoints hold each one's
    state (training/checkpoint.py passes `optimizers` to torch.distributed.checkpoint)."""

    def __init__(self, optimizers: list[torch.optim.Optimizer]):  # not Optimizer.__init__: groups and state stay the inner ones'
        self.optimizers = optimizers
        self.defaults: dict = {}

    @property
    def param_groups(self) -> list[dict]:
        # read anew each time: loading a state dict gives an optimizer new group dicts
        return [g for o in self.optimizers for g in o.param_groups]

    @property
    def state(self):
        return collections.ChainMap(*(o.state for o in self.optimizers))

    def step(self, closure=None):
        for o in self.optimizers:
            o.step()

    def zero_grad(self, set_to_none: bool = True) -> None:
        for o in self.optimizers:
            o.zero_grad(set_to_none=set_to_none)


def build_optimizer(model: torch.nn.Module, cfg: OptimConfig, device_type: str) -> torch.optim.Optimizer:
    groups = [{k: v for k, v in g.items() if k != "names"} for g in param_groups(model, cfg)]
    if cfg.name == "sgd":
        return torch.optim.SGD(groups, lr=cfg.lr, momentum=cfg.betas[0])
    rest = [g for g in groups if not g.get("muon")]
    adamw = torch.optim.AdamW(rest, lr=cfg.lr, betas=tuple(cfg.betas), fused=device_type == "cuda")
    if cfg.name != "muon":
        return adamw
    m = cfg.muon
    (matrices,) = [{k: v for k, v in g.items() if k != "muon"} for g in groups if g.get("muon")]
    muon = torch.optim.Muon([matrices], lr=m.lr, momentum=m.momentum, nesterov=m.nesterov, ns_steps=m.ns_steps, adjust_lr_fn=m.adjust_lr)
    return Combined([adamw, muon])


def describe_groups(model: torch.nn.Module, cfg: OptimConfig) -> list[str]:
    """Which tensors get which optimizer and lr, a line per group (printed as training starts)."""
    lines = []
    for g in param_groups(model, cfg):
        if not g["params"]:
            continue
        algo = "muon" if g.get("muon") else cfg.name if cfg.name != "muon" else "adamw"
        n = sum(p.numel() for p in g["params"])
        shown = ", ".join(g["names"][:4]) + (f" and {len(g['names']) - 4} more" if len(g["names"]) > 4 else "")
        lines.append(f"{algo} lr {g['lr']:.3g} weight decay {g['weight_decay']:g}: {len(g['names'])} tensors, {n:,} params ({shown})")
    return lines


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
