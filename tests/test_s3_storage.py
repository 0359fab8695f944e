"""storage_path on S3: a real S3-compatible server (moto's, on loopback) started by the test, a real
client (s3fs for fsspec, pyarrow's S3 for Ray Train); `raylm run` writes shards, metrics and checkpoints
there, and `raylm sample` reads the model back from the s3:// run directory. No mock of the client."""

import json
import os
import socket
import subprocess
import sys
import time

import pytest

from tests.conftest import ROOT, free_port

pytestmark = [pytest.mark.slow, pytest.mark.own_ray]

RECIPE = str(ROOT / "cluster" / "recipes" / "local.yaml")


@pytest.fixture(scope="module")
def s3_server():
    port = free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    env = {
        "AWS_ENDPOINT_URL": f"http://127.0.0.1:{port}",
        "AWS_ACCESS_KEY_ID": "raylm-test-key",
        "AWS_SECRET_ACCESS_KEY": "raylm-test-secret-0123456789",
        "AWS_DEFAULT_REGION": "us-east-1",
    }
    deadline = time.time() + 30
    while time.time() < deadline:
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                break
        time.sleep(0.2)
    try:
        yield env
    finally:
        proc.kill()
        proc.wait()


def test_run_and_sample_on_s3(s3_server, monkeypatch):
    for k, v in s3_server.items():
        monkeypatch.setenv(k, v)
    import fsspec

    fs = fsspec.filesystem("s3", skip_instance_cache=True)
    fs.mkdir("raylm-test")
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    env.pop("RAY_ADDRESS", None)
    over = [
        "storage_path=s3://raylm-test/runs",
        "name=s3run",
        "ray.address=local",
        "train.model={n_layer: 1, n_head: 2, d_model: 64, seq_len: 64}",
        "train.batch={micro_batch_size: 8, global_batch_tokens: 1024}",
        "train.max_steps=12",
        "train.schedule.warmup_steps=2",
        "train.eval={every: 6, batches: 2}",
        "train.checkpoint={every: 6, keep: 1}",
        "train.scaling.num_workers=1",
    ]
    # a search campaign on the same storage: Tune's experiment, the trials' Ray Train runs, results and best.yaml on S3
    tune_over = over + [
        "tune.num_samples=2",
        "tune.param_space={train.optim.lr: {loguniform: [1.0e-4, 1.0e-2]}}",
        "tune.scheduler={type: asha, grace_period: 6, reduction_factor: 2}",
        "train.checkpoint={every: 12, keep: 1}",
    ]
    # `raylm run` then `raylm tune`, in one process started with the credentials: its one local Ray instance (the
    # session's was started without them) serves both
    both = ["run", RECIPE, *[a for o in over for a in ("--set", o)], "::", "tune", RECIPE, *[a for o in tune_over for a in ("--set", o)]]
    code = "import sys; from raylm.cluster.cli import main; a = sys.argv[1:]; i = a.index('::'); sys.exit(main(a[:i]) or main(a[i + 1 :]))"
    out = subprocess.run([sys.executable, "-c", code, *both], env=env, cwd=ROOT, capture_output=True, text=True, timeout=900)
    assert out.returncode == 0, out.stderr[-3000:]
    run = "raylm-test/runs/s3run"
    man = json.loads(fs.cat(f"{run}/data/manifest.json"))
    assert all(fs.exists(f"{run}/data/{s['path']}") for s in man["splits"]["train"]["shards"])
    rows = [json.loads(x) for x in fs.cat(f"{run}/train/metrics.jsonl").decode().splitlines()]
    assert [r["step"] for r in rows] == list(range(1, 13))
    # sharded checkpoints: every rank's part, trainer.pt and meta.json, all on S3
    assert fs.glob(f"{run}/train/checkpoint_*/dcp/.metadata") and fs.glob(f"{run}/train/checkpoint_*/dcp/__0_0.distcp")
    assert fs.glob(f"{run}/train/checkpoint_*/trainer.pt") and fs.glob(f"{run}/train/checkpoint_*/meta.json")
    assert not (ROOT / "runs" / "s3run").exists(), "nothing of the run or the campaign written locally"
    # the credentials appear in no log and nowhere in the run or the campaign
    secret = s3_server["AWS_SECRET_ACCESS_KEY"]
    assert secret not in out.stdout + out.stderr
    for f, info in fs.find(run, detail=True).items():
        if info["type"] == "file" and info["size"] and not f.endswith((".npy", ".png")):  # directory markers have no body
            assert secret.encode() not in fs.cat(f), f

    assert fs.exists(f"{run}/tune/results.csv") and fs.exists(f"{run}/tune/best.yaml")
    assert "s3://raylm-test/runs/s3run/data" in fs.cat(f"{run}/tune/best.yaml").decode()
    assert len(fs.glob(f"{run}/tune/trials/*/train/metrics.jsonl")) == 2

    from raylm.cluster.cli import main

    assert main(["sample", f"s3://{run}", "--prompt", "ROMEO:", "--max-new-tokens", "8"]) == 0
