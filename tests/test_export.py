"""`raylm export --format hf`: transformers loads the directory and computes raylm's logits
(max abs diff <= 1e-4 on CPU), with biases, without, and under muP; its tokenizer gives tiktoken's ids."""

import pytest
import torch
import transformers  # raylm[hf], in the test extras: the export test must run in CI, never skip

from raylm.cluster.cli import main
from raylm.cluster.recipe import RunConfig
from raylm.core.tokenizer import describe, load_encoding
from raylm.pipelines.rundir import claim
from raylm.pipelines.tokenizers import train_bpe
from raylm.training import checkpoint
from raylm.training.export import EXPORT_MARKER
from raylm.training.model import GPT, GPTConfig
from tests.conftest import sample_docs


@pytest.fixture(scope="module")
def bpe(tmp_path_factory):
    """A small rustbpe tokenizer trained on the sample (the kind `make run` trains)."""
    d = tmp_path_factory.mktemp("tok")
    spec = train_bpe((doc["text"] for doc in sample_docs()[:6]), 600, str(d / "tokenizer.tiktoken"))
    return spec, load_encoding(spec), str(d)


def write_checkpoint(directory, model_cfg: dict, bpe, seed: int = 0, jitter: bool = True, fmt: str = "full") -> GPT:
    """A checkpoint as training writes it (state.pt or, sharded, dcp/ and trainer.pt; meta.json, tokenizer files),
    without Ray: a sharded one as one rank writes it."""
    spec, enc, tok_dir = bpe
    cfg = RunConfig.model_validate({"name": "export-test", "train": {"model": model_cfg}})
    torch.manual_seed(seed)
    model = GPT(GPTConfig.from_config(cfg.train.model, enc.n_vocab))
    if jitter:  # LayerNorm weights and biases away from 1 and 0, so a wrong mapping cannot hide
        with torch.no_grad():
            for name, p in model.named_parameters():
                if name.endswith("bias") or "ln" in name:
                    p.add_(0.1 * torch.randn_like(p))
    state = {"model": model.state_dict(), "step": 7, "config": cfg.model_dump(mode="json"), "tokenizer": describe(spec, enc)}
    directory.mkdir(parents=True, exist_ok=True)
    if fmt == "sharded":
        weights = {"model": state.pop("model")}
        checkpoint.save_sharded(str(directory), 0, 1, weights, state, tokenizer_dir=tok_dir)
    else:
        checkpoint.save(str(directory), 0, state, tokenizer_dir=tok_dir)
    return model.eval()


@pytest.mark.parametrize(
    "model_cfg",
    [
        {"n_layer": 2, "n_head": 4, "d_model": 64, "seq_len": 32, "bias": True},
        {"n_layer": 2, "n_head": 2, "d_model": 64, "seq_len": 32, "bias": False},
        {"n_layer": 2, "n_head": 4, "d_model": 128, "seq_len": 32, "bias": True, "mup": {"base_width": 32}},
        {"n_layer": 2, "n_head": 2, "d_model": 64, "seq_len": 32, "tie_embeddings": False, "mlp_ratio": 3.0},
        {"arch": "llama", "n_layer": 2, "n_head": 4, "n_kv_head": 2, "d_model": 64, "seq_len": 32},
        {"arch": "llama", "n_layer": 2, "n_head": 4, "d_model": 128, "seq_len": 32, "bias": True, "tie_embeddings": True, "rope_theta": 500.0},
        {"arch": "llama", "n_layer": 2, "n_head": 2, "d_model": 64, "seq_len": 32, "mup": {"base_width": 32}},
    ],
    ids=["bias", "no-bias", "mup", "gpt2-untied", "llama-gqa", "llama-bias-tied", "llama-mup"],
)
def test_export_logits_match_transformers(tmp_path, bpe, model_cfg):
    ours = write_checkpoint(tmp_path / "ckpt", model_cfg, bpe)
    out = tmp_path / "hf"
    assert main(["export", str(tmp_path / "ckpt"), "--format", "hf", str(out)]) == 0
    assert (out / "config.json").exists() and (out / "model.safetensors").exists() and (out / "tokenizer.json").exists()

    hf = transformers.AutoModelForCausalLM.from_pretrained(out).eval()
    assert type(hf).__name__ == ("LlamaForCausalLM" if model_cfg.get("arch") == "llama" else "GPT2LMHeadModel")
    enc = bpe[1]
    assert hf.config.vocab_size == enc.n_vocab
    torch.manual_seed(1)
    x = torch.randint(0, enc.n_vocab, (3, 32))
    with torch.no_grad():
        ref, _ = ours(x)
        got = hf(x).logits
    diff = (ref[..., : enc.n_vocab] - got).abs().max().item()
    assert diff <= 1e-4, f"max abs logit diff {diff}"
    assert ref.abs().max().item() > 0.1  # not a vacuous comparison of near-zero logits


@pytest.mark.parametrize("model_cfg", [{"arch": "llama", "n_layer": 2, "n_head": 4, "n_kv_head": 2, "d_model": 64, "seq_len": 32}])
def test_a_sharded_checkpoint_exports_as_hf_and_safetensors_with_the_same_logits(tmp_path, bpe, model_cfg):
    from raylm.training.export import load_safetensors

    ours = write_checkpoint(tmp_path / "ckpt", model_cfg, bpe, fmt="sharded")
    assert (tmp_path / "ckpt" / "dcp" / ".metadata").exists() and not (tmp_path / "ckpt" / "state.pt").exists()
    assert main(["export", str(tmp_path / "ckpt"), "--format", "hf", str(tmp_path / "hf")]) == 0
    assert main(["export", str(tmp_path / "ckpt"), "--format", "safetensors", str(tmp_path / "st")]) == 0
    assert {"model.safetensors", "config.json", "tokenizer.tiktoken"} <= {p.name for p in (tmp_path / "st").iterdir()}
    x = torch.randint(0, bpe[1].n_vocab, (2, 32), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        ref, _ = ours(x)
        hf = transformers.AutoModelForCausalLM.from_pretrained(tmp_path / "hf").eval()(x).logits
        st, _ = load_safetensors(str(tmp_path / "st"))(x)
    assert (ref[..., : bpe[1].n_vocab] - hf).abs().max().item() <= 1e-4
    assert torch.equal(st, ref)  # the same tensors: the same logits, bit for bit


@pytest.mark.parametrize(
    "model_cfg,named",
    [
        ({"arch": "llama", "qk_norm": True}, "qk_norm: true"),
        ({"logit_softcap": 30.0}, "logit_softcap: 30.0"),
        ({"arch": "llama", "mlp": "relu2"}, "mlp: relu2 (needs swiglu)"),
        ({"n_kv_head": 1}, "n_kv_head: 1"),
    ],
)
def test_a_design_transformers_cannot_express_is_refused_naming_it(tmp_path, bpe, capsys, model_cfg, named):
    write_checkpoint(tmp_path / "ckpt", {**SMALL, **model_cfg}, bpe)
    rc, err = _export(capsys, tmp_path / "ckpt", tmp_path / "hf")
    assert rc == 2 and named in err and len(err.strip().splitlines()) == 1, err
    assert not (tmp_path / "hf").exists()  # refused before anything was written


def test_exported_tokenizer_gives_tiktoken_ids(tmp_path, bpe):
    write_checkpoint(tmp_path / "ckpt", {"n_layer": 1, "n_head": 2, "d_model": 32, "seq_len": 16}, bpe)
    out = tmp_path / "hf"
    assert main(["export", str(tmp_path / "ckpt"), str(out)]) == 0
    enc = bpe[1]
    tok = transformers.AutoTokenizer.from_pretrained(out)
    text = "ROMEO: But soft, what light through yonder window breaks?\n  It is the east, and Juliet is the sun!  123"
    assert tok(text)["input_ids"] == enc.encode_ordinary(text)
    assert tok.eos_token_id == enc.eot_token and tok.decode(enc.encode_ordinary(text)) == text
    # the tiktoken copy rebuilds the same encoding in raylm (data.tokenizer.path)
    from raylm.core.tokenizer import TokenizerSpec

    again = load_encoding(TokenizerSpec(name="x", path=str(out / "tiktoken" / "tokenizer.tiktoken")))
    assert again.encode_ordinary(text) == enc.encode_ordinary(text) and again.eot_token == enc.eot_token


def test_export_without_checkpoint_exits_2(tmp_path):
    assert main(["export", str(tmp_path), str(tmp_path / "out")]) == 2


# ---------------------------------------------------------------- where an export may write
SMALL = {"n_layer": 1, "n_head": 2, "d_model": 32, "seq_len": 16}


def _export(capsys, *argv) -> tuple[int, str]:
    rc = main(["export", *map(str, argv)])
    err = capsys.readouterr().err
    assert "Traceback" not in err
    return rc, err


def _tree(d) -> dict:
    return {str(p.relative_to(d)): p.read_bytes() for p in sorted(d.rglob("*")) if p.is_file()}


def test_a_non_empty_directory_is_refused_and_left_as_it_was(tmp_path, bpe, capsys):
    write_checkpoint(tmp_path / "ckpt", SMALL, bpe)
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "config.json").write_text('{"mine": true}')
    for force in ([], ["--force"]):  # --force replaces only an earlier export
        rc, err = _export(capsys, tmp_path / "ckpt", mine, *force)
        assert rc == 2 and f"{mine}: is not empty and is no earlier raylm export" in err and len(err.strip().splitlines()) == 1, err
        assert _tree(mine) == {"config.json": b'{"mine": true}'}


def test_a_file_as_target_is_refused(tmp_path, bpe, capsys):
    write_checkpoint(tmp_path / "ckpt", SMALL, bpe)
    (tmp_path / "out").write_text("a file")
    rc, err = _export(capsys, tmp_path / "ckpt", tmp_path / "out")
    assert rc == 2 and f"{tmp_path / 'out'}: is a file, not a directory" in err and len(err.strip().splitlines()) == 1, err
    assert (tmp_path / "out").read_text() == "a file"


@pytest.mark.parametrize("inside", ["train", "train/checkpoint_000007", ".", "hf"])
def test_nothing_is_written_into_a_run(tmp_path, bpe, capsys, inside):
    """The run's own train/, its checkpoint, the run itself, or a new directory in it: refused even with --force."""
    claim(str(tmp_path / "runs"), "r")  # a run as raylm marks it (.raylm-run)
    run = tmp_path / "runs" / "r"
    write_checkpoint(run / "train" / "checkpoint_000007", SMALL, bpe)
    before = _tree(run)
    rc, err = _export(capsys, run, run / inside, "--force")
    assert rc == 2 and f"lies inside the run {run}" in err and len(err.strip().splitlines()) == 1, err
    assert _tree(run) == before


def test_nothing_is_written_into_the_checkpoint_exported(tmp_path, bpe, capsys):
    write_checkpoint(tmp_path / "ckpt", SMALL, bpe)
    before = _tree(tmp_path / "ckpt")
    rc, err = _export(capsys, tmp_path / "ckpt", tmp_path / "ckpt" / "hf")
    assert rc == 2 and "lies inside what it exports" in err, err
    assert _tree(tmp_path / "ckpt") == before


def test_an_earlier_export_is_replaced_only_with_force(tmp_path, bpe, capsys):
    write_checkpoint(tmp_path / "a", SMALL, bpe, seed=0)
    write_checkpoint(tmp_path / "b", SMALL, bpe, seed=1)
    out = tmp_path / "hf"
    out.mkdir()  # an empty directory is fine
    assert _export(capsys, tmp_path / "a", out)[0] == 0
    first = _tree(out)
    assert EXPORT_MARKER in first
    rc, err = _export(capsys, tmp_path / "b", out)
    assert rc == 2 and f"{out}: holds an earlier raylm export: --force replaces it" in err, err
    assert _tree(out) == first
    assert _export(capsys, tmp_path / "b", out, "--force")[0] == 0
    again = _tree(out)
    assert again.keys() == first.keys() and again["model.safetensors"] != first["model.safetensors"]
    assert str(tmp_path / "b") in again[EXPORT_MARKER].decode()


def test_an_export_stopped_half_way_can_be_replaced(tmp_path, bpe, capsys):
    """The marker is written before anything else: a directory an export left unfinished is its own."""
    write_checkpoint(tmp_path / "ckpt", SMALL, bpe)
    out = tmp_path / "hf"
    out.mkdir()
    (out / EXPORT_MARKER).write_text('{"complete": false}')
    (out / "config.json").write_text("{")  # cut short
    assert _export(capsys, tmp_path / "ckpt", out)[0] == 2
    assert _export(capsys, tmp_path / "ckpt", out, "--force")[0] == 0
    assert transformers.GPT2LMHeadModel.from_pretrained(out) is not None
