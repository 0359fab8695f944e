"""The block options of train.model (training/model.py), each checked against what it specifies, on CPU without
Ray: the arch defaults, RMSNorm, rotary positions (with document masking), SwiGLU and ReLU-squared MLPs,
grouped-query attention, QK-norm, untied embeddings and logit soft-capping."""

import pytest
import torch
import torch.nn.functional as F
from pydantic import ValidationError

from raylm.training.config import ModelConfig
from raylm.training.model import GPT, GPTConfig, rope_tables, rotate

SHAPE = {"n_layer": 2, "n_head": 4, "d_model": 32, "seq_len": 16}


def _model(**options) -> GPT:
    torch.manual_seed(0)
    return GPT(GPTConfig.from_config(ModelConfig(**{**SHAPE, **options}), n_vocab=100, eot=99)).eval()


def _tokens(n: int = 16, batch: int = 2) -> torch.Tensor:
    return torch.randint(0, 99, (batch, n), generator=torch.Generator().manual_seed(1))


def test_llama_arch_resolves_to_its_design():
    cfg = GPTConfig.from_config(ModelConfig(arch="llama", **SHAPE), n_vocab=100)
    design = (cfg.norm, cfg.position, cfg.mlp, cfg.tie_embeddings, cfg.n_kv_head, cfg.mlp_hidden)
    assert design == ("rmsnorm", "rope", "swiglu", False, 4, 128)  # 8/3 x 32 = 85.3, up to a multiple of 64


def test_an_option_set_in_the_recipe_overrides_its_arch():
    cfg = GPTConfig.from_config(ModelConfig(arch="llama", mlp="relu2", tie_embeddings=True, **SHAPE), n_vocab=100)
    assert (cfg.mlp, cfg.tie_embeddings, cfg.mlp_hidden) == ("relu2", True, 128)


@pytest.mark.parametrize("d_model,hidden", [(96, 256), (192, 512), (64, 192)])
def test_swiglu_hidden_size_rounds_up_to_its_multiple(d_model, hidden):
    assert ModelConfig(arch="llama", n_head=4, d_model=d_model).mlp_hidden() == hidden


@pytest.mark.parametrize(
    "options,key",
    [({"n_head": 4, "n_kv_head": 3}, "n_kv_head"), ({"arch": "llama", "n_head": 4, "d_model": 12}, "even head size")],
)
def test_inconsistent_options_are_refused_naming_them(options, key):
    with pytest.raises(ValidationError, match=key):
        ModelConfig(**options)


def test_rmsnorm_scales_by_the_root_mean_square_with_a_gain_only():
    m = _model(norm="rmsnorm")
    ln = m.blocks[0].ln1
    x = torch.randn(3, 32)
    want = x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + 1e-5) * ln.weight
    assert torch.allclose(ln(x), want, atol=1e-6) and [n for n, _ in ln.named_parameters()] == ["weight"]


def test_rope_replaces_the_position_embedding():
    assert _model(position="rope").wpe is None and _model().wpe is not None


def test_rotary_scores_depend_on_relative_position_only():
    cos, sin = rope_tables(8, 32, 10_000.0)
    q, k = torch.randn(1, 1, 1, 8), torch.randn(1, 1, 1, 8)

    def score(m, n):  # query at position m, key at position n
        return (rotate(q, cos[m], sin[m]) * rotate(k, cos[n], sin[n])).sum()

    assert torch.allclose(score(7, 3), score(20, 16), atol=1e-5) and not torch.allclose(score(7, 3), score(7, 4), atol=1e-3)


@pytest.mark.parametrize("arch", ["gpt2", "llama"])
def test_document_mask_computes_each_packed_document_as_if_alone(arch):
    """Positions restart at each document (learned, or rotary): each document of a packed window gets the logits
    it gets alone."""
    eot, g = 99, torch.Generator().manual_seed(1)
    m = _model(arch=arch, document_mask=True)
    tail = torch.randint(0, 99, (3,), generator=g)  # the end of a document cut by the window
    a, b = (torch.cat([torch.tensor([eot]), torch.randint(0, 99, (n,), generator=g)]) for n in (6, 5))
    logits, _ = m(torch.cat([tail, a, b])[None])  # (1, 14, vocab): tail | eot a... | eot b...
    for doc, lo in ((tail, 0), (a, 3), (b, 10)):
        alone, _ = m(doc[None])
        assert torch.allclose(logits[0, lo : lo + len(doc)], alone[0], atol=1e-5), (arch, lo)


def _mlp_input(m: GPT) -> torch.Tensor:
    return torch.randn(2, 5, m.cfg.d_model, generator=torch.Generator().manual_seed(2))


def test_swiglu_gates_the_up_projection_by_silu_of_the_gate():
    mlp = _model(mlp="swiglu", mlp_ratio=2.0, mlp_multiple=1).blocks[0].mlp
    x = _mlp_input(_model())
    gate, up = mlp.fc.weight.chunk(2, dim=0)  # (64, 32) each
    want = (F.silu(x @ gate.T) * (x @ up.T)) @ mlp.proj.weight.T
    assert torch.allclose(mlp(x), want, atol=1e-6)


def test_relu2_squares_the_relu():
    mlp = _model(mlp="relu2").blocks[0].mlp
    x = _mlp_input(_model())
    want = F.relu(x @ mlp.fc.weight.T).square() @ mlp.proj.weight.T
    assert torch.allclose(mlp(x), want, atol=1e-6)


def test_grouped_query_attention_equals_attention_with_each_kv_head_repeated():
    """2 key/value heads for 4 query heads: query heads 0, 1 read kv head 0 and 2, 3 kv head 1 (Llama's grouping),
    as a full multi-head attention whose key and value rows are those heads repeated."""
    gqa = _model(n_kv_head=2)
    full = _model()
    hs, C = 8, 32
    q, k, v = gqa.blocks[0].attn.qkv.weight.split([C, 2 * hs, 2 * hs])
    repeat = lambda w: w.view(2, hs, C).repeat_interleave(2, dim=0).reshape(C, C)  # noqa: E731
    with torch.no_grad():
        full.blocks[0].attn.qkv.weight.copy_(torch.cat([q, repeat(k), repeat(v)]))
        full.blocks[0].attn.proj.weight.copy_(gqa.blocks[0].attn.proj.weight)
    x = _mlp_input(gqa)
    assert gqa.blocks[0].attn.qkv.weight.shape == (C + 2 * 2 * hs, C)
    assert torch.allclose(gqa.blocks[0].attn(x), full.blocks[0].attn(x), atol=1e-6)


def test_qk_norm_makes_attention_blind_to_the_scale_of_queries_and_keys():
    def out(m, scale):
        attn = m.blocks[0].attn
        with torch.no_grad():
            attn.qkv.weight[:64] *= scale  # the query and key rows
        return attn(_mlp_input(m))

    assert torch.allclose(out(_model(qk_norm=True), 1.0), out(_model(qk_norm=True), 5.0), atol=1e-5)
    assert not torch.allclose(out(_model(), 1.0), out(_model(), 5.0), atol=1e-3)


def test_untied_head_has_a_matrix_of_its_own():
    tied, untied = _model(), _model(tie_embeddings=False)
    assert untied.head.weight is not untied.wte.weight and tied.head.weight is tied.wte.weight
    assert untied.num_params(non_embedding=False) - tied.num_params(non_embedding=False) == untied.head.weight.numel()


def test_logit_softcap_bounds_the_logits_by_tanh():
    raw, capped = _model(), _model(logit_softcap=0.5)
    with torch.no_grad():
        raw.head.weight.mul_(50)  # logits far beyond the cap (the tied matrix: the embedding too, in both)
        capped.head.weight.mul_(50)
    x = _tokens()
    want = 0.5 * torch.tanh(raw(x)[0] / 0.5)
    got = capped(x)[0]
    assert torch.allclose(got, want, atol=1e-6) and got.abs().max() <= 0.5


@pytest.mark.parametrize("arch", ["gpt2", "llama"])
def test_every_option_together_trains(arch):
    m = _model(arch=arch, n_kv_head=2, qk_norm=True, logit_softcap=30.0, document_mask=True).train()
    opt = torch.optim.AdamW(m.parameters(), lr=3e-3)
    data = (torch.arange(17).repeat(4, 1) % 99)[:, :17]  # a fixed sequence to memorize
    losses = []
    for _ in range(40):
        _, loss = m(data[:, :-1], data[:, 1:])
        losses.append(loss.item())
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert losses[-1] < 0.3 * losses[0], (arch, losses[0], losses[-1])


def test_flops_per_token_count_gqa_and_swiglu_matrices():
    """MFU's 6N + 12 L H Q T: N holds grouped-query attention's smaller key/value projections, SwiGLU's three
    matrices and the untied head, not the token embedding (a lookup)."""
    m = _model(arch="llama", n_kv_head=2)
    L, d, H, kv, hs, hidden, V, T = 2, 32, 4, 2, 8, 128, 128, 16
    block = d * (H + 2 * kv) * hs + d * d + d * 2 * hidden + hidden * d + 2 * d  # qkv, proj, gate+up, down, 2 norms
    n = L * block + d + V * d  # + the final norm and the head
    assert m.num_params() == n
    assert m.flops_per_token() == 6 * n + 12 * L * H * hs * T
