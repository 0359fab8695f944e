"""`raylm export RUN --format hf OUT`: a Hugging Face `transformers` GPT-2 model directory.

raylm's GPT is GPT-2's architecture (learned positions, pre-LayerNorm, exact-erf GELU, tied
head), so the weights map one to one: Linear (out, in) -> GPT-2's Conv1D (in, out), absent biases
as zeros, the vocabulary cut back from its padded size to the tokenizer's. muP's two departures
are folded into the weights: attention 1/d_head (GPT-2 divides by sqrt(d_head)) into the query
rows, logits / width_mult into the final LayerNorm (which feeds only the head). The tokenizer goes
beside it twice: `tokenizer.json` (a `tokenizers` BPE converted from the tiktoken ranks, so
`AutoTokenizer.from_pretrained(OUT)` works) and `tiktoken/tokenizer.tiktoken` (+ `.json`: pattern
and special tokens), which raylm's `data.tokenizer.path` reads.
"""

from __future__ import annotations

import json
import math
import re
from pathlib import Path

import torch

from pipelines.tokenize import ranks_file, run_tokenizer, save_tiktoken
from training import checkpoint
from training.model import GPT
from training.sample import load_model


class ExportError(ValueError):
    pass


# what the converted tokenizer must split exactly as tiktoken does: contractions, numbers, accents,
# punctuation runs, whitespace runs and newlines, a special token
_PROBE = "ROMEO: It's 2026; I'll pay 1,234,567.89 -- naïve café, Ελληνικά, 日本語!\n\n  Exit   all.\t\r\n<|endoftext|>KING HENRY V:\n"


def _require_transformers():
    try:
        import transformers
    except ImportError:
        raise ExportError("raylm export --format hf needs transformers: pip install 'raylm[hf]'") from None
    return transformers


def gpt2_config(model: GPT, n_vocab: int, eot: int):
    """The transformers GPT2Config of a raylm GPT (vocabulary = the tokenizer's, unpadded)."""
    c = model.cfg
    return _require_transformers().GPT2Config(
        vocab_size=n_vocab,
        n_positions=c.seq_len,
        n_embd=c.d_model,
        n_layer=c.n_layer,
        n_head=c.n_head,
        n_inner=4 * c.d_model,
        activation_function="gelu",  # F.gelu: the exact (erf) form
        resid_pdrop=c.dropout,
        embd_pdrop=c.dropout,
        attn_pdrop=c.dropout,
        layer_norm_epsilon=1e-5,
        scale_attn_weights=True,
        tie_word_embeddings=True,
        bos_token_id=eot,
        eos_token_id=eot,
    )


def gpt2_state_dict(model: GPT, n_vocab: int) -> dict[str, torch.Tensor]:
    """raylm GPT weights under GPT2LMHeadModel's names and layouts (lm_head is tied to wte)."""
    c = model.cfg
    sd = {k: v.detach().float().cpu() for k, v in model.state_dict().items()}

    def bias(name: str, n: int) -> torch.Tensor:
        return sd.get(name, torch.zeros(n))

    d_head = c.d_model // c.n_head
    # muP attends with 1/d_head, GPT-2 with 1/sqrt(d_head): scale the queries by the ratio
    q_scale = 1.0 / math.sqrt(d_head) if c.mup_base_width else 1.0
    out = {"transformer.wte.weight": sd["wte.weight"][:n_vocab].clone(), "transformer.wpe.weight": sd["wpe.weight"]}
    for i in range(c.n_layer):
        p, h = f"blocks.{i}.", f"transformer.h.{i}."
        qkv_w, qkv_b = sd[p + "attn.qkv.weight"].clone(), bias(p + "attn.qkv.bias", 3 * c.d_model).clone()
        qkv_w[: c.d_model] *= q_scale
        qkv_b[: c.d_model] *= q_scale
        out.update(
            {
                h + "ln_1.weight": sd[p + "ln1.weight"],
                h + "ln_1.bias": bias(p + "ln1.bias", c.d_model),
                h + "attn.c_attn.weight": qkv_w.t().contiguous(),
                h + "attn.c_attn.bias": qkv_b,
                h + "attn.c_proj.weight": sd[p + "attn.proj.weight"].t().contiguous(),
                h + "attn.c_proj.bias": bias(p + "attn.proj.bias", c.d_model),
                h + "ln_2.weight": sd[p + "ln2.weight"],
                h + "ln_2.bias": bias(p + "ln2.bias", c.d_model),
                h + "mlp.c_fc.weight": sd[p + "mlp.fc.weight"].t().contiguous(),
                h + "mlp.c_fc.bias": bias(p + "mlp.fc.bias", 4 * c.d_model),
                h + "mlp.c_proj.weight": sd[p + "mlp.proj.weight"].t().contiguous(),
                h + "mlp.c_proj.bias": bias(p + "mlp.proj.bias", c.d_model),
            }
        )
    # muP divides the logits by width_mult; the final LayerNorm feeds only the head, so scale it
    out["transformer.ln_f.weight"] = sd["ln_f.weight"] / c.width_mult
    out["transformer.ln_f.bias"] = bias("ln_f.bias", c.d_model) / c.width_mult
    return out


def hf_tokenizer(ranks_path: str, enc):
    """A transformers fast tokenizer with the same ids as the tiktoken encoding `enc`."""
    transformers = _require_transformers()
    from tokenizers import AddedToken
    from transformers.convert_slow_tokenizer import TikTokenConverter

    # Oniguruma (the tokenizers regex engine) reads `{1,3}+` as a repeated interval, not as possessive
    # as tiktoken's engine does ("2026" would be one piece, not "202" "6"); nothing follows the interval
    # inside its alternative, so the plain greedy form matches the same
    pattern = re.sub(r"(\{\d+(?:,\d*)?\})\+", r"\1", enc._pat_str)
    tok = TikTokenConverter(vocab_file=ranks_path, pattern=pattern).converted()
    # special tokens get the next free ids; tiktoken's may leave holes (cl100k_base: 100256 is unused)
    for name, idx in sorted(enc._special_tokens.items(), key=lambda kv: kv[1]):
        while tok.get_vocab_size() < idx:
            tok.add_special_tokens([AddedToken(f"<|raylm_unused_{tok.get_vocab_size()}|>", special=True)])
        tok.add_special_tokens([AddedToken(name, special=True)])
        if tok.token_to_id(name) != idx:
            raise ExportError(f"tokenizer: {name} would get id {tok.token_to_id(name)}, tiktoken has {idx}")
    eot = enc.decode([enc.eot_token])
    fast = transformers.PreTrainedTokenizerFast(tokenizer_object=tok, bos_token=eot, eos_token=eot, unk_token=None, model_max_length=None)
    got, want = fast(_PROBE)["input_ids"], enc.encode(_PROBE, allowed_special="all")
    if got != want:
        raise ExportError(f"the converted tokenizer disagrees with tiktoken on {_PROBE!r}: {got} vs {want}")
    return fast


def export_hf(path: str, out_dir: str) -> dict:
    """Write `out_dir` (config.json, model.safetensors, tokenizer.json + config, tokenizer.tiktoken)
    from the latest checkpoint of the run (or the checkpoint) at `path`. Returns a summary."""
    transformers = _require_transformers()
    ckpt = checkpoint.local_dir(checkpoint.latest(path))
    model, enc, state = load_model(ckpt)
    spec = run_tokenizer(state["tokenizer"], ckpt)
    ranks = ranks_file(spec)
    if ranks is None:
        raise ExportError(f"tokenizer {spec.name!r} has no .tiktoken ranks file to convert")
    n_vocab = enc.n_vocab
    hf = transformers.GPT2LMHeadModel(gpt2_config(model, n_vocab, enc.eot_token))
    missing, unexpected = hf.load_state_dict(gpt2_state_dict(model, n_vocab), strict=False)
    if unexpected or set(missing) - {"lm_head.weight"}:
        raise ExportError(f"weight names do not match GPT-2's: missing {missing}, unexpected {unexpected}")
    hf.tie_weights()
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    hf.save_pretrained(out, safe_serialization=True)
    hf_tokenizer(ranks, enc).save_pretrained(out)
    # and as raylm reads it (data.tokenizer.path); in a folder, as its .json sidecar would be tokenizer.json
    save_tiktoken(enc, ranks, str(out / "tiktoken" / "tokenizer.tiktoken"))
    info = {
        "source": ckpt,
        "step": state["step"],
        "run": state["config"]["name"],
        "n_vocab": n_vocab,
        "eot": enc.eot_token,
        "params": sum(p.numel() for p in hf.parameters()),
    }
    (out / "raylm_export.json").write_text(json.dumps(info, indent=1) + "\n")
    return info
