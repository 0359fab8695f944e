"""A decoder-only transformer in one readable file (after nanoGPT's model.py): no framework inside.

Two block designs from one set of options (train.model; the arch's defaults in training/config.py):
- gpt2: token + learned position embeddings, pre-LayerNorm blocks, GELU MLP, head tied to the token embedding;
- llama: rotary positions (RoPE) in attention, RMSNorm, SwiGLU MLP, grouped-query attention, untied head;
and, on either, ReLU-squared MLPs, QK-norm and logit soft-capping. Causal self-attention through
F.scaled_dot_product_attention (flash / memory-efficient kernels where available), dropout, optional biases,
GPT-2 initialization with residual projections scaled by 1/sqrt(2 * n_layer). Optional muP (`mup_base_width`):
hidden init variance / width_mult, attention scale 1/d_head, logits / width_mult; the hidden learning rate
/ width_mult is the optimizer's part (training/optim.py, `hidden_lr_scale`). How it is parallelized lives
elsewhere.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch
import torch.nn as nn
import torch.nn.functional as F

if TYPE_CHECKING:
    from raylm.training.config import ModelConfig


@dataclass
class GPTConfig:
    """The model's shape and design, every option resolved. No defaults here: they live in the recipe schema
    (training.config.ModelConfig, ARCH_DEFAULTS)."""

    vocab_size: int  # padded: see padded_vocab
    n_layer: int
    n_head: int
    n_kv_head: int  # grouped-query attention: each key/value head serves n_head / n_kv_head query heads
    d_model: int
    seq_len: int
    dropout: float
    bias: bool
    norm: str  # layernorm | rmsnorm
    position: str  # learned | rope
    rope_theta: float
    mlp: str  # gelu | swiglu | relu2
    mlp_hidden: int
    qk_norm: bool
    tie_embeddings: bool
    logit_softcap: float | None
    mup_base_width: int | None = None  # muP on, with hyperparameters tuned at this d_model
    document_mask: bool = False  # attention within documents only (they begin at the eot token)
    eot: int | None = None  # the end-of-text token, which begins every document in the shards

    @classmethod
    def from_config(cls, model: ModelConfig, n_vocab: int, eot: int | None = None) -> GPTConfig:
        if model.document_mask and eot is None:
            raise ValueError("document_mask needs the tokenizer's end-of-text token (eot)")
        keys = ("norm", "position", "mlp", "tie_embeddings")
        return cls(
            vocab_size=padded_vocab(n_vocab),
            **{k: getattr(model, k) for k in ("n_layer", "n_head", "d_model", "seq_len", "dropout", "bias", "rope_theta", "qk_norm")},
            **{k: model.resolved(k) for k in keys},
            n_kv_head=model.n_kv_head or model.n_head,
            mlp_hidden=model.mlp_hidden(),
            logit_softcap=model.logit_softcap,
            mup_base_width=model.mup.base_width if model.mup else None,
            document_mask=model.document_mask,
            eot=eot,
        )

    @property
    def width_mult(self) -> float:
        """d_model / base_width under muP, 1 otherwise."""
        return self.d_model / self.mup_base_width if self.mup_base_width else 1.0

    @property
    def head_dim(self) -> int:
        return self.d_model // self.n_head


def padded_vocab(n_vocab: int, multiple: int = 64) -> int:
    """Round the tokenizer's vocabulary up so the embedding and head matmuls tile well."""
    return ((n_vocab + multiple - 1) // multiple) * multiple


def norm(cfg: GPTConfig, dim: int) -> nn.Module:
    """LayerNorm (a bias with cfg.bias) or RMSNorm (a gain only); eps 1e-5 both, as GPT-2's and Llama's."""
    return nn.RMSNorm(dim, eps=1e-5) if cfg.norm == "rmsnorm" else nn.LayerNorm(dim, eps=1e-5, bias=cfg.bias)


def rope_tables(head_dim: int, seq_len: int, theta: float) -> tuple[torch.Tensor, torch.Tensor]:
    """cos and sin (seq_len, head_dim) of rotary positions: dimension pair (i, i + head_dim/2) turns by
    position x theta^(-2i/head_dim), the halves layout of Hugging Face's Llama (its weights need no permutation)."""
    inv_freq = 1.0 / theta ** (torch.arange(0, head_dim, 2, dtype=torch.float32) / head_dim)  # (hs/2,)
    angles = torch.outer(torch.arange(seq_len, dtype=torch.float32), inv_freq)  # (T, hs/2)
    angles = torch.cat((angles, angles), dim=-1)  # (T, hs)
    return angles.cos(), angles.sin()


def rotate(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotary positions on queries or keys x (B, h, T, hs); cos, sin (T, hs) or (B, 1, T, hs)."""
    x1, x2 = x.chunk(2, dim=-1)  # (B, h, T, hs/2) each
    return x * cos.to(x.dtype) + torch.cat((-x2, x1), dim=-1) * sin.to(x.dtype)


class CausalSelfAttention(nn.Module):
    def __init__(self, cfg: GPTConfig):
        super().__init__()
        assert cfg.d_model % cfg.n_head == 0, "d_model must be a multiple of n_head"
        assert cfg.n_head % cfg.n_kv_head == 0, "n_kv_head must divide n_head"
        self.n_head, self.n_kv_head, self.head_dim, self.dropout = cfg.n_head, cfg.n_kv_head, cfg.head_dim, cfg.dropout
        # muP: 1/d_head (queries and keys become correlated as width grows); standard: 1/sqrt(d_head)
        self.scale = 1.0 / cfg.head_dim if cfg.mup_base_width else None
        # queries, keys and values side by side: n_head + 2 n_kv_head heads
        self.qkv = nn.Linear(cfg.d_model, (cfg.n_head + 2 * cfg.n_kv_head) * cfg.head_dim, bias=cfg.bias)
        if cfg.qk_norm:
            self.q_norm, self.k_norm = nn.RMSNorm(cfg.head_dim, eps=1e-5), nn.RMSNorm(cfg.head_dim, eps=1e-5)
        self.qk_norm = cfg.qk_norm
        self.proj = nn.Linear(cfg.d_model, cfg.d_model, bias=cfg.bias)
        self.proj.residual = True  # scaled at init
        self.resid_drop = nn.Dropout(cfg.dropout)

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None = None, rope: tuple | None = None) -> torch.Tensor:
        B, T, C = x.shape  # batch, time, d_model
        hs, kv = self.head_dim, self.n_kv_head
        q, k, v = self.qkv(x).split([self.n_head * hs, kv * hs, kv * hs], dim=2)  # (B, T, nh*hs), (B, T, nkv*hs) x 2
        q = q.view(B, T, self.n_head, hs).transpose(1, 2)  # (B, nh, T, hs)
        k, v = (t.view(B, T, kv, hs).transpose(1, 2) for t in (k, v))  # (B, nkv, T, hs)
        if self.qk_norm:
            q, k = self.q_norm(q), self.k_norm(k)
        if rope is not None:
            q, k = rotate(q, *rope), rotate(k, *rope)
        drop = self.dropout if self.training else 0.0
        # mask: (B, 1, T, T), True where attention is allowed (causal and within a document); else plain causal.
        # GQA: query head h reads key/value head h // (nh / nkv)
        y = F.scaled_dot_product_attention(
            q, k, v, attn_mask=mask, dropout_p=drop, is_causal=mask is None, scale=self.scale, enable_gqa=kv != self.n_head
        )
        y = y.transpose(1, 2).contiguous().view(B, T, C)  # (B, nh, T, hs) -> (B, T, C): heads side by side
        return self.resid_drop(self.proj(y))


class MLP(nn.Module):
    def __init__(self, cfg: GPTConfig):
        super().__init__()
        self.act = cfg.mlp
        # swiglu: the gate's and the up projection's rows side by side in one matmul
        self.fc = nn.Linear(cfg.d_model, (2 if cfg.mlp == "swiglu" else 1) * cfg.mlp_hidden, bias=cfg.bias)
        self.proj = nn.Linear(cfg.mlp_hidden, cfg.d_model, bias=cfg.bias)
        self.proj.residual = True
        self.drop = nn.Dropout(cfg.dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.fc(x)  # (B, T, hidden), swiglu (B, T, 2 hidden)
        if self.act == "swiglu":
            gate, up = h.chunk(2, dim=-1)
            h = F.silu(gate) * up
        elif self.act == "relu2":
            h = F.relu(h).square()
        else:
            h = F.gelu(h)
        return self.drop(self.proj(h))  # (B, T, C)


class Block(nn.Module):
    def __init__(self, cfg: GPTConfig):
        super().__init__()
        self.ln1, self.attn = norm(cfg, cfg.d_model), CausalSelfAttention(cfg)
        self.ln2, self.mlp = norm(cfg, cfg.d_model), MLP(cfg)

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None = None, rope: tuple | None = None) -> torch.Tensor:
        x = x + self.attn(self.ln1(x), mask, rope)
        return x + self.mlp(self.ln2(x))


class GPT(nn.Module):
    def __init__(self, cfg: GPTConfig):
        super().__init__()
        self.cfg = cfg
        self.wte = nn.Embedding(cfg.vocab_size, cfg.d_model)
        self.wpe = nn.Embedding(cfg.seq_len, cfg.d_model) if cfg.position == "learned" else None
        if cfg.position == "rope":  # not saved: the config gives them
            cos, sin = rope_tables(cfg.head_dim, cfg.seq_len, cfg.rope_theta)
            self.register_buffer("rope_cos", cos, persistent=False)
            self.register_buffer("rope_sin", sin, persistent=False)
        self.drop = nn.Dropout(cfg.dropout)
        self.blocks = nn.ModuleList(Block(cfg) for _ in range(cfg.n_layer))
        self.ln_f = norm(cfg, cfg.d_model)
        self.head = nn.Linear(cfg.d_model, cfg.vocab_size, bias=False)
        if cfg.tie_embeddings:
            self.head.weight = self.wte.weight
        self.apply(self._init)

    def _init(self, m: nn.Module) -> None:
        if isinstance(m, nn.Linear) and m is not self.head:
            # hidden weights; muP: variance / width_mult (1/fan_in relative to the base width)
            std = 0.02 / math.sqrt(self.cfg.width_mult)
            if getattr(m, "residual", False):
                std /= math.sqrt(2 * self.cfg.n_layer)
            nn.init.normal_(m.weight, mean=0.0, std=std)
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.Embedding) or m is self.head:  # the input and output matrices: width-independent
            nn.init.normal_(m.weight, mean=0.0, std=0.02)

    def hidden_lr_scale(self) -> float:
        """Learning-rate multiplier of the hidden matrices (muP with Adam: 1/width_mult)."""
        return 1.0 / self.cfg.width_mult

    def num_params(self, non_embedding: bool = True) -> int:
        """Parameters (a tied matrix once); non_embedding: without the position embedding, and without the token
        embedding when it is untied (a lookup, no FLOPs; tied, it counts as the head)."""
        n = sum(p.numel() for p in self.parameters())
        if non_embedding and self.wpe is not None:
            n -= self.wpe.weight.numel()
        if non_embedding and not self.cfg.tie_embeddings:
            n -= self.wte.weight.numel()
        return n

    def forward(
        self,
        idx: torch.Tensor,
        targets: torch.Tensor | None = None,
        loss_mask: torch.Tensor | None = None,
        layout: tuple[torch.Tensor, torch.Tensor] | None = None,
        at: tuple[torch.Tensor, torch.Tensor] | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Logits (B, T, vocab) and, with targets, the mean cross-entropy (over mask==1 positions). `layout`:
        position ids (B, T) and attention mask (B, 1, T, T) given instead of positions()' (downstream scoring
        packs a context and its choices in one row, each choice attending to the context and itself). `at`: (rows,
        positions) index tensors (N,): the logits of those positions only, (N, vocab), the head computed there
        alone (scoring needs a few positions of each row; the head is much of a small model's work)."""
        B, T = idx.shape
        assert T <= self.cfg.seq_len, f"sequence of {T} tokens, model seq_len is {self.cfg.seq_len}"
        pos, mask = self.positions(idx) if layout is None else layout  # (T,) or (B, T); None or (B, 1, T, T)
        x = self.wte(idx)  # (B, T, C)
        rope = None
        if self.wpe is not None:
            x = x + self.wpe(pos)  # + (T, C) or (B, T, C)
        else:  # rotary: cos, sin (T, hs), or (B, 1, T, hs) where positions restart at each document
            rope = tuple(t[pos] if pos.dim() == 1 else t[pos][:, None] for t in (self.rope_cos, self.rope_sin))
        x = self.drop(x)
        for block in self.blocks:
            x = block(x, mask, rope)
        x = self.ln_f(x)
        logits = self.head(x if at is None else x[at])  # (B, T, vocab), or (N, vocab) at the positions `at`
        if self.cfg.mup_base_width:  # muP: output logits / width_mult keep their scale as width grows
            logits = logits / self.cfg.width_mult
        if self.cfg.logit_softcap:  # bounded logits: cap * tanh(logits / cap)
            logits = self.cfg.logit_softcap * torch.tanh(logits / self.cfg.logit_softcap)
        if targets is None:
            return logits, None
        loss = F.cross_entropy(logits.float().reshape(-1, logits.size(-1)), targets.reshape(-1), reduction="none")  # (B*T,)
        if loss_mask is None:
            return logits, loss.mean()
        m = loss_mask.reshape(-1).to(loss.dtype)
        return logits, (loss * m).sum() / m.sum().clamp_min(1)

    def positions(self, idx: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Position ids and attention mask of a batch (B, T). Plain: 0..T-1, causal attention. With
        document_mask: each eot token begins a document; positions restart there and a token attends to the
        earlier tokens of its own document only, so a packed window computes what each document alone would."""
        B, T = idx.shape
        t = torch.arange(T, device=idx.device)  # (T,)
        if not self.cfg.document_mask:
            return t, None
        begins = idx == self.cfg.eot  # (B, T)
        doc = torch.cumsum(begins, dim=1)  # (B, T): which document of the window each token is in
        start = torch.cummax(torch.where(begins, t, 0), dim=1).values  # (B, T): where that document began
        causal = torch.ones(T, T, dtype=torch.bool, device=idx.device).tril()  # (T, T)
        mask = causal & (doc[:, :, None] == doc[:, None, :])  # (B, T, T)
        return t - start, mask[:, None]

    @torch.no_grad()
    def generate(
        self,
        idx: torch.Tensor,
        max_new_tokens: int,
        temperature: float = 1.0,
        top_k: int | None = None,
        generator: torch.Generator | None = None,
        vocab_limit: int | None = None,
        stop_token: int | None = None,
    ) -> torch.Tensor:
        """Append up to `max_new_tokens` sampled tokens (temperature 0: greedy) to idx (B, T); `vocab_limit`
        keeps ids below the tokenizer's real vocabulary (the rows padded onto it decode to nothing);
        generation ends early once every row has produced `stop_token`."""
        done = torch.zeros(idx.size(0), dtype=torch.bool, device=idx.device)
        for _ in range(max_new_tokens):
            logits, _ = self(idx[:, -self.cfg.seq_len :])
            logits = logits[:, -1, :vocab_limit]
            if temperature <= 0:
                nxt = logits.argmax(dim=-1, keepdim=True)
            else:
                logits = logits / temperature
                if top_k is not None:
                    kth = torch.topk(logits, min(top_k, logits.size(-1))).values[:, -1:]
                    logits = logits.masked_fill(logits < kth, float("-inf"))
                nxt = torch.multinomial(F.softmax(logits, dim=-1), 1, generator=generator)
            idx = torch.cat([idx, nxt], dim=1)  # (B, T + 1)
            if stop_token is not None:
                done |= nxt[:, 0] == stop_token
                if bool(done.all()):
                    break
        return idx

    def flops_per_token(self) -> float:
        """Training FLOPs per token: 6N + 12 L H Q T (PaLM appendix B; N without position embeddings)."""
        c = self.cfg
        return 6 * self.num_params() + 12 * c.n_layer * c.n_head * c.head_dim * c.seq_len
