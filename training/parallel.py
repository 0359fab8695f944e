"""How the model is parallelized on a Ray Train worker, apart from the model itself (as torchtitan):
torch.compile, then DDP through `ray.train.torch.prepare_model` or FSDP2 (`fully_shard` per block,
then the root, which also holds the tied embedding/head) with bf16 parameters on GPU.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import AbstractContextManager, contextmanager, nullcontext

import torch

from raylm.training.config import TrainConfig
from raylm.training.model import GPT


def use_compile(t: TrainConfig, device: torch.device) -> bool:
    # auto: on GPU only (on CPU, inductor needs a C++ toolchain and gains little for small models)
    return t.compile is True or (t.compile == "auto" and device.type == "cuda")


def use_bf16(t: TrainConfig, device: torch.device) -> bool:
    return t.precision == "bf16" or (t.precision == "auto" and device.type == "cuda")


def _fully_shard():
    try:
        from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard  # torch >= 2.6
    except ImportError:  # torch 2.4 / 2.5
        from torch.distributed._composable.fsdp import MixedPrecisionPolicy, fully_shard
    return fully_shard, MixedPrecisionPolicy


def parallelize(model: GPT, t: TrainConfig, device: torch.device) -> torch.nn.Module:
    """The model as the loop drives it: compiled and wrapped for `t.parallelism`. Its parameters
    stay the GPT's own (FSDP2 shards them in place), so optimizers can be built before or after."""
    if t.parallelism == "fsdp":
        fully_shard, MixedPrecisionPolicy = _fully_shard()
        model.to(device)
        mp = MixedPrecisionPolicy(param_dtype=torch.bfloat16, reduce_dtype=torch.float32) if use_bf16(t, device) else None
        kw = {"mp_policy": mp} if mp is not None else {}
        for block in model.blocks:
            if use_compile(t, device):
                block.compile()
            fully_shard(block, **kw)
        fully_shard(model, **kw)
        return model
    if use_compile(t, device):
        model.compile()  # in place: state_dict keys stay the GPT's
    model.to(device)
    if torch.distributed.is_initialized() and torch.distributed.get_world_size() > 1:  # what rtt.prepare_model does, without needing Ray
        # the model's only buffers are the RoPE tables, computed alike from the config on every rank: DDP's default
        # broadcast of them before each forward (~5% of a small model's step on CPU) would copy equal values
        device_ids = [device.index] if device.type == "cuda" else None
        return torch.nn.parallel.DistributedDataParallel(model, device_ids=device_ids, broadcast_buffers=False)
    return model


def autocast(t: TrainConfig, device: torch.device) -> AbstractContextManager:
    """bf16 autocast for DDP on GPU; FSDP2 casts through its mixed-precision policy instead."""
    if use_bf16(t, device) and t.parallelism == "ddp":
        return torch.autocast(device.type, dtype=torch.bfloat16)
    return nullcontext()


@contextmanager
def grad_sync(model: torch.nn.Module, sync: bool) -> Iterator[None]:
    """Skip the gradient all-reduce / reduce-scatter on all but the last micro-step of accumulation."""
    if hasattr(model, "set_requires_gradient_sync"):  # FSDP2
        model.set_requires_gradient_sync(sync)
        yield
    elif not sync and hasattr(model, "no_sync"):  # DDP
        with model.no_sync():
            yield
    else:
        yield
