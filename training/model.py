"""A GPT-style decoder in one readable file (after nanoGPT's model.py): no framework inside.

Token + learned position embeddings, pre-LayerNorm blocks, causal self-attention through
F.scaled_dot_product_attention (flash / memory-efficient kernels where available), GELU MLP,
output head tied to the token embedding, dropout, optional biases, GPT-2 initialization with
residual projections scaled by 1/sqrt(2 * n_layer). Optional muP (`mup_base_width`): hidden init
variance / width_mult, attention scale 1/d_head, logits / width_mult; the hidden learning rate
/ width_mult is the optimizer's part (training/optim.py, `hidden_lr_scale`). How it is
parallelized lives elsewhere.
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
    """The model's shape. No defaults here: they live in the recipe schema (training.config.ModelConfig)."""

    vocab_size: int  # padded: see padded_vocab
    n_layer: int
    n_head: int
    d_model: int
    seq_len: int
    dropout: float
    bias: bool
    mup_base_width: int | None = None  # muP on, with hyperparameters tuned at this d_model
    document_mask: bool = False  # attention within documents only (they begin at the eot token)
    eot: int | None = None  # the end-of-text token, which begins every document in the shards

    @classmethod
    def from_config(cls, model: ModelConfig, n_vocab: int, eot: int | None = None) -> GPTConfig:
        d = model.model_dump()
        mup = d.pop("mup")
        if d["document_mask"] and eot is None:
            raise ValueError("document_mask needs the tokenizer's end-of-text token (eot)")
        return cls(vocab_size=padded_vocab(n_vocab), mup_base_width=mup["base_width"] if mup else None, eot=eot, **d)

    @property
    def width_mult(self) -> float:
        """d_model / base_width under muP, 1 otherwise."""
        return self.d_model / self.mup_base_width if self.mup_base_width else 1.0


def padded_vocab(n_vocab: int, multiple: int = 64) -> int:
    """Round the tokenizer's vocabulary up so the embedding and head matmuls tile well."""
    return ((n_vocab + multiple - 1) // multiple) * multiple


class CausalSelfAttention(nn.Module):
    def __init__(self, cfg: GPTConfig):
        super().__init__()
        assert cfg.d_model % cfg.n_head == 0, "d_model must be a multiple of n_head"
        self.n_head, self.dropout = cfg.n_head, cfg.dropout
        # muP: 1/d_head (queries and keys become correlated as width grows); standard: 1/sqrt(d_head)
        self.scale = 1.0 / (cfg.d_model // cfg.n_head) if cfg.mup_base_width else None
        self.qkv = nn.Linear(cfg.d_model, 3 * cfg.d_model, bias=cfg.bias)
        self.proj = nn.Linear(cfg.d_model, cfg.d_model, bias=cfg.bias)
        self.proj.residual = True  # scaled at init
        self.resid_drop = nn.Dropout(cfg.dropout)

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        B, T, C = x.shape  # batch, time, d_model
        q, k, v = self.qkv(x).split(C, dim=2)  # each (B, T, C)
        q, k, v = (t.view(B, T, self.n_head, C // self.n_head).transpose(1, 2) for t in (q, k, v))  # (B, nh, T, hs)
        drop = self.dropout if self.training else 0.0
        # mask: (B, 1, T, T), True where attention is allowed (causal and within a document); else plain causal
        y = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=drop, is_causal=mask is None, scale=self.scale)
        y = y.transpose(1, 2).contiguous().view(B, T, C)  # (B, nh, T, hs) -> (B, T, C): heads side by side
        return self.resid_drop(self.proj(y))


class MLP(nn.Module):
    def __init__(self, cfg: GPTConfig):
        super().__init__()
        self.fc = nn.Linear(cfg.d_model, 4 * cfg.d_model, bias=cfg.bias)
        self.proj = nn.Linear(4 * cfg.d_model, cfg.d_model, bias=cfg.bias)
        self.proj.residual = True
        self.drop = nn.Dropout(cfg.dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.drop(self.proj(F.gelu(self.fc(x))))


class Block(nn.Module):
    def __init__(self, cfg: GPTConfig):
        super().__init__()
        self.ln1, self.attn = nn.LayerNorm(cfg.d_model, bias=cfg.bias), CausalSelfAttention(cfg)
        self.ln2, self.mlp = nn.LayerNorm(cfg.d_model, bias=cfg.bias), MLP(cfg)

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        x = x + self.attn(self.ln1(x), mask)
        return x + self.mlp(self.ln2(x))


class GPT(nn.Module):
    def __init__(self, cfg: GPTConfig):
        super().__init__()
        self.cfg = cfg
        self.wte = nn.Embedding(cfg.vocab_size, cfg.d_model)
        self.wpe = nn.Embedding(cfg.seq_len, cfg.d_model)
        self.drop = nn.Dropout(cfg.dropout)
        self.blocks = nn.ModuleList(Block(cfg) for _ in range(cfg.n_layer))
        self.ln_f = nn.LayerNorm(cfg.d_model, bias=cfg.bias)
        self.head = nn.Linear(cfg.d_model, cfg.vocab_size, bias=False)
        self.head.weight = self.wte.weight  # tied
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
        elif isinstance(m, nn.Embedding) or m is self.head:  # the tied input/output matrix: width-independent
            nn.init.normal_(m.weight, mean=0.0, std=0.02)

    def hidden_lr_scale(self) -> float:
        """Learning-rate multiplier of the hidden matrices (muP with Adam: 1/width_mult)."""
        return 1.0 / self.cfg.width_mult

    def num_params(self, non_embedding: bool = True) -> int:
        n = sum(p.numel() for p in self.parameters())
        return n - self.wpe.weight.numel() if non_embedding else n

    def forward(
        self, idx: torch.Tensor, targets: torch.Tensor | None = None, loss_mask: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Logits (B, T, vocab) and, with targets, the mean cross-entropy (over mask==1 positions)."""
        B, T = idx.shape
        assert T <= self.cfg.seq_len, f"sequence of {T} tokens, model seq_len is {self.cfg.seq_len}"
        pos, mask = self.positions(idx)  # (T,) or (B, T); None or (B, 1, T, T)
        x = self.drop(self.wte(idx) + self.wpe(pos))  # (B, T, C) + (T, C) or (B, T, C)
        for block in self.blocks:
            x = block(x, mask)
        logits = self.head(self.ln_f(x))  # (B, T, vocab)
        if self.cfg.mup_base_width:  # muP: output logits / width_mult keep their scale as width grows
            logits = logits / self.cfg.width_mult
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
        return 6 * self.num_params() + 12 * c.n_layer * c.n_head * (c.d_model // c.n_head) * c.seq_len
