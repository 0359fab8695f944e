"""Quality scoring throughput: raylm's fastText step against datatrove's FastTextClassifierFilter, on the same
documents, model and core, in one sitting.

    pip install -e ".[bench,quality]"                                   # datatrove; floret (trains the classifier)
    pip install --target .bench/fasttext --no-deps fasttext-numpy2-wheel  # the fastText datatrove imports (below)
    python benchmarks/quality_throughput.py [--docs 20000] [--rounds 3]

The classifier: raylm's own (`pipelines/quality.py`: the plays' lines against web boilerplate), trained once
into bench-out/quality/, in fastText's format, so both sides load the same file. The documents: --docs of about
3 KB each (FineWeb's mean is near that), scene-sized pieces of the sample mixed with boilerplate lines in random
proportions. One process each, one core:
  raylm      pipelines.quality.Classify, the data stage's step, over chunks of 256 documents as the processing
             tasks run it (score into the chunk's column, min_score 0.5); fasttext-predict's binding
  datatrove  FastTextClassifierFilter(keep_labels=("hq", 0.5), newline_replacement=" ").filter on each Document
             (a space for a newline, as raylm reads a document: the same words, so the same scores), in a subprocess:
             datatrove imports `fasttext` (it asks for fasttext-numpy2-wheel), which would replace
             fasttext-predict's module of the same name in raylm's environment, so it runs with
             .bench/fasttext first on its path
The two alternate --rounds times (this machine's speed drifts); each side's best round is reported, docs/s per
core, and the ratio raylm / datatrove. Both must agree on which documents pass (printed).

Then checkpoint perplexity scoring (`--checkpoint RUN`, default runs/shakespeare-local, `make run`'s model): the
data stage's Ray Data pipeline of PerplexityScorer actors (training/docscore.py) over --ppl-docs of the same
documents, on a local Ray instance of --cpus CPUs (or the GPUs it finds, with --device cuda), with 1 actor and with
2, alternating --rounds times: docs/s (best round, actor start-up included: the stage pays it too) and the
ratio of 2 actors to 1.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks.corpus import pieces  # noqa: E402

WEB = (
    "cookies privacy policy accept all settings manage consent subscribe newsletter sign in log out account home menu "
    "search cart checkout shipping returns contact us about careers press terms of use copyright all rights reserved "
    "follow us share tweet facebook instagram download app skip to content next page previous page sitemap help faq"
).split()

DATATROVE = """
import json, sys, time
from datatrove.data import Document
from datatrove.pipeline.filters import FastTextClassifierFilter
model, docs_path = sys.argv[1], sys.argv[2]
texts = json.load(open(docs_path))
f = FastTextClassifierFilter(model_url=model, keep_labels=("hq", 0.5), newline_replacement=" ")
docs = [Document(text=t, id=str(i)) for i, t in enumerate(texts)]
f.filter(docs[0])  # loads the model
t0 = time.perf_counter()
passed = [bool(f.filter(d)) for d in docs]
print(json.dumps({"seconds": time.perf_counter() - t0, "passed": sum(passed), "which": [i for i, p in enumerate(passed) if p]}))
"""


def boilerplate(rng: random.Random) -> str:
    return " ".join(rng.choice(WEB) for _ in range(rng.randint(5, 14)))


def documents(n: int, seed: int = 0) -> list[str]:
    rng, base = random.Random(seed), [p["text"] for p in pieces()]
    out = []
    for _ in range(n):
        share, parts, size = rng.random(), [], 0
        while size < 3000:
            part = rng.choice(base)[:600] if rng.random() < share else boilerplate(rng)
            parts.append(part)
            size += len(part) + 1
        out.append("\n".join(parts))
    return out


def classifier(out: Path) -> str:
    """raylm's classifier of the plays' lines against boilerplate, trained once into `out`."""
    from raylm.pipelines.config import FastTextTrainConfig
    from raylm.pipelines.quality import CLASSIFIER, train_classifier

    model = out / CLASSIFIER
    if not model.exists():
        rng = random.Random(1)
        lines = [ln.strip() for p in pieces() for ln in p["text"].splitlines() if len(ln.strip()) > 30][:3000]
        out.mkdir(parents=True, exist_ok=True)
        (out / "hq.txt").write_text("\n".join(lines) + "\n")
        (out / "lq.txt").write_text("\n".join(boilerplate(rng) for _ in range(3000)) + "\n")
        cfg = FastTextTrainConfig(labels={"hq": [str(out / "hq.txt")], "lq": [str(out / "lq.txt")]}, bucket=200_000)
        rep = train_classifier(cfg, str(out))
        print(f"classifier: held-out accuracy {rep['accuracy']:.3f} ({rep['trained_on']:,} trained on)")
    return str(model)


def raylm_round(model: str, texts: list[str]) -> tuple[float, list[int]]:
    """Seconds for raylm's Classify step over the documents, 256 at a time; the indexes that pass."""
    from raylm.pipelines.config import DataConfig
    from raylm.pipelines.quality import Classify
    from raylm.pipelines.stage import Block, Chunk

    cfg = DataConfig.model_validate({"quality": {"fasttext": {"model": model, "label": "hq", "min_score": 0.5}}})
    step = Classify(cfg)
    step.assets = {"fasttext": model}
    n, passed = len(texts), []
    block = Block(ids=[str(i) for i in range(n)], prompt_chars=[None] * n, status=["kept"] * n, hashes=None, split=None, sig=None)
    step(Chunk(block, [0], [texts[0]]))  # loads the model
    block.status = ["kept"] * n
    t0 = time.perf_counter()
    for lo in range(0, n, 256):
        chunk = Chunk(block, list(range(lo, min(lo + 256, n))), texts[lo : lo + 256])
        step(chunk)
        passed += chunk.rows
    return time.perf_counter() - t0, passed


def datatrove_round(model: str, docs_path: Path, fasttext_dir: Path) -> tuple[float, list[int]]:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(fasttext_dir), os.environ.get("PYTHONPATH", "")])}
    r = subprocess.run([sys.executable, "-c", DATATROVE, model, str(docs_path)], env=env, capture_output=True, text=True, check=False)
    if r.returncode != 0:
        raise SystemExit(f"datatrove's run failed:\n{r.stderr[-2000:]}")
    got = json.loads(r.stdout.strip().splitlines()[-1])
    return got["seconds"], got["which"]


def perplexity_round(checkpoint: str, texts: list[str], actors: int, device: str) -> float:
    """Seconds for the perplexity stage's actor pool to score the documents."""
    import ray.data as rd

    from raylm.training.docscore import PerplexityScorer

    ds = rd.from_items([{"uid": i, "text": t} for i, t in enumerate(texts)], override_num_blocks=max(8, 2 * actors))
    gpu = device == "cuda"
    ds = ds.map_batches(
        PerplexityScorer,
        fn_constructor_args=(checkpoint, device, 16),
        batch_size=64,
        batch_format="numpy",
        compute=rd.ActorPoolStrategy(size=actors),
        num_cpus=0 if gpu else 1,
        num_gpus=1 if gpu else 0,
    )
    t0 = time.perf_counter()
    n = sum(len(b["uid"]) for b in ds.iter_batches(batch_size=None, batch_format="numpy"))
    assert n == len(texts)
    return time.perf_counter() - t0


def perplexity(args, texts: list[str]) -> None:
    import ray

    ray.init(num_cpus=args.cpus, include_dashboard=False, log_to_driver=False)
    ray.data.DataContext.get_current().enable_progress_bars = False
    texts = texts[: args.ppl_docs]
    print(f"perplexity scoring under {args.checkpoint} ({args.device}), {len(texts):,} documents, Ray with {args.cpus} CPUs")
    best = {1: float("inf"), 2: float("inf")}
    for k in range(args.rounds):
        for actors in (1, 2):
            seconds = perplexity_round(args.checkpoint, texts, actors, args.device)
            best[actors] = min(best[actors], seconds)
            print(f"  round {k + 1} {actors} actor(s) {len(texts) / seconds:8,.1f} docs/s  ({seconds:.1f} s)")
    rate = {a: len(texts) / s for a, s in best.items()}
    print(f"perplexity scoring, docs/s (best of {args.rounds}): 1 actor {rate[1]:,.1f}, 2 actors {rate[2]:,.1f}; ratio 2/1: {rate[2] / rate[1]:.2f}x")
    ray.shutdown()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--docs", type=int, default=20_000)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--out", default=str(ROOT / "bench-out"))
    ap.add_argument("--fasttext-dir", default=str(ROOT / ".bench" / "fasttext"), help="fasttext-numpy2-wheel, pip install --target")
    ap.add_argument("--checkpoint", default=str(ROOT / "runs" / "shakespeare-local"), help="a raylm run or checkpoint for perplexity scoring")
    ap.add_argument("--ppl-docs", type=int, default=600)
    ap.add_argument("--cpus", type=int, default=os.cpu_count() or 2)
    ap.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    ap.add_argument("--skip-fasttext", action="store_true")
    args = ap.parse_args()
    fasttext_dir = Path(args.fasttext_dir)
    if args.skip_fasttext:
        perplexity(args, documents(args.ppl_docs))
        return
    if not (fasttext_dir / "fasttext").is_dir():
        raise SystemExit(f"{fasttext_dir}: no fasttext module; pip install --target {fasttext_dir} --no-deps fasttext-numpy2-wheel")
    out = Path(args.out)
    model = classifier(out / "quality")
    texts = documents(args.docs)
    docs_path = out / "quality" / "docs.json"
    docs_path.write_text(json.dumps(texts))
    mb = sum(len(t.encode()) for t in texts) / 1e6
    each = 1e6 * mb / len(texts)
    print(f"{len(texts):,} documents, {mb:.1f} MB ({each:,.0f} bytes each); one process, one core each, {args.rounds} alternating rounds")
    best = {"raylm": float("inf"), "datatrove": float("inf")}
    which = {}
    for k in range(args.rounds):
        for name, fn in (("raylm", lambda: raylm_round(model, texts)), ("datatrove", lambda: datatrove_round(model, docs_path, fasttext_dir))):
            seconds, which[name] = fn()
            best[name] = min(best[name], seconds)
            print(f"  round {k + 1} {name:9s} {len(texts) / seconds:10,.0f} docs/s  ({seconds:.2f} s, {len(which[name]):,} pass)")
    rate = {name: len(texts) / s for name, s in best.items()}
    print(f"fastText scoring, docs/s per core (best of {args.rounds}): raylm {rate['raylm']:,.0f}, datatrove {rate['datatrove']:,.0f}")
    print(f"ratio raylm / datatrove: {rate['raylm'] / rate['datatrove']:.2f}x")
    same = set(which["raylm"]) == set(which["datatrove"])
    print(
        f"the same documents pass (score >= 0.5) on both: {same}"
        + ("" if same else f" ({len(set(which['raylm']) ^ set(which['datatrove']))} differ)")
    )


if __name__ == "__main__":
    main()
