"""The GPU-only branches of training, run on CPU where torch allows it, so a typo there fails here and not on the
first user's GPU: bf16 autocast (the DDP path), fused AdamW, torch.compile of a tiny model, FSDP2 with a bf16
MixedPrecisionPolicy over gloo (full state dicts and the DTensor gradient norm included). No Ray: the Trainer
that Ray Train drives, on real shards and a real process group of one."""

import os
import shutil
import socket

import numpy as np
import pytest
import torch

from pipelines.shards import ShardWriter, write_manifest
from training.config import OptimConfig, TrainJob
from training.loop import Trainer
from training.optim import build_optimizer

MODEL = {"n_layer": 2, "n_head": 2, "d_model": 32, "seq_len": 16}


@pytest.fixture
def shards(tmp_path):
    rng = np.random.default_rng(0)
    splits = {}
    for split, docs in (("train", 60), ("val", 12)):
        w = ShardWriter(str(tmp_path / "data"), split, np.dtype(np.uint16), shard_tokens=2000)
        for _ in range(docs):
            n = int(rng.integers(20, 60))
            w.add(np.r_[99, rng.integers(0, 99, n - 1)].astype(np.uint32), np.array([n]))
        splits[split] = w.close()
    man = {"format": "raylm-shards", "version": 1, "dtype": "uint16", "splits": splits, "tokenizer": {"name": "t", "n_vocab": 100, "eot": 99}}
    write_manifest(str(tmp_path / "data"), man)
    return tmp_path


def _trainer(root, **train) -> Trainer:
    t = {"model": MODEL, "batch": {"micro_batch_size": 2, "global_batch_tokens": 64}, "max_steps": 4, "data_path": str(root / "data")}
    t["scaling"] = {"num_workers": 1, "use_gpu": False, "resources_per_worker": {"CPU": 1}}
    job = TrainJob.from_recipe({"storage_path": str(root), "name": "g", "train": {**t, **train}})
    return Trainer(job, 0, 1, torch.device("cpu"))


def test_bf16_autocast_on_the_ddp_path(shards):
    eager = _trainer(shards)
    tr = _trainer(shards, precision="bf16")
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
@pytest.mark.skipif(not (shutil.which("g++") or shutil.which("c++")), reason="inductor on CPU compiles C++: no compiler here")
def test_compiled_model_trains_like_the_eager_one(shards):
    eager, compiled = _trainer(shards), _trainer(shards, compile=True)
    assert compiled.model._compiled_call_impl is not None  # nn.Module.compile() in place
    for _ in range(2):
        a, b = eager.train_step()["loss"], compiled.train_step()["loss"]
        assert b == pytest.approx(a, rel=1e-4)


def test_fsdp2_bf16_mixed_precision_over_gloo(shards):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.distributed.init_process_group("gloo", rank=0, world_size=1)
    try:
        tr = _trainer(shards, parallelism="fsdp", precision="bf16")
        blocks = list(tr.model.blocks)
        assert all(type(b).__name__.startswith("FSDP") for b in blocks)  # fully_shard per block
        rows = [tr.train_step() for _ in range(2)]
        assert all(np.isfinite(r["loss"]) and np.isfinite(r["grad_norm"]) for r in rows)
        state = tr.state_dict()  # full (unsharded) state, as checkpoints hold it
        assert state["model"]["wte.weight"].shape == (128, 32) and state["step"] == 2
    finally:
        torch.distributed.destroy_process_group()
