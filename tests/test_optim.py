import pytest
import torch

from raylm.training.config import ModelConfig, OptimConfig, ScheduleConfig
from raylm.training.model import GPT, GPTConfig
from raylm.training.optim import build_optimizer, build_scheduler, lr_factor, param_groups


def test_decay_groups_cover_every_parameter_once():
    m = GPT(GPTConfig.from_config(ModelConfig(n_layer=2, n_head=2, d_model=32, seq_len=16, bias=True), 100))
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


def _trained_optimizer(lr: float, steps: int):
    torch.manual_seed(0)
    m = GPT(GPTConfig.from_config(ModelConfig(n_layer=1, n_head=2, d_model=32, seq_len=8, mup={"base_width": 16}), 50))
    opt = build_optimizer(m, OptimConfig(lr=lr), "cpu")
    sch = build_scheduler(opt, ScheduleConfig(warmup_steps=3), 20)
    for _ in range(steps):
        x = torch.randint(0, 50, (2, 8))
        m(x, x)[1].backward()
        opt.step()
        opt.zero_grad()
        sch.step()
    return m, opt, sch


@pytest.mark.parametrize("new_lr", [1e-3, 3e-3])
def test_loaded_state_keeps_the_recipes_hyperparameters(new_lr):
    """Resume: the checkpoint's moments and schedule position with the recipe's lr (the same lr bit for
    bit when the recipe is unchanged; PBT's perturbed lr when it is not)."""
    from raylm.training.optim import hyperparams, reapply_hyperparams

    _, opt, sch = _trained_optimizer(1e-3, 5)
    m2, opt2, sch2 = _trained_optimizer(new_lr, 0)
    hyper = hyperparams(opt2)
    opt2.load_state_dict(opt.state_dict())
    sch2.load_state_dict(sch.state_dict())
    reapply_hyperparams(opt2, sch2, hyper)
    assert sch2.last_epoch == 5 and opt2.state_dict()["state"].keys() == opt.state_dict()["state"].keys()
    for g, g_old in zip(opt2.param_groups, opt.param_groups):
        if new_lr == 1e-3:
            assert g["lr"] == g_old["lr"]
        else:
            assert g["lr"] == pytest.approx(g_old["lr"] * new_lr / 1e-3, rel=1e-12)
    assert opt2.param_groups[1]["lr"] == pytest.approx(opt2.param_groups[0]["lr"] * m2.hidden_lr_scale())  # muP group
    sch2.step()
    sch.step()
    assert sch2.get_last_lr() == pytest.approx([v * new_lr / 1e-3 for v in sch.get_last_lr()])
