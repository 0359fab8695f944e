"""Downstream evaluation throughput, side by side in one run on the same model, tasks and cores: raylm's
distributed eval (`raylm eval --tasks --workers 2`: a Ray Data actor pool, one CPU each), lm-evaluation-harness
through raylm's bridge (`--model raylm`), and lm-eval's own `hf` model on the `raylm export` of the checkpoint.

    python benchmarks/eval_throughput.py [--run runs/shakespeare-local] [--examples 900] [--repeat 2]

The model is a run's latest checkpoint (`make run` makes runs/shakespeare-local); the tasks are built from its val
split by pipelines/downstream.py (next-line, word-order, next-line-cloze, up to `--examples` each) and handed to
lm-eval as local tasks (harness.write_lm_eval_tasks). Each method runs in a fresh process, `--repeat` rounds in
alternating order (this VM's speed drifts), and the best round counts. Seconds are from the call to its results:
model loading, tokenization and scoring for every method, and for raylm on Ray the actors' start (Ray itself is
started before the clock, as on a cluster; its start is printed apart). lm-eval's `hf` model runs at its default
batch size (1) and at raylm's (32 sequences). Every method's accuracies are printed too: they must agree.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

METHODS = ("raylm-ray-2", "raylm-1-process", "lm-eval-bridge", "lm-eval-hf-b1", "lm-eval-hf-b32")


def _accs(results: dict, prefix: str = "") -> dict:
    return {k.removeprefix("raylm-"): round(v["acc,none"] if "acc,none" in v else v["acc"], 6) for k, v in results.items() if k.startswith(prefix)}


def one(method: str, run: str, work: Path) -> dict:
    """Run one method here (a fresh process); its seconds, examples and accuracies."""
    os.environ.update(HF_DATASETS_OFFLINE="1", HF_HUB_OFFLINE="1", HF_DATASETS_CACHE=str(work / "hf-datasets"), TOKENIZERS_PARALLELISM="false")
    out: dict = {"method": method}
    if method.startswith("raylm"):
        from raylm.training.tasks import eval_tasks

        workers = 2 if method == "raylm-ray-2" else 0
        if workers:
            import ray

            t0 = time.perf_counter()
            ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
            out["ray_start_s"] = time.perf_counter() - t0
        t0 = time.perf_counter()
        res = eval_tasks(run, [str(work / "tasks")], str(work / f"out-{method}"), workers=workers)
        out["seconds"] = time.perf_counter() - t0
        out["examples"] = sum(r["examples"] for r in res["tasks"].values())
        out["acc"] = {k: round(v["acc"], 6) for k, v in res["tasks"].items()}
        return out
    import lm_eval
    from lm_eval.tasks import TaskManager

    import raylm.training.harness  # noqa: F401 - registers `raylm`

    names = sorted(p.name for p in (work / "lm-eval").iterdir())
    if method == "lm-eval-bridge":
        model, args, batch = "raylm", f"run={run}", 32
    else:
        model, args, batch = "hf", f"pretrained={work / 'hf'},dtype=float32", 1 if method.endswith("b1") else 32
    manager = TaskManager(include_path=str(work / "lm-eval"))
    t0 = time.perf_counter()
    res = lm_eval.simple_evaluate(model=model, model_args=args, tasks=names, task_manager=manager, batch_size=batch, device="cpu")
    out["seconds"] = time.perf_counter() - t0
    out["examples"] = sum(res["n-samples"][n]["effective"] for n in names)
    out["acc"] = _accs(res["results"])
    return out


def prepare(run: str, work: Path, examples: int) -> None:
    """The tasks (from the run's val split), their lm-eval form, and the hf export, once."""
    from raylm.pipelines.downstream import build
    from raylm.training.checkpoint import latest
    from raylm.training.export import export_hf
    from raylm.training.harness import write_lm_eval_tasks

    ckpt = latest(run)
    data = json.loads(Path(ckpt, "meta.json").read_text())["run_dir"] + "/data"
    if not (work / "tasks").exists():
        build(data, str(work / "tasks"), n=examples)
        write_lm_eval_tasks([str(work / "tasks")], str(work / "lm-eval"))
    if not (work / "hf" / "config.json").exists():
        export_hf(run, str(work / "hf"), force=True)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--run", default=str(ROOT / "runs" / "shakespeare-local"))
    p.add_argument("--examples", type=int, default=900, help="examples per task (at most what the val split gives)")
    p.add_argument("--repeat", type=int, default=2)
    p.add_argument("--out", default=str(ROOT / "bench-out" / "eval"))
    p.add_argument("--methods", nargs="+", default=list(METHODS), choices=METHODS)
    p.add_argument("--one", default=None, help=argparse.SUPPRESS)  # internal: run one method in this process
    a = p.parse_args()
    work = Path(a.out).resolve()
    if a.one:
        print("RESULT " + json.dumps(one(a.one, a.run, work)), flush=True)
        return 0
    if not Path(a.run).exists():
        print(f"eval_throughput: {a.run}: no such run (make run trains runs/shakespeare-local)", file=sys.stderr)
        return 2
    work.mkdir(parents=True, exist_ok=True)
    prepare(a.run, work, a.examples)
    best: dict[str, dict] = {}
    for r in range(a.repeat):
        for m in a.methods if r % 2 == 0 else a.methods[::-1]:
            cmd = [sys.executable, __file__, "--one", m, "--run", a.run, "--out", str(work)]
            res = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT)
            line = next((ln for ln in res.stdout.splitlines() if ln.startswith("RESULT ")), None)
            if res.returncode or line is None:
                print(f"{m}: failed (exit {res.returncode}):\n{res.stderr[-3000:]}", file=sys.stderr)
                return 1
            got = json.loads(line[7:])
            print(f"round {r + 1} {m}: {got['examples']} examples in {got['seconds']:.2f} s", flush=True)
            if m not in best or got["seconds"] < best[m]["seconds"]:
                best[m] = got
    print(f"\n{'method':<18} {'examples':>8} {'seconds':>8} {'examples/s':>11} {'vs hf b1':>9} {'vs hf b32':>10}  acc per task")
    rates = {m: b["examples"] / b["seconds"] for m, b in best.items()}
    for m in a.methods:
        b = best[m]
        vs = [f"{rates[m] / rates[ref]:.2f}x" if ref in rates else "" for ref in ("lm-eval-hf-b1", "lm-eval-hf-b32")]
        extra = f"  (Ray start {b['ray_start_s']:.1f} s, not counted)" if "ray_start_s" in b else ""
        print(f"{m:<18} {b['examples']:>8} {b['seconds']:>8.2f} {rates[m]:>11.1f} {vs[0]:>9} {vs[1]:>10}  {b['acc']}{extra}")
    agree = len({json.dumps(b["acc"], sort_keys=True) for b in best.values()}) == 1
    print(f"\naccuracies agree across methods: {agree}")
    return 0 if agree else 1


if __name__ == "__main__":
    sys.exit(main())
