"""The GPT model on CPU: causality, tied weights, init, loss mask, and that it learns."""

import math

import torch

from raylm.training.config import ModelConfig
from raylm.training.model import GPT, GPTConfig, padded_vocab


def _model() -> GPT:
    torch.manual_seed(0)
    return GPT(GPTConfig.from_config(ModelConfig(n_layer=2, n_head=2, d_model=32, seq_len=16), n_vocab=100))


def test_future_tokens_never_change_past_logits():
    m = _model().eval()
    x = torch.randint(0, 128, (2, 16))
    y = x.clone()
    y[:, 10:] = torch.randint(0, 128, (2, 6))
    lx, _ = m(x)
    ly, _ = m(y)
    assert torch.allclose(lx[:, :10], ly[:, :10], atol=1e-6)
    assert not torch.allclose(lx[:, 10:], ly[:, 10:])


def test_tied_head_padded_vocab_and_scaled_init():
    m = _model()
    assert m.head.weight is m.wte.weight
    assert padded_vocab(100277) == 100288 and padded_vocab(64) == 64
    proj = m.blocks[0].attn.proj.weight.std().item()
    fc = m.blocks[0].mlp.fc.weight.std().item()
    assert abs(fc - 0.02) < 0.004 and abs(proj - 0.02 / math.sqrt(4)) < 0.003


def test_loss_mask_excludes_positions():
    m = _model()
    x = torch.randint(0, 128, (2, 16))
    t = torch.randint(0, 128, (2, 16))
    mask = torch.zeros(2, 16)
    mask[:, 8:] = 1
    _, masked = m(x, t, mask)
    logits, _ = m(x)
    ref = torch.nn.functional.cross_entropy(logits[:, 8:].reshape(-1, 128), t[:, 8:].reshape(-1))
    assert torch.allclose(masked, ref, atol=1e-5)


def test_loss_falls_on_tiny_data():
    m = _model()
    opt = torch.optim.AdamW(m.parameters(), lr=3e-3)
    data = torch.arange(17).repeat(4, 1) % 128  # a fixed sequence to memorize
    first = None
    for _ in range(60):
        _, loss = m(data[:, :-1], data[:, 1:])
        first = first if first is not None else loss.item()
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert loss.item() < 0.2 * first


def test_generate_greedy_is_deterministic():
    m = _model().eval()
    a = m.generate(torch.zeros(1, 1, dtype=torch.long), 5, temperature=0)
    b = m.generate(torch.zeros(1, 1, dtype=torch.long), 5, temperature=0)
    assert a.shape == (1, 6) and torch.equal(a, b)


def test_document_mask_computes_each_packed_document_as_if_alone():
    eot = 99
    torch.manual_seed(0)
    m = GPT(GPTConfig.from_config(ModelConfig(n_layer=2, n_head=2, d_model=32, seq_len=16, document_mask=True), 100, eot)).eval()
    g = torch.Generator().manual_seed(1)
    tail = torch.randint(0, 99, (3,), generator=g)  # the end of a document cut by the window
    a, b = (torch.cat([torch.tensor([eot]), torch.randint(0, 99, (n,), generator=g)]) for n in (6, 5))
    packed = torch.cat([tail, a, b])[None]  # (1, 15): tail | eot a... | eot b...
    logits, _ = m(packed)
    for doc, lo in ((tail, 0), (a, 3), (b, 10)):
        alone, _ = m(doc[None])
        assert torch.allclose(logits[0, lo : lo + len(doc)], alone[0], atol=1e-5), lo
    plain = GPT(GPTConfig.from_config(ModelConfig(n_layer=2, n_head=2, d_model=32, seq_len=16), 100))
    plain.load_state_dict(m.state_dict())
    crossed, _ = plain.eval()(packed)  # without the mask, b's tokens see a's: the test can tell them apart
    assert not torch.allclose(crossed[0, 10:], logits[0, 10:], atol=1e-3)
    # training through the mask: gradients flow and the loss is finite
    m.train()
    _, loss = m(packed[:, :-1], packed[:, 1:])
    loss.backward()
    assert torch.isfinite(loss) and m.wpe.weight.grad.abs().sum() > 0


def test_buffers_are_the_rope_tables_computed_from_the_config():
    """DDP does not broadcast buffers (training/parallel.py): each rank's must follow from the config alone."""
    for arch in ("gpt2", "llama"):
        cfg = GPTConfig.from_config(ModelConfig(arch=arch, n_layer=1, n_head=2, d_model=32, seq_len=16), n_vocab=100)
        torch.manual_seed(0)
        a = dict(GPT(cfg).named_buffers())
        torch.manual_seed(1)
        b = dict(GPT(cfg).named_buffers())
        assert set(a) <= {"rope_cos", "rope_sin"} and all(torch.equal(a[k], b[k]) for k in a), arch
