"""`raylm sample`: text from a trained model, decoded with the run's own tokenizer."""

from __future__ import annotations

import torch

from pipelines.tokenize import load_encoding, run_tokenizer
from training import checkpoint
from training.config import SampleOptions, TrainConfig
from training.model import GPT, GPTConfig


def load_model(path: str, device: str = "cpu") -> tuple[GPT, object, dict]:
    """Model (eval mode), tiktoken encoding and state of the latest checkpoint of a run directory,
    or of a checkpoint directory."""
    ckpt = checkpoint.local_dir(checkpoint.latest(path))
    state, _ = checkpoint.load(ckpt, 0, device)
    train = TrainConfig.model_validate(state["config"]["train"])
    model = GPT(GPTConfig.from_config(train.model, state["tokenizer"]["n_vocab"]))
    model.load_state_dict(state["model"])
    model.to(device).eval()
    enc = load_encoding(run_tokenizer(state["tokenizer"], ckpt))
    return model, enc, state


def sample(model: GPT, enc, opts: SampleOptions, device: str = "cpu") -> list[str]:
    """Continuations of `opts.prompt` (each begins with the end-of-text token, as every training
    document does, so a prompt starts where documents start)."""
    ids = [enc.eot_token] + enc.encode_ordinary(opts.prompt)
    x = torch.tensor([ids] * opts.num_samples, dtype=torch.long, device=device)
    gen = torch.Generator(device=device).manual_seed(opts.seed)
    out = model.generate(x, opts.max_new_tokens, temperature=opts.temperature, top_k=opts.top_k, generator=gen, vocab_limit=enc.n_vocab)
    texts = []
    for row in out.tolist():
        new = row[len(ids) :]
        if enc.eot_token in new:  # a document ended: stop there
            new = new[: new.index(enc.eot_token)]
        texts.append(opts.prompt + enc.decode(new))
    return texts
