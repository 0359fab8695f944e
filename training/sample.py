"""`raylm sample`: text from a trained model, decoded with the run's own tokenizer."""

from __future__ import annotations

import torch

from raylm.training.config import SampleOptions
from raylm.training.model import GPT


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
