"""GPT-2 124M on one GPU: raylm's Ray Train loop against a plain PyTorch loop of the same model, side by side.

    python benchmarks/gpu_mfu.py [--steps 40] [--skip 10] [--micro 16] [--accum 4] [--fsdp] [--tiny]
                                 [--arch gpt2|llama] [--optim adamw|muon]

Both train GPT-2 small (12 layers, 12 heads, d768, seq 1024, vocabulary 50,304 after padding) with bf16,
torch.compile and fused AdamW on synthetic shards (random tokens: throughput does not depend on the text).
`--arch llama`: the same shape as a Llama block (RMSNorm, rotary positions, SwiGLU of 2,048, 4 key/value heads
for the 12 query heads, untied head); `--optim muon`: Muon for the hidden matrices, AdamW for the rest, on both
sides (raylm's build_optimizer in the plain loop). MFU counts 6N + 12 L H Q T FLOPs a token (the model's
flops_per_token: N holds grouped-query attention's smaller key/value projections and SwiGLU's three matrices):
  - plain: nanoGPT's loop, one process: the model (training/model.py), `torch.compile`, `torch.autocast(bf16)`,
    fused AdamW, random windows of a memory-mapped array, gradient accumulation, clipping; nothing of raylm's
    loop, loader or Ray;
  - raylm: `raylm train`'s TorchTrainer with one GPU worker (`--fsdp`: train.parallelism fsdp, FSDP2 with bf16
    parameters and fp32 reduction).
Prints tokens/s, MFU (against the GPU's bf16 dense peak, training/worker.py: PEAK_FLOPS) and the ratio raylm /
plain. Throughput is timed from step `--skip` (compile and warm-up left out of both). `--tiny`: a 2-layer model
on CPU in fp32 without compile, a smoke test of this script where there is no GPU.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from contextlib import nullcontext
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

GPT2 = {"n_layer": 12, "n_head": 12, "d_model": 768, "seq_len": 1024}
TINY = {"n_layer": 2, "n_head": 2, "d_model": 64, "seq_len": 64}
N_VOCAB, EOT = 50257, 50256  # GPT-2's; padded to 50,304 by the model


def synthetic_shards(root: Path, tokens: int, seed: int = 0) -> str:
    """Random-token shards (train and a small val) with a manifest, as `raylm data` writes them."""
    from raylm.core.manifest import has_manifest, read_manifest, write_manifest
    from raylm.pipelines.shards import ShardWriter

    data = root / "data"
    if has_manifest(str(data)):
        return str(data)
    rng = np.random.default_rng(seed)
    splits = {}
    for split, n in (("train", tokens), ("val", tokens // 50)):
        w = ShardWriter(str(data), split, np.dtype(np.uint16), shard_tokens=50_000_000)
        for lo in range(0, n, 1 << 20):
            doc = rng.integers(0, EOT, min(1 << 20, n - lo)).astype(np.uint32)
            doc[0] = EOT
            w.add(doc, np.array([len(doc)]))
        splits[split] = w.close()
    tok = {"name": "synthetic", "n_vocab": N_VOCAB, "eot": EOT, "sha256": "synthetic"}
    write_manifest(str(data), {"format": "raylm-shards", "version": 1, "dtype": "uint16", "splits": splits, "tokenizer": tok})
    assert read_manifest(str(data)).splits["train"].tokens == tokens
    return str(data)


def plain_loop(model_cfg: dict, data: str, micro: int, accum: int, steps: int, device: str, fast: bool, optim: str = "adamw") -> list[float]:
    """nanoGPT's training loop on the same model; the wall time at the end of each step."""
    import torch

    from raylm.core.manifest import read_manifest
    from raylm.training.config import ModelConfig, OptimConfig
    from raylm.training.model import GPT, GPTConfig
    from raylm.training.optim import build_optimizer

    torch.manual_seed(0)
    man = read_manifest(data)
    arr = np.load(f"{data}/{man.splits['train'].shards[0].path}", mmap_mode="r")
    model = GPT(GPTConfig.from_config(ModelConfig(**model_cfg), N_VOCAB)).to(device)
    if fast:
        model = torch.compile(model)
    if optim == "adamw":
        opt = torch.optim.AdamW(model.parameters(), lr=6e-4, betas=(0.9, 0.95), weight_decay=0.1, fused=device == "cuda")
    else:
        opt = build_optimizer(model, OptimConfig(name=optim, lr=6e-4), device)
    ctx = torch.autocast(device, dtype=torch.bfloat16) if fast else nullcontext()
    T, rng, times = model_cfg["seq_len"], np.random.default_rng(0), []
    for _ in range(steps):
        for _ in range(accum):
            ix = rng.integers(0, len(arr) - T - 1, micro)
            xy = torch.from_numpy(np.stack([arr[i : i + T + 1] for i in ix]).astype(np.int64))
            x, y = (t.pin_memory().to(device, non_blocking=True) if device == "cuda" else t for t in (xy[:, :-1], xy[:, 1:]))
            with ctx:
                _, loss = model(x, y)
            (loss / accum).backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)
        if device == "cuda":
            torch.cuda.synchronize()
        times.append(time.time())
    return times


def raylm_loop(args, model_cfg: dict, data: str, out: Path) -> list[float]:
    """`raylm train` of the same model and batch on one worker; the wall time at the end of each step."""
    from raylm.cluster.recipe import load_config
    from raylm.training.driver import build_trainer
    from raylm.training.metrics import read_metrics

    gpu = not args.tiny
    res = {"GPU": 1, "CPU": 4} if gpu else {"CPU": 1}
    over = [
        f"storage_path={out}",
        f"name=gpu-mfu-{int(time.time())}",
        f"train.model={json.dumps(model_cfg)}",
        f"train.data_path={data}",
        f"train.batch={{micro_batch_size: {args.micro}, global_batch_tokens: {args.micro * args.accum * model_cfg['seq_len']}}}",
        f"train.scaling={{num_workers: 1, use_gpu: {str(gpu).lower()}, resources_per_worker: {json.dumps(res)}}}",
        f"train.max_steps={args.steps}",
        "train.eval.every=1000000000",
        "train.checkpoint.every=1000000000",
        f"train.optim={{name: {args.optim}, lr: 6.0e-4, weight_decay: 0.1, betas: [0.9, 0.95], grad_clip: 1.0}}",
        f"train.parallelism={'fsdp' if args.fsdp else 'ddp'}",
        f"train.compile={'auto' if gpu else 'false'}",
    ]
    cfg = load_config(str(ROOT / "cluster" / "recipes" / "local.yaml"), over)
    result = build_trainer(cfg.train_job()).fit()
    if result.error is not None:
        raise RuntimeError(result.error)
    return [r["time"] for r in read_metrics(cfg.paths.metrics)]


def rate(times: list[float], skip: int, tokens_per_step: int) -> float:
    return (len(times) - skip) * tokens_per_step / (times[-1] - times[skip - 1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--steps", type=int, default=40)
    ap.add_argument("--skip", type=int, default=10, help="steps left out at the start (compile, warm-up)")
    ap.add_argument("--micro", type=int, default=16, help="sequences per micro-step")
    ap.add_argument("--accum", type=int, default=4, help="micro-steps per optimizer step")
    ap.add_argument("--fsdp", action="store_true", help="raylm side with train.parallelism fsdp (FSDP2)")
    ap.add_argument("--tiny", action="store_true", help="a 2-layer model on CPU in fp32: a smoke test without a GPU")
    ap.add_argument("--arch", choices=["gpt2", "llama"], default="gpt2", help="the block design (llama: with 4 key/value heads)")
    ap.add_argument("--optim", choices=["adamw", "muon"], default="adamw")
    ap.add_argument("--out", default=str(ROOT / "bench-out" / "gpu_mfu"))
    args = ap.parse_args()
    out = Path(args.out).resolve()
    out.mkdir(parents=True, exist_ok=True)

    import torch

    from raylm.cluster.recipe import load_config
    from raylm.cluster.runtime import init_ray
    from raylm.training.config import ModelConfig
    from raylm.training.model import GPT, GPTConfig
    from raylm.training.worker import peak_flops

    model_cfg = {**(TINY if args.tiny else GPT2), "arch": args.arch}
    if args.arch == "llama":
        model_cfg["n_kv_head"] = 1 if args.tiny else 4
    if args.optim == "muon" and args.fsdp:
        sys.exit("gpu_mfu: Muon needs whole matrices: train.parallelism fsdp refuses it (drop --fsdp)")
    device = "cpu" if args.tiny else "cuda"
    if device == "cuda" and not torch.cuda.is_available():
        sys.exit("gpu_mfu: no GPU here (use --tiny for a CPU smoke test)")
    tokens_per_step = args.micro * args.accum * model_cfg["seq_len"]
    data = synthetic_shards(out / ("tiny" if args.tiny else "gpt2"), max(tokens_per_step * (args.steps + 2), 4 << 20))
    fpt = GPT(GPTConfig.from_config(ModelConfig(**model_cfg), N_VOCAB)).flops_per_token()
    peak = peak_flops(torch.device("cuda")) if device == "cuda" else None
    print(f"model {model_cfg}, optim {args.optim}, {fpt / 6 / 1e6:.0f}M params (FLOPs/6 per token); {tokens_per_step:,} tokens per step; {device}")

    plain_times = plain_loop(model_cfg, data, args.micro, args.accum, args.steps, device, not args.tiny, args.optim)
    plain = rate(plain_times, args.skip, tokens_per_step)
    init_ray(load_config(None, []).ray)
    ray_rate = rate(raylm_loop(args, model_cfg, data, out), args.skip, tokens_per_step)
    print(f"{'':>8} {'tokens/s':>12} {'MFU':>8}")
    for name, r in (("plain", plain), ("raylm" + (" fsdp" if args.fsdp else ""), ray_rate)):
        print(f"{name:>8} {r:>12,.0f} {f'{r * fpt / peak:.1%}' if peak else 'n/a':>8}")
    print(f"raylm / plain: {ray_rate / plain:.3f}")


if __name__ == "__main__":
    main()
