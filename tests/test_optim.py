import pytest
import torch

from cluster.config import ModelConfig, OptimConfig, ScheduleConfig
from training.model import GPT, GPTConfig
from training.optim import build_optimizer, build_scheduler, lr_factor, param_groups


def test_decay_groups_cover_every_parameter_once():
    m = GPT(GPTConfig.from_recipe(ModelConfig(n_layer=2, n_head=2, d_model=32, seq_len=16, bias=True), 100))
    decay, no_decay = param_groups(m, 0.1, 1e-3)
    n = sum(p.numel() for p in m.parameters())  # tied weights counted once by .parameters()
    assert sum(p.numel() for g in (decay, no_decay) for p in g["params"]) == n
    assert all(p.dim() >= 2 for p in decay["params"]) and all(p.dim() == 1 for p in no_decay["params"])
    assert decay["weight_decay"] == 0.1 and no_decay["weight_decay"] == 0.0
    assert isinstance(build_optimizer(m, OptimConfig(), "cpu"), torch.optim.AdamW)
    assert isinstance(build_optimizer(m, OptimConfig(name="sgd"), "cpu"), torch.optim.SGD)


@pytest.mark.parametrize("decay", ["cosine", "wsd", "constant"])
def test_schedule_shapes(decay):
    cfg = ScheduleConfig(warmup_steps=10, decay=decay, min_lr_ratio=0.1, decay_fraction=0.2)
    f = [lr_factor(s, cfg, 100) for s in range(101)]
    assert f[0] == pytest.approx(0.1) and f[9] == pytest.approx(1.0)
    assert all(a <= b + 1e-12 for a, b in zip(f[:10], f[1:10]))  # warmup rises
    if decay == "constant":
        assert f[100] == 1.0
    else:
        assert f[100] == pytest.approx(0.1) and all(a >= b - 1e-12 for a, b in zip(f[10:], f[11:]))
    if decay == "wsd":
        assert f[79] == 1.0 and f[90] < 1.0


def test_scheduler_drives_optimizer_lr():
    p = torch.nn.Parameter(torch.zeros(2, 2))
    opt = torch.optim.AdamW([p], lr=1e-3)
    sch = build_scheduler(opt, ScheduleConfig(warmup_steps=4), 20)
    lrs = []
    for _ in range(6):
        lrs.append(opt.param_groups[0]["lr"])
        opt.step()
        sch.step()
    assert lrs[:4] == pytest.approx([2.5e-4, 5e-4, 7.5e-4, 1e-3])
