"""Checkpoint saves of a large model on 2 CPU workers under FSDP2: full (gathered on rank 0) against sharded
(torch.distributed.checkpoint, each rank its own part), synchronous and asynchronous, side by side in one run.

    python benchmarks/checkpoint_speed.py [--layers 24 --d-model 1024] [--repeat 2] [--out bench-out/ckpt]

For each mode, in turn (`--repeat` rounds, alternating), two fresh processes on a gloo process group
(torch.multiprocessing, no Ray; fresh, so that one mode's memory never counts in another's peak), each the Trainer
a Ray Train worker runs with one CPU thread, train one step (so the AdamW state exists), then twice save and train
one more step, each rank into its own directory as on a Ray Train worker: the first save of a run, then a later one
(an asynchronous copy reuses the first one's staging buffers). The modes: full, sharded, sharded-async (its staging
`copy`, GPU's default: the state copied to host memory) and sharded-async-in-place (`in_place`, CPU's default: no
copy; the step after the save waits before its optimizer update until the part is written). Per mode it prints, the
best round's:
- blocked: seconds the training loop waits for the save (sync: the whole save; async: the call that begins it, plus,
  in place, the next step's wait before its update);
- complete: seconds until this rank's part is written (async: the background write's end);
- step: seconds of the step trained after the save (the write of an asynchronous save competes with it for the cores);
- peak RSS of rank 0 and of rank 1 over both saves and steps (sampled every 5 ms), and rank 0's RSS before them;
- bytes written, both ranks together.
A full save cannot be asynchronous (it gathers first): that row is not offered. The model is the gpt2 arch
(12 L d^2 parameters in the blocks: 24 x 1024 gives 302M) over a vocabulary of 100.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import socket
import sys
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks.corpus import random_shards  # noqa: E402

MODES = ("full", "sharded", "sharded-async", "sharded-async-in-place")
ASYNC = {"sharded-async": "copy", "sharded-async-in-place": "in_place"}  # the mode's train.checkpoint.staging


def _port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class PeakRSS:
    """This process's peak resident memory while the context is open, sampled every 5 ms."""

    def __enter__(self):
        import psutil

        self.proc, self.peak, self.stop = psutil.Process(), 0, threading.Event()
        self.before = self.proc.memory_info().rss
        self.thread = threading.Thread(target=self._sample, daemon=True)
        self.thread.start()
        return self

    def _sample(self):
        while not self.stop.is_set():
            self.peak = max(self.peak, self.proc.memory_info().rss)
            time.sleep(0.005)

    def __exit__(self, *exc):
        self.stop.set()
        self.thread.join()
        self.peak = max(self.peak, self.proc.memory_info().rss)


def _trainer(root: str, rank: int, world: int, layers: int, d_model: int):
    import torch

    from raylm.training.config import TrainJob
    from raylm.training.worker import Trainer

    model = {"arch": "gpt2", "n_layer": layers, "n_head": d_model // 64, "d_model": d_model, "seq_len": 64}
    t = {"model": model, "batch": {"micro_batch_size": 1, "global_batch_tokens": 64 * world}, "max_steps": 10, "data_path": f"{root}/data"}
    t |= {"parallelism": "fsdp", "optim": {"name": "adamw"}, "checkpoint": {"every": 1}}
    t["scaling"] = {"num_workers": world, "use_gpu": False, "resources_per_worker": {"CPU": 1}}
    return Trainer(TrainJob.from_recipe({"storage_path": root, "name": "bench", "train": t}), rank, world, torch.device("cpu"))


def _save(tr, mode: str, directory: str, group, stager) -> dict:
    """One save in `mode` and the training step after it: seconds blocked, to complete, of that step."""
    import torch.distributed as dist

    from raylm.training import saving

    tr.t.checkpoint.format = "full" if mode == "full" else "sharded"
    dist.barrier()
    t0 = time.perf_counter()
    if mode in ASYNC:
        tr.pending = pending = saving.start(tr, {}, group, stager)
        blocked = time.perf_counter() - t0
        done = []
        pending.future.add_done_callback(lambda _: done.append(time.perf_counter()))
        t1 = time.perf_counter()
        tr.train_step()  # an in-place save: its update waits for the write (pending.waited)
        step = time.perf_counter() - t1
        tr.pending = None
        saving.finish(pending, tr.world, None)
        blocked += pending.waited
        shutil.copytree(pending.directory, directory, dirs_exist_ok=True)
        saving.discard(pending)
        complete = done[0] - t0
    else:
        tr.save(directory)
        blocked = complete = time.perf_counter() - t0
        t1 = time.perf_counter()
        tr.train_step()
        step = time.perf_counter() - t1
    dist.barrier()
    return {"blocked": blocked, "complete": complete, "step": step}


def _rank(rank: int, world: int, port: int, args: dict) -> None:
    import torch
    import torch.distributed as dist

    from raylm.training import saving

    torch.set_num_threads(1)
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=world)
    root, mode = args["root"], args["mode"]
    tr = _trainer(root, rank, world, args["layers"], args["d_model"])
    params = sum(p.numel() for p in tr.model.parameters())  # a DTensor counts its global size
    tr.train_step()
    group, stager = saving.save_group(world), saving.stager(torch.device("cpu"), ASYNC.get(mode, "copy"))
    rows = []
    with PeakRSS() as mem:
        for save in ("first", "later"):
            directory = f"{root}/ckpt-{mode}-{save}/rank{rank}"
            os.makedirs(directory, exist_ok=True)
            row = _save(tr, mode, directory, group, stager)
            written = sum(p.stat().st_size for p in Path(directory).rglob("*") if p.is_file())
            rows.append({"save": save, **row, "bytes": written})
            shutil.rmtree(directory)
    stager.close()
    out = {"params": params, "rows": rows, "rss_before": mem.before, "rss_peak": mem.peak}
    Path(f"{root}/{mode}-{args['round']}-rank{rank}.json").write_text(json.dumps(out))
    dist.destroy_process_group()


def _report(root: Path, world: int, repeat: int) -> dict:
    got = {(m, r, k): json.loads((root / f"{m}-{r}-rank{k}.json").read_text()) for m in MODES for r in range(repeat) for k in range(world)}
    params = next(iter(got.values()))["params"]
    print(f"model: {params / 1e6:.0f}M parameters (fp32 weights + AdamW state: {params * 12 / 2**30:.1f} GiB), {world} FSDP2 CPU workers")
    head = f"{'mode':<24}{'save':<7}{'blocked s':>10}{'complete s':>11}{'step s':>8}{'rank0 peak GiB':>15}{'rank1 peak GiB':>15}"
    print(head + f"{'rank0 before':>13}{'written GiB':>12}")
    out = {}
    for mode in MODES:
        for save in ("first", "later"):
            runs = [[g for (m, r, k), g in got.items() if m == mode and r == rnd] for rnd in range(repeat)]
            row = lambda g, save=save: next(x for x in g["rows"] if x["save"] == save)  # noqa: E731
            o = {
                "blocked_s": min(max(row(g)["blocked"] for g in rs) for rs in runs),  # the slower rank, the best round
                "complete_s": min(max(row(g)["complete"] for g in rs) for rs in runs),
                "step_s": min(max(row(g)["step"] for g in rs) for rs in runs),
                "rank0_peak_gib": min(got[(mode, r, 0)]["rss_peak"] for r in range(repeat)) / 2**30,
                "rank1_peak_gib": min(got[(mode, r, 1)]["rss_peak"] for r in range(repeat)) / 2**30,
                "rank0_before_gib": min(got[(mode, r, 0)]["rss_before"] for r in range(repeat)) / 2**30,
                "written_gib": sum(row(got[(mode, 0, k)])["bytes"] for k in range(world)) / 2**30,
            }
            out[f"{mode}/{save}"] = o
            print(
                f"{mode:<24}{save:<7}{o['blocked_s']:>10.2f}{o['complete_s']:>11.2f}{o['step_s']:>8.2f}{o['rank0_peak_gib']:>15.2f}{o['rank1_peak_gib']:>15.2f}"
                f"{o['rank0_before_gib']:>13.2f}{o['written_gib']:>12.2f}"
            )
    full = out["full/later"]
    for mode in MODES[1:]:
        for save in ("first", "later"):
            ratio = out[f"{mode}/{save}"]["blocked_s"] / full["blocked_s"]
            print(f"{mode} ({save} save) blocks the loop {ratio:.3f}x as long as a full save (goal <= 0.25)")
    for mode in MODES[1:]:
        print(f"rank 0's peak RSS, {mode} / full: {out[f'{mode}/later']['rank0_peak_gib'] / full['rank0_peak_gib']:.2f}x (goal <= 0.6)")
    return out


def main() -> None:
    import torch

    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--layers", type=int, default=24)
    p.add_argument("--d-model", type=int, default=1024)
    p.add_argument("--repeat", type=int, default=2, help="rounds of the three modes, alternated (fresh processes each)")
    p.add_argument("--out", default=str(ROOT / "bench-out" / "checkpoint_speed"))
    a = p.parse_args()
    root = Path(a.out)
    shutil.rmtree(root, ignore_errors=True)
    root.mkdir(parents=True)
    random_shards(root / "data", (200, 20), (100, 300), shard_tokens=20000)
    for r in range(a.repeat):
        for mode in MODES:
            args = {"root": str(root), "layers": a.layers, "d_model": a.d_model, "mode": mode, "round": r}
            torch.multiprocessing.spawn(_rank, args=(2, _port(), args), nprocs=2, join=True)
    result = _report(root, 2, a.repeat)
    (root / "result.json").write_text(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
