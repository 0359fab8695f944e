"""The GPU-only branches of training, run on CPU where torch allows it, so a typo there fails here and not on the
first user's GPU: bf16 autocast (the DDP path), fused AdamW, torch.compile of a tiny model, FSDP2 with a bf16
MixedPrecisionPolicy over gloo (full state dicts and the DTensor gradient norm included). No Ray: the Trainer
that Ray Train drives, on real shards and a real process group of one."""

import os
import shutil

import numpy as np
import pytest
import torch

from raylm.training.config import OptimConfig
from raylm.training.optim import build_optimizer
from tests.conftest import TINY_MODEL, free_port, tiny_trainer

ARCHS = {"gpt2": TINY_MODEL, "llama": {**TINY_MODEL, "arch": "llama", "n_kv_head": 1}}  # llama: with grouped-query attention


@pytest.mark.parametrize("arch", ARCHS)
def test_bf16_autocast_on_the_ddp_path(tiny_shards, arch):
    eager = tiny_trainer(tiny_shards, model=ARCHS[arch])
    tr = tiny_trainer(tiny_shards, precision="bf16", model=ARCHS[arch])
    assert isinstance(tr.amp, torch.autocast) and tr.amp.fast_dtype == torch.bfloat16
    a, b = eager.train_step()["loss"], tr.train_step()["loss"]
    assert np.isfinite(b) and a != b and abs(a - b) < 0.05  # the same step, in bf16: close, not equal
    assert tr.evaluate()["loss"] is not None


def test_fused_adamw_steps():
    m = torch.nn.Linear(8, 8)
    opt = build_optimizer(m, OptimConfig(), "cuda")  # the GPU branch: fused=True (torch has a fused CPU kernel)
    assert opt.defaults["fused"] is True
    before = m.weight.detach().clone()
    m(torch.randn(4, 8)).square().mean().backward()
    opt.step()
    assert not torch.equal(before, m.weight)


@pytest.mark.slow
@pytest.mark.own_ray  # no Ray: beside the Ray tests
@pytest.mark.skipif(not (shutil.which("g++") or shutil.which("c++")), reason="inductor on CPU compiles C++: no compiler here")
@pytest.mark.parametrize("arch", ARCHS)
def test_compiled_model_trains_like_the_eager_one(tiny_shards, arch):
    eager, compiled = tiny_trainer(tiny_shards, model=ARCHS[arch]), tiny_trainer(tiny_shards, compile=True, model=ARCHS[arch])
    assert compiled.model._compiled_call_impl is not None  # nn.Module.compile() in place
    for _ in range(2):
        a, b = eager.train_step()["loss"], compiled.train_step()["loss"]
        assert b == pytest.approx(a, rel=1e-4)


@pytest.mark.parametrize("arch", ARCHS)
def test_fsdp2_bf16_mixed_precision_over_gloo(tiny_shards, arch):
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(free_port()))
    torch.distributed.init_process_group("gloo", rank=0, world_size=1)
    try:
        tr = tiny_trainer(tiny_shards, parallelism="fsdp", precision="bf16", model=ARCHS[arch])
        blocks = list(tr.model.blocks)
        assert all(type(b).__name__.startswith("FSDP") for b in blocks)  # fully_shard per block
        rows = [tr.train_step() for _ in range(2)]
        assert all(np.isfinite(r["loss"]) and np.isfinite(r["grad_norm"]) for r in rows)
        state = tr.state_dict()  # full (unsharded) state, as checkpoints hold it
        assert state["model"]["wte.weight"].shape == (128, 32) and state["step"] == 2
    finally:
        torch.distributed.destroy_process_group()
