import pytest
import torch

from raylm.training.config import ModelConfig, OptimConfig, ScheduleConfig
from raylm.training.model import GPT, GPTConfig
from raylm.training.optim import build_optimizer, build_scheduler, lr_factor, param_groups


def test_decay_groups_cover_every_parameter_once():
    m = GPT(GPTConfig.from_config(ModelConfig(n_layer=2, n_head=2, d_model=32, seq_len=16, bias=True), 100))
    decay, no_decay = param_groups(m, OptimConfig(weight_decay=0.1, lr=1e-3))
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


# ---------------------------------------------------------------- Muon (optim.name: muon)
def _llama():
    torch.manual_seed(0)
    return GPT(GPTConfig.from_config(ModelConfig(arch="llama", n_layer=2, n_head=4, n_kv_head=2, d_model=64, seq_len=16, bias=True), 100))


def test_muon_takes_exactly_the_hidden_matrices_and_adamw_the_rest():
    m = _llama()
    opt = build_optimizer(m, OptimConfig(name="muon"), "cpu")
    adamw, muon = opt.optimizers
    names = {id(p): n for n, p in m.named_parameters()}
    hidden = {names[id(p)] for g in muon.param_groups for p in g["params"]}
    rest = {names[id(p)] for g in adamw.param_groups for p in g["params"]}
    want = {n for n, p in m.named_parameters() if p.dim() == 2 and n.startswith("blocks.")}
    assert hidden == want and len(want) == 8  # qkv, proj, fc, proj in each of 2 blocks
    assert rest == set(names.values()) - want  # embedding, head, norm gains, biases


def test_muon_updates_are_orthogonalized_and_adamw_keeps_its_lr():
    m = _llama()
    opt = build_optimizer(m, OptimConfig(name="muon", lr=1e-3, muon={"lr": 1.0, "weight_decay": 0.0}), "cpu")
    w = m.blocks[0].attn.proj.weight  # (64, 64): square, so the update's scale is the lr itself
    before, emb = w.detach().clone(), m.wte.weight.detach().clone()
    g = torch.Generator().manual_seed(3)
    _, loss = m(torch.randint(0, 100, (16, 16), generator=g), torch.randint(0, 100, (16, 16), generator=g))
    loss.backward()
    grad = torch.linalg.svdvals(w.grad)
    opt.step()
    s = torch.linalg.svdvals(before - w.detach())
    # Newton-Schulz: the gradient's spread singular values (but its near-null directions) brought near 1
    assert 0.5 < s[:32].min() and s.max() < 1.5 and grad[0] / grad[31] > 5, (s, grad)
    assert (emb - m.wte.weight.detach()).abs().max() < 2e-3  # Adam's first step moves a weight by about its lr


def test_one_schedule_drives_both_optimizers():
    m = _llama()
    opt = build_optimizer(m, OptimConfig(name="muon", lr=1e-3, muon={"lr": 0.02}), "cpu")
    sched = build_scheduler(opt, ScheduleConfig(warmup_steps=4), 20)
    adamw, muon = opt.optimizers
    opt.step()
    sched.step()
    assert adamw.param_groups[0]["lr"] == pytest.approx(2e-3 / 4) and muon.param_groups[0]["lr"] == pytest.approx(0.02 * 2 / 4)


def test_muon_with_fsdp_is_refused_naming_the_layout_to_use():
    from pydantic import ValidationError

    from raylm.training.config import TrainConfig

    with pytest.raises(ValidationError, match="use train.parallelism: ddp"):
        TrainConfig.model_validate({"optim": {"name": "muon"}, "parallelism": "fsdp"})


def test_the_groups_are_described_by_optimizer_lr_and_tensors():
    from raylm.training.optim import describe_groups

    lines = describe_groups(_llama(), OptimConfig(name="muon"))
    assert lines[-1].startswith("muon lr 0.02 weight decay 0: 8 tensors") and lines[0].startswith("adamw lr 0.001 weight decay 0.1: 2 tensors")


def test_a_llama_muon_trainer_resumes_bit_for_bit(tiny_shards):
    """Both optimizers' states (Adam's moments, Muon's momentum) and the schedule are in the state a checkpoint
    holds: a trainer loaded from it after step 5 continues exactly as an uninterrupted one."""
    from tests.conftest import TINY_MODEL, tiny_trainer

    def trainer():
        return tiny_trainer(tiny_shards, model={**TINY_MODEL, "arch": "llama", "n_kv_head": 1}, optim={"name": "muon"}, max_steps=8)

    whole = trainer()
    rows = [whole.train_step()["loss"] for _ in range(8)]
    first = trainer()
    head = [first.train_step()["loss"] for _ in range(5)]
    resumed = trainer()
    resumed.load_state_dict(first.state_dict())
    assert head + [resumed.train_step()["loss"] for _ in range(3)] == rows
