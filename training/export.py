"""`raylm export RUN OUT`, from a checkpoint of either format (a sharded one is read without a process group).

`--format hf` (the default): a Hugging Face `transformers` model directory, GPT2LMHeadModel for
a model of learned positions (the gpt2 arch), LlamaForCausalLM for one of rotary positions (the llama arch).
`--format safetensors`: raylm's own tensors by their names in model.py (`model.safetensors`, tied weights
once), `config.json` (the train.model section, vocabulary, end-of-text id) and `tokenizer.tiktoken` (+ `.json`),
for users who load the model without transformers: `load_safetensors(OUT)` rebuilds the GPT.

Either way the weights map one to one, the vocabulary cut back from its padded size to the tokenizer's.
GPT-2 (learned positions, pre-LayerNorm, exact-erf GELU): Linear (out, in) -> GPT-2's Conv1D (in, out),
absent biases as zeros. Llama (RMSNorm, rotary positions in the halves layout, SwiGLU, grouped-query
attention): the fused qkv and gate/up rows split into q/k/v_proj and gate/up_proj. muP's two departures
are folded into the weights: attention 1/d_head (both divide by sqrt(d_head)) into the query rows,
logits / width_mult into the final norm (which feeds only the head). Options neither can express
(QK-norm, logit soft-capping, a design mixing the two) are refused before anything is written. The tokenizer goes
beside it twice: `tokenizer.json` (a `tokenizers` BPE converted from the tiktoken ranks, so
`AutoTokenizer.from_pretrained(OUT)` works) and `tiktoken/tokenizer.tiktoken` (+ `.json`: pattern
and special tokens), which raylm's `data.tokenizer.path` reads.

The target is a new or empty directory, or one an earlier `raylm export` wrote (its `raylm_export.json`,
written first) with `--force`; never a file, a run's directory or anything inside one (check_target).
"""

from __future__ import annotations

import math
import re
from pathlib import Path

import torch

from raylm.core.io import write_json
from raylm.core.paths import RUN_MARKER
from raylm.core.tokenizer import ranks_file, run_tokenizer, save_tiktoken
from raylm.training.checkpoint import load_model
from raylm.training.model import GPT, GPTConfig


class ExportError(ValueError):
    """An export that cannot or must not be written (the target, the tokenizer): exit 2."""


EXPORT_MARKER = "raylm_export.json"  # what marks a directory raylm export wrote (and, once done, what it exported)


def _run_around(out: Path) -> Path | None:
    """The run directory (its .raylm-run marker) that `out` is or lies inside, or None."""
    return next((d for d in (out, *out.parents) if (d / RUN_MARKER).is_file()), None)


def check_target(out: Path, source: str, force: bool) -> None:
    """Refuse a target that is a file, a run's directory or inside one (the checkpoint's own run included),
    or a non-empty directory that no earlier raylm export wrote; an earlier export only with `force`."""
    at = out.resolve()
    if at.exists() and not at.is_dir():
        raise ExportError(f"{out}: is a file, not a directory: give a new or empty directory to export to")
    run, src = _run_around(at), Path(source).resolve()
    if run is not None:
        raise ExportError(f"{out}: lies inside the run {run}: raylm export never writes into a run; give a directory outside it")
    if at == src or src in at.parents:
        raise ExportError(f"{out}: lies inside what it exports ({source}): give a directory outside it")
    if at.is_dir() and any(at.iterdir()):
        if not (at / EXPORT_MARKER).is_file():
            raise ExportError(f"{out}: is not empty and is no earlier raylm export ({EXPORT_MARKER}): give a new or empty directory")
        if not force:
            raise ExportError(f"{out}: holds an earlier raylm export: --force replaces it")


# what the converted tokenizer must split exactly as tiktoken does: contractions, numbers, accents,
# punctuation runs, whitespace runs and newlines, a special token
_PROBE = "ROMEO: It's 2026; I'll pay 1,234,567.89 -- naïve café, Ελληνικά, 日本語!\n\n  Exit   all.\t\r\n<|endoftext|>KING HENRY V:\n"


def _require_transformers():
    try:
        import transformers
    except ImportError:
        raise ExportError("raylm export --format hf needs transformers: pip install 'raylm[hf]'") from None
    return transformers


def unexpressible(c: GPTConfig) -> list[str]:
    """The options of a model that its transformers class (GPT-2 for learned positions, Llama for rotary) cannot express."""
    need = {"norm": "layernorm", "mlp": "gelu"} if c.position == "learned" else {"norm": "rmsnorm", "mlp": "swiglu"}
    bad = [f"{k}: {getattr(c, k)} (needs {v})" for k, v in need.items() if getattr(c, k) != v]
    if c.position == "learned" and c.n_kv_head != c.n_head:
        bad.append(f"n_kv_head: {c.n_kv_head} (GPT-2 has no grouped-query attention)")
    if c.qk_norm:
        bad.append("qk_norm: true")
    if c.logit_softcap is not None:
        bad.append(f"logit_softcap: {c.logit_softcap}")
    return bad


def gpt2_config(model: GPT, n_vocab: int, eot: int):
    """The transformers GPT2Config of a raylm GPT (vocabulary = the tokenizer's, unpadded)."""
    c = model.cfg
    return _require_transformers().GPT2Config(
        vocab_size=n_vocab,
        n_positions=c.seq_len,
        n_embd=c.d_model,
        n_layer=c.n_layer,
        n_head=c.n_head,
        n_inner=c.mlp_hidden,
        activation_function="gelu",  # F.gelu: the exact (erf) form
        resid_pdrop=c.dropout,
        embd_pdrop=c.dropout,
        attn_pdrop=c.dropout,
        layer_norm_epsilon=1e-5,
        scale_attn_weights=True,
        tie_word_embeddings=c.tie_embeddings,
        bos_token_id=eot,
        eos_token_id=eot,
    )


def llama_config(model: GPT, n_vocab: int, eot: int):
    """The transformers LlamaConfig of a raylm GPT of rotary positions (vocabulary = the tokenizer's, unpadded)."""
    c = model.cfg
    return _require_transformers().LlamaConfig(
        vocab_size=n_vocab,
        hidden_size=c.d_model,
        intermediate_size=c.mlp_hidden,
        num_hidden_layers=c.n_layer,
        num_attention_heads=c.n_head,
        num_key_value_heads=c.n_kv_head,
        head_dim=c.head_dim,
        hidden_act="silu",
        max_position_embeddings=c.seq_len,
        rms_norm_eps=1e-5,
        rope_parameters={"rope_type": "default", "rope_theta": c.rope_theta},
        attention_bias=c.bias,
        mlp_bias=c.bias,
        attention_dropout=c.dropout,
        tie_word_embeddings=c.tie_embeddings,
        bos_token_id=eot,
        eos_token_id=eot,
    )


# raylm's parameter names -> GPT2LMHeadModel's ({} = block index; lm_head is tied to wte), as torchtitan's
# state_dict_adapter maps its models to Hugging Face's
_LAYER = {"ln1": "ln_1", "attn.qkv": "attn.c_attn", "attn.proj": "attn.c_proj", "ln2": "ln_2", "mlp.fc": "mlp.c_fc", "mlp.proj": "mlp.c_proj"}
GPT2_NAMES = {
    "wte.weight": "transformer.wte.weight",
    "wpe.weight": "transformer.wpe.weight",
    "ln_f.weight": "transformer.ln_f.weight",
    "ln_f.bias": "transformer.ln_f.bias",
    **{f"blocks.{{}}.{ours}.{p}": f"transformer.h.{{}}.{theirs}.{p}" for ours, theirs in _LAYER.items() for p in ("weight", "bias")},
}
_CONV1D = tuple(f"{theirs}.weight" for ours, theirs in _LAYER.items() if not ours.startswith("ln"))  # GPT-2's Conv1D is (in, out)


def _with_biases(model: GPT) -> dict[str, torch.Tensor]:
    """The model's state dict (float32, CPU) with every bias GPT-2 has: zeros where raylm has none (bias: false)."""
    sd = {k: v.detach().float().cpu() for k, v in model.state_dict().items()}
    for name, module in model.named_modules():
        if isinstance(module, (torch.nn.Linear, torch.nn.LayerNorm)) and name != "head" and f"{name}.bias" not in sd:
            sd[f"{name}.bias"] = torch.zeros(module.weight.shape[0])
    return sd


def _fold_mup(sd: dict[str, torch.Tensor], model: GPT) -> None:
    """muP's departures from GPT-2 and Llama, folded into the weights: attention by 1/d_head (theirs:
    1/sqrt(d_head)) into the query rows; logits / width_mult into the final norm, which feeds only the head."""
    c = model.cfg
    if not c.mup_base_width:
        return
    q_scale = 1.0 / math.sqrt(c.head_dim)
    for key in [k for i in range(c.n_layer) for k in (f"blocks.{i}.attn.qkv.weight", f"blocks.{i}.attn.qkv.bias") if k in sd]:
        sd[key] = sd[key].clone()
        sd[key][: c.d_model] *= q_scale  # the query rows come first
    for key in [k for k in ("ln_f.weight", "ln_f.bias") if k in sd]:
        sd[key] = sd[key] / c.width_mult


def gpt2_state_dict(model: GPT, n_vocab: int) -> dict[str, torch.Tensor]:
    """raylm GPT weights under GPT2LMHeadModel's names (GPT2_NAMES) and layouts, the vocabulary cut back to the tokenizer's."""
    sd = _with_biases(model)
    _fold_mup(sd, model)
    names = {ours: theirs for ours, theirs in GPT2_NAMES.items() if "{}" not in ours}
    names.update({o.format(i): t.format(i) for o, t in GPT2_NAMES.items() if "{}" in o for i in range(model.cfg.n_layer)})
    out = {theirs: sd[ours].t().contiguous() if theirs.endswith(_CONV1D) else sd[ours] for ours, theirs in names.items()}
    out["transformer.wte.weight"] = out["transformer.wte.weight"][:n_vocab].clone()
    if not model.cfg.tie_embeddings:
        out["lm_head.weight"] = sd["head.weight"][:n_vocab].clone()
    return out


def llama_state_dict(model: GPT, n_vocab: int) -> dict[str, torch.Tensor]:
    """raylm GPT weights under LlamaForCausalLM's names: the fused qkv rows split into q, k and v_proj, the
    SwiGLU rows into gate and up_proj; the vocabulary cut back to the tokenizer's."""
    c = model.cfg
    sd = {k: v.detach().float().cpu() for k, v in model.state_dict().items()}
    _fold_mup(sd, model)
    out = {"model.embed_tokens.weight": sd["wte.weight"][:n_vocab].clone(), "model.norm.weight": sd["ln_f.weight"]}
    if not c.tie_embeddings:
        out["lm_head.weight"] = sd["head.weight"][:n_vocab].clone()
    kv = c.n_kv_head * c.head_dim
    for i in range(c.n_layer):
        ours, theirs = f"blocks.{i}.", f"model.layers.{i}."
        out[theirs + "input_layernorm.weight"] = sd[ours + "ln1.weight"]
        out[theirs + "post_attention_layernorm.weight"] = sd[ours + "ln2.weight"]
        for p in ("weight", "bias") if c.bias else ("weight",):
            q, k, v = sd[f"{ours}attn.qkv.{p}"].split([c.d_model, kv, kv])
            gate, up = sd[f"{ours}mlp.fc.{p}"].chunk(2)
            pieces = {"self_attn.q_proj": q, "self_attn.k_proj": k, "self_attn.v_proj": v, "mlp.gate_proj": gate, "mlp.up_proj": up}
            pieces |= {"self_attn.o_proj": sd[f"{ours}attn.proj.{p}"], "mlp.down_proj": sd[f"{ours}mlp.proj.{p}"]}
            out |= {f"{theirs}{name}.{p}": t.contiguous() for name, t in pieces.items()}
    return out


def hf_model(model: GPT, n_vocab: int, eot: int):
    """The transformers model holding a raylm GPT's weights: GPT2LMHeadModel or LlamaForCausalLM."""
    bad = unexpressible(model.cfg)
    target = "GPT-2" if model.cfg.position == "learned" else "Llama"
    if bad:
        raise ExportError(f"transformers' {target} cannot express train.model {'; '.join(bad)}: export needs a gpt2 or llama design")
    transformers = _require_transformers()
    if target == "GPT-2":
        hf, sd = transformers.GPT2LMHeadModel(gpt2_config(model, n_vocab, eot)), gpt2_state_dict(model, n_vocab)
    else:
        hf, sd = transformers.LlamaForCausalLM(llama_config(model, n_vocab, eot)), llama_state_dict(model, n_vocab)
    missing, unexpected = hf.load_state_dict(sd, strict=False)
    if unexpected or set(missing) - {"lm_head.weight"}:
        raise ExportError(f"weight names do not match {target}'s: missing {missing}, unexpected {unexpected}")
    if model.cfg.tie_embeddings:
        hf.tie_weights()
    return hf


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


SAFETENSORS_CONFIG = "config.json"


def export_safetensors(path: str, out_dir: str, force: bool = False) -> dict:
    """Write `out_dir` (model.safetensors, config.json, tokenizer.tiktoken + .json) from the latest checkpoint of
    the run (or the checkpoint) at `path`. Returns a summary."""
    from safetensors.torch import save_model

    out = Path(out_dir)
    check_target(out, path, force)
    model, enc, state, ckpt = load_model(path)
    ranks = ranks_file(run_tokenizer(state["tokenizer"], ckpt))
    out.mkdir(parents=True, exist_ok=True)
    write_json(str(out / EXPORT_MARKER), {"source": ckpt, "complete": False}, indent=None)
    config = {"format": "raylm", "model": state["config"]["train"]["model"], "n_vocab": state["tokenizer"]["n_vocab"]}
    config |= {"eot": state["tokenizer"].get("eot"), "tokenizer": state["tokenizer"]["name"], "step": state["step"], "run": state["config"]["name"]}
    save_model(model, str(out / "model.safetensors"), metadata={"raylm": "model.safetensors of raylm export; see config.json"})
    write_json(str(out / SAFETENSORS_CONFIG), config)
    if ranks is not None:
        save_tiktoken(enc, ranks, str(out / "tokenizer.tiktoken"))
    info = {"source": ckpt, "step": state["step"], "run": state["config"]["name"], "n_vocab": enc.n_vocab, "eot": enc.eot_token}
    info["params"] = sum(p.numel() for p in model.parameters())
    write_json(str(out / EXPORT_MARKER), info)
    return info


def load_safetensors(directory: str, device: str = "cpu") -> GPT:
    """The GPT (eval mode) of a `raylm export --format safetensors` directory."""
    import json

    from safetensors.torch import load_model as load_into

    from raylm.training.config import ModelConfig

    config = json.loads((Path(directory) / SAFETENSORS_CONFIG).read_text())
    model = GPT(GPTConfig.from_config(ModelConfig.model_validate(config["model"]), config["n_vocab"], config.get("eot")))
    load_into(model, str(Path(directory) / "model.safetensors"), device=device)
    return model.to(device).eval()


def export_hf(path: str, out_dir: str, force: bool = False) -> dict:
    """Write `out_dir` (config.json, model.safetensors, tokenizer.json + config, tokenizer.tiktoken)
    from the latest checkpoint of the run (or the checkpoint) at `path`. Returns a summary."""
    out = Path(out_dir)
    check_target(out, path, force)
    _require_transformers()  # before loading anything: the one line saying how to install it
    model, enc, state, ckpt = load_model(path)
    spec = run_tokenizer(state["tokenizer"], ckpt)
    ranks = ranks_file(spec)
    if ranks is None:
        raise ExportError(f"tokenizer {spec.name!r} has no .tiktoken ranks file to convert")
    n_vocab = enc.n_vocab
    hf = hf_model(model, n_vocab, enc.eot_token)
    out.mkdir(parents=True, exist_ok=True)
    # first: an export stopped half-way leaves a directory that --force may replace
    write_json(str(out / EXPORT_MARKER), {"source": ckpt, "complete": False}, indent=None)
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
    write_json(str(out / EXPORT_MARKER), info)
    return info
