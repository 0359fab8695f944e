"""muP in the model and optimizer: width_mult, hidden init scale, attention and logit scaling,
hidden-layer learning rate; without muP nothing changes. (Activation scales across widths are
measured by benchmarks/mup_coord_check.py.)"""

import pytest
import torch

from raylm.training.config import ModelConfig, OptimConfig
from raylm.training.model import GPT, GPTConfig
from raylm.training.optim import build_optimizer


def _gpt(d_model, mup_base=None, seed=0):
    torch.manual_seed(seed)
    mup = {"base_width": mup_base} if mup_base else None
    return GPT(GPTConfig.from_config(ModelConfig(n_layer=2, n_head=4, d_model=d_model, seq_len=16, mup=mup), 200))


def test_hidden_init_and_lr_scale_with_width():
    sp, mup = _gpt(256), _gpt(256, mup_base=64)
    assert mup.cfg.width_mult == 4.0 and sp.cfg.width_mult == 1.0
    # hidden weights' std shrinks by sqrt(width_mult); the tied embedding/head does not
    ratio = sp.blocks[0].mlp.fc.weight.std() / mup.blocks[0].mlp.fc.weight.std()
    assert ratio.item() == pytest.approx(2.0, rel=0.05)
    assert mup.wte.weight.std().item() == pytest.approx(0.02, rel=0.05)
    groups = build_optimizer(mup, OptimConfig(lr=1e-2), "cpu").param_groups
    assert [g["lr"] for g in groups] == [1e-2, 1e-2 / 4, 1e-2]
    assert any(p is mup.blocks[1].attn.qkv.weight for p in groups[1]["params"])
    assert any(p is mup.wte.weight for p in groups[0]["params"])
    assert len(build_optimizer(sp, OptimConfig(lr=1e-2), "cpu").param_groups) == 2


def test_logits_scaled_and_base_width_is_standard_but_for_attention():
    x = torch.randint(0, 200, (2, 16))
    sp, same = _gpt(64), _gpt(64, mup_base=64)  # width_mult 1: same init, only attention scale differs
    for a, b in zip(sp.parameters(), same.parameters()):
        assert torch.equal(a, b)
    assert same.blocks[0].attn.scale == 1 / 16 and sp.blocks[0].attn.scale is None
    wide = _gpt(128, mup_base=64)
    wide_logits, _ = wide(x)
    wide.cfg.mup_base_width = None  # the same weights without the 1/width_mult on the logits
    for b in wide.blocks:
        b.attn.scale = 1 / 32
    raw, _ = wide(x)
    assert torch.allclose(wide_logits * 2, raw, atol=1e-5)
