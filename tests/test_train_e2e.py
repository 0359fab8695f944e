"""The main job end to end on the sample through the CLI (`raylm run`: data, 2-worker Ray Train,
sample), its outputs (metrics, TensorBoard events, loss curve, checkpoints), `raylm sample`, and
`raylm train` resuming the run to more steps; then fine-tuning from that run on a prompt/completion
task set (data with loss masks, init_from, `raylm eval` before and after, `raylm export`)."""

import json
import math
import os
import re
import subprocess
import sys
from collections import Counter

import numpy as np
import pytest
import torch

from raylm.cluster.cli import main
from tests.conftest import MODEL, ROOT

pytestmark = pytest.mark.slow

RECIPE = str(ROOT / "cluster" / "recipes" / "local.yaml")
FINETUNE = str(ROOT / "cluster" / "recipes" / "finetune.yaml")


def _rows(run):
    return [json.loads(x) for x in (run / "train" / "metrics.jsonl").read_text().splitlines()]


def _sets(over: list[str]) -> list[str]:
    return [a for o in over for a in ("--set", o)]


def _tensorboard_scalars(directory) -> set[tuple[str, int]]:
    """(tag, step) of every scalar in the TensorBoard event files there (TFRecords of tensorboardX's Event)."""
    import struct

    from tensorboardX.proto.event_pb2 import Event

    found = set()
    for f in directory.glob("events.out.tfevents.*"):
        data, i = f.read_bytes(), 0
        while i < len(data):  # a record: length (8 bytes), its CRC (4), the event, its CRC (4)
            (n,) = struct.unpack("<Q", data[i : i + 8])
            event = Event.FromString(data[i + 12 : i + 12 + n])
            found |= {(v.tag, event.step) for v in event.summary.value}
            i += 16 + n
    return found


# `pretrained` (tests/conftest.py): the session's `raylm run` of a small model on the sample
def test_run_sample_then_resume(pretrained, capsys):
    tmp_path, sets, out = pretrained
    assert "--- sample (prompt 'KING') ---\nKING" in out and "unigram entropy" in out
    run = tmp_path / "tr"
    rows = _rows(run)
    assert [r["step"] for r in rows] == list(range(1, 13))
    assert rows[0]["tokens"] == 1024 and rows[-1]["loss"] < rows[0]["loss"]
    assert "val_loss" in rows[5] and "val_ppl" in rows[-1] and rows[0]["mfu"] is None
    assert "2 workers (1 CPU each) x 4 sequences x 64 tokens x 2 micro-step(s) = 1,024 tokens per step" in out
    # bits per byte: the val loss over the val split's tokens per byte of its text, by hand from the manifest
    val = json.loads((run / "data" / "manifest.json").read_text())["splits"]["val"]
    assert rows[5]["val_bpb"] == pytest.approx(rows[5]["val_loss"] * val["tokens"] / val["bytes"] / math.log(2), rel=1e-12)
    assert f"{rows[-1]['val_bpb']:.4f} bits/byte" in out and "bits/byte vs unigram" in out
    first, last = (float(x) for x in re.search(r"first step done ([\d.]+)s after start .*; last at ([\d.]+)s", out).groups())
    assert 0 < first < last
    assert (run / "train" / "loss.png").read_bytes()[:4] == b"\x89PNG"
    assert list((run / "train" / "tensorboard").glob("events.out.tfevents.*"))
    ckpts = sorted(p for p in (run / "train").glob("checkpoint_*") if p.is_dir())
    assert len(ckpts) == 2 and all((c / "tokenizer.tiktoken").exists() and (c / "rng-1.pt").exists() for c in ckpts)

    # sampling is deterministic for a seed, from the run dir (latest checkpoint) or a checkpoint dir
    args = ["--prompt", "KING", "--max-new-tokens", "12", "--seed", "3"]
    assert main(["sample", str(run), *args]) == 0
    first = capsys.readouterr().out
    assert main(["sample", str(ckpts[-1]), *args]) == 0
    assert capsys.readouterr().out == first and first.startswith("KING")
    assert main(["sample", str(tmp_path / "nothing-here")]) == 2

    # provenance: each stage's run.json, and `raylm runs` finds the run
    for stage in ("data", "train"):
        rec = json.loads((run / stage / "run.json").read_text())
        assert rec["stage"] == stage and rec["status"] == "succeeded" and rec["exit_code"] == 0 and rec["command"][:2] == ["raylm", "run"]
        assert rec["recipe"]["name"] == "tr" and rec["versions"]["torch"] and rec["cluster"]["cpus"] == 2 and rec["ended"] >= rec["started"]
    assert rec["result"]["step"] == 12 and "x 2 micro-step(s)" in rec["layout"]
    assert main(["runs", str(tmp_path)]) == 0
    assert re.search(r"tr\s+.*succeeded.*succeeded.*12/12", capsys.readouterr().out)

    # progress: a line per step here (log_every auto: 12 steps / 20), each with step, loss, speed and ETA
    lines = [ln for ln in out.splitlines() if ln.startswith("[raylm train] step ")]
    assert [int(re.search(r"step (\d+)/12 ", ln).group(1)) for ln in lines] == list(range(1, 13))
    assert all(" | loss " in ln and " tok/s | " in ln and " | ETA " in ln for ln in lines)
    assert "val " in lines[5] and "bits/byte" in lines[5]

    # the same command with more steps resumes from step 12 instead of starting over; run as a user runs it
    # (a process of its own, joining the session's Ray): none of Ray's own log lines in what it prints
    import ray

    env = {**os.environ, "RAY_ADDRESS": ray.get_runtime_context().gcs_address, "PYTHONPATH": str(ROOT)}
    env.pop("RAYLM_LOG", None)
    cmd = [sys.executable, "-m", "raylm", "train", RECIPE, *sets, "--set", "train.max_steps=18", "--set", "train.log_every=2"]
    res = subprocess.run(cmd, env=env, cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert res.returncode == 0, res.stderr[-2000:]
    assert [r["step"] for r in _rows(run)] == list(range(1, 19))
    printed = res.stdout + res.stderr
    assert re.findall(r"\[raylm train\] step (\d+)/18 ", printed) == ["14", "16", "18"]  # this invocation's steps only
    for internal in ("core_worker", "streaming_executor", "logging_progress", "dataset.py", "WARNING", "INFO", "(RayTrainWorker"):
        assert internal not in printed, printed

    # another recipe under the same name does not resume this run's state: refused before Ray starts
    assert main(["train", RECIPE, *sets, "--set", "train.max_steps=20", "--set", "train.optim.lr=0.5"]) == 2
    err = capsys.readouterr().err
    assert "has checkpoints (step 18) of another recipe: train.optim.lr is 0.003 there, 0.5 here" in err and "--set name=" in err


def test_in_loop_task_metrics_are_one_process_scoring_of_the_checkpoint(pretrained, capsys):
    """The bundled downstream tasks (local.yaml's train.eval.tasks) at each eval step, their examples split across
    the 2 workers: in metrics.jsonl, TensorBoard, the progress line and the summary, with the same numbers as one
    process scoring that step's checkpoint (raylm eval --tasks). Step 12's checkpoint is kept whether or not
    test_run_sample_then_resume has trained the run on to step 18 (keep 2)."""
    tmp_path, sets, out = pretrained
    run = tmp_path / "tr"
    rows = _rows(run)
    lines = [ln for ln in out.splitlines() if ln.startswith("[raylm train] step ")]
    (ckpt,) = [p for p in (run / "train").glob("checkpoint_*/meta.json") if json.loads(p.read_text())["step"] == 12]
    ckpt = ckpt.parent
    assert "tasks CORE " in lines[5] and "tasks CORE " not in lines[4]

    keys = {f"tasks/{n}/{m}" for n in ("word-order", "next-line") for m in ("acc", "acc_norm")}
    keys |= {"tasks/next-line-cloze/acc", "tasks/next-line-cloze/bpb", "tasks/core"}
    assert [r["step"] for r in rows[:12] if keys <= r.keys()] == [6, 12]  # the run may since have gone on to 18
    assert main(["eval", RECIPE, *sets, "--checkpoint", str(ckpt), "--tasks", str(ROOT / "data" / "downstream")]) == 0
    capsys.readouterr()
    one = json.loads((run / "eval" / "tasks.json").read_text())
    assert one["step"] == 12
    for name, r in one["tasks"].items():
        for m in ("acc", "acc_norm", "bpb"):
            if m in r:
                assert rows[11][f"tasks/{name}/{m}"] == pytest.approx(r[m], abs=1e-6), (name, m)
    assert rows[11]["tasks/core"] == pytest.approx(one["core"], abs=1e-6)

    # raylm eval --tasks on Ray (--workers 2: a Ray Data actor pool, each actor loading the checkpoint): the same
    # per-example log-likelihoods as one process (batched otherwise: within 1e-4) and the same accuracies
    assert main(["eval", RECIPE, *sets, "--checkpoint", str(ckpt), "--tasks", str(ROOT / "data" / "downstream"), "--workers", "2"]) == 0
    capsys.readouterr()
    spread = json.loads((run / "eval" / "tasks.json").read_text())
    assert (spread["workers"], spread["step"]) == (2, 12)
    for name, r in one["tasks"].items():
        flat = lambda res: [v for row in res["per_example"] for v in np.atleast_1d(row["loglik"])]  # noqa: E731
        assert np.abs(np.array(flat(r)) - np.array(flat(spread["tasks"][name]))).max() <= 1e-4, name
        assert [spread["tasks"][name].get(m) for m in ("acc", "acc_norm")] == [r.get(m) for m in ("acc", "acc_norm")], name
    assert {("eval/tasks/core", 6), ("eval/tasks/word-order/acc", 12)} <= _tensorboard_scalars(run / "train" / "tensorboard")
    assert re.search(r"raylm train: tasks at step 12: word-order: acc [\d.]+% \(\d+/199, 95% interval", out)


def _sharded_optimizer(ckpt: str, tmp_path) -> dict:
    """The optimizer state of a sharded checkpoint, read whole with DCP's own converter (no process group)."""
    from torch.distributed.checkpoint.format_utils import dcp_to_torch_save

    out = tmp_path / "optim.pt"
    dcp_to_torch_save(f"{ckpt}/dcp", out)
    return torch.load(out, weights_only=False)["optim"]  # DCP's file holds the param groups' plain Python values


def test_finetune_from_pretrained_then_eval_and_export(pretrained, tmp_path, capsys):
    from raylm.core.manifest import read_manifest
    from raylm.pipelines.tasks import build_play_task
    from raylm.training import checkpoint
    from raylm.training.evaluate import split_examples

    pre_root, _, _ = pretrained
    pre = pre_root / "tr"
    build_play_task(tmp_path / "all.jsonl")
    lines = (tmp_path / "all.jsonl").read_text().splitlines()[::10]  # ~400 records of the six plays
    (tmp_path / "play.jsonl").write_text("\n".join(lines) + "\n")
    # lr 0: the fine-tuned weights stay the pretrained ones, so what init_from loaded can be checked exactly
    sets = _sets(
        [
            f"storage_path={tmp_path}",
            "name=ft",
            f"train.model={MODEL}",
            f"train.init_from={pre}",
            f"data.inputs=[{{path: {tmp_path / 'play.jsonl'}, format: jsonl, prompt_field: prompt, completion_field: completion}}]",
            f"data.tokenizer.path={pre / 'data' / 'tokenizer.tiktoken'}",
            "data.output.val_fraction=0.2",
            "train.optim.lr=0",
            "train.max_steps=2",
            "train.schedule.warmup_steps=1",
            "train.batch={micro_batch_size: 4, global_batch_tokens: 512}",
            "train.eval={every: 2, batches: 4}",
            "train.checkpoint={every: 2, keep: 1}",
            "train.scaling.num_workers=1",  # from the 2-worker pretrained run: the weights load whatever the layout
        ]
    )
    assert main(["data", FINETUNE, *sets]) == 0
    data = tmp_path / "ft" / "data"
    man = read_manifest(str(data)).as_json()
    assert man["loss_mask"] is True and len(lines) == man["stats"]["docs_in"] == man["stats"]["docs_kept"] + sum(man["stats"]["removed"].values())
    assert man["tokenizer"]["sha256"] == read_manifest(str(pre / "data")).tokenizer.sha256
    assert (data / "train" / "shard-000000.mask.npy").exists() and (data / "val" / "shard-000000.mask.npy").exists()

    # a model of another shape is refused before Ray starts
    assert main(["train", FINETUNE, *sets, "--set", "train.model.d_model=128"]) == 2
    assert "train.model.d_model is 64 there, 128 here" in capsys.readouterr().err

    assert main(["train", FINETUNE, *sets]) == 0
    ft_state, _ = checkpoint.load(checkpoint.latest(str(tmp_path / "ft")), 0)
    pre_state, _ = checkpoint.load(checkpoint.latest(str(pre)), 0)
    assert ft_state["step"] == 2 and pre_state["step"] >= 12
    assert all(torch.equal(ft_state["model"][k], v) for k, v in pre_state["model"].items())  # the weights: loaded
    steps = {int(s["step"]) for s in _sharded_optimizer(checkpoint.latest(str(tmp_path / "ft")), tmp_path)["state"].values()}
    assert steps == {2}  # the optimizer: new (Adam's step count is this run's 2, not the pretrained run's)
    assert ft_state["scheduler"]["last_epoch"] == 2

    # raylm eval before (the pretrained checkpoint) and after: JSON in the run directory, a table printed
    assert main(["eval", FINETUNE, *sets, "--checkpoint", str(pre)]) == 0
    assert main(["eval", FINETUNE, *sets]) == 0
    assert "macro-F1" in (out := capsys.readouterr().out) and "majority baseline" in out
    before = json.loads(next((tmp_path / "ft" / "eval").glob("val@tr-step*.json")).read_text())
    after = json.loads((tmp_path / "ft" / "eval" / "val@ft-step2.json").read_text())
    assert abs(before["lm"]["loss"] - after["lm"]["loss"]) < 1e-6  # same weights (lr 0), same val targets
    rec = json.loads((tmp_path / "ft" / "eval" / "run.json").read_text())  # the last eval's record, with its results
    assert (rec["stage"], rec["status"], rec["result"]["lm"]["loss"]) == ("eval", "succeeded", after["lm"]["loss"])
    task = after["task"]
    val = split_examples(str(data), "val")
    assert task["examples"] == len(val) > 0 and task["labels"] == 6
    assert 0 <= task["accuracy"] <= 1 and 0 <= task["macro_f1"] <= 1 and 0 <= task["bleu"] <= 100
    from raylm.core.tokenizer import load_encoding, run_tokenizer

    enc = load_encoding(run_tokenizer(man["tokenizer"], str(data)))
    majority = Counter(enc.decode(c) for _, c in split_examples(str(data), "train")).most_common(1)[0][0]
    assert task["majority_label"] == majority
    assert task["majority"]["accuracy"] == sum(enc.decode(c) == majority for _, c in val) / len(val)
    # the masked LM loss counts completion tokens only: fewer than the val split's tokens
    assert after["lm"]["tokens"] < man["splits"]["val"]["tokens"] / 3

    # and the fine-tuned run exports (the llama arch: as transformers' LlamaForCausalLM)
    assert main(["export", str(tmp_path / "ft"), str(tmp_path / "hf")]) == 0
    assert json.loads((tmp_path / "hf" / "config.json").read_text())["architectures"] == ["LlamaForCausalLM"]

    # the same fine-tune with document masking (finetune.yaml's own setting): the same weights (lr 0) on the same
    # val windows score the packed examples each on its own, so only the mask moves the loss. With rotary positions
    # (the llama arch) restarting positions moves no relative position, and a 12-step model attends almost
    # uniformly: the mask alone moves the loss by ~2e-5, far above the ~1e-7 of two kernels' rounding
    masked = [*sets, "--set", "name=ftm", "--set", f"train.data_path={data}", "--set", f"train.model={MODEL[:-1]}, document_mask: true}}"]
    assert main(["train", FINETUNE, *masked]) == 0
    plain, doc = _rows(tmp_path / "ft")[-1]["val_loss"], _rows(tmp_path / "ftm")[-1]["val_loss"]
    assert plain is not None and doc is not None and abs(plain - doc) > 1e-5
