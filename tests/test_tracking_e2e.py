"""Experiment tracking end to end: `raylm train` with train.loggers [mlflow, wandb] logs the recipe and every
step to a real MLflow tracking server started here on 127.0.0.1 (MLFLOW_TRACKING_URI), with the loss plot and the
final checkpoint; and to a W&B offline run (no API key: files under train/wandb/, nothing sent), read back from
its .wandb record file."""

import json
import os
import signal
import socket
import struct
import subprocess
import sys
import time
import urllib.request

import pytest

from raylm.cluster.cli import main
from tests.conftest import ROOT

pytestmark = pytest.mark.slow

RECIPE = str(ROOT / "cluster" / "recipes" / "local.yaml")


@pytest.fixture
def mlflow_server(tmp_path):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    srv = tmp_path / "mlflow-server"
    args = [sys.executable, "-m", "mlflow", "server", "--host", "127.0.0.1", "--port", str(port), "--workers", "1"]
    args += ["--backend-store-uri", f"sqlite:///{srv}/db.sqlite", "--artifacts-destination", str(srv / "artifacts")]
    srv.mkdir()
    # without MLflow's job runner (8 processes of ~2 s CPU each, for GenAI evaluation jobs this test never sends)
    env = {**os.environ, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"}
    proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=open(srv / "log", "w"), start_new_session=True, env=env)
    url = f"http://127.0.0.1:{port}"
    deadline = time.time() + 120
    while True:
        try:
            if urllib.request.urlopen(f"{url}/health", timeout=2).status == 200:
                break
        except OSError:
            if time.time() > deadline or proc.poll() is not None:
                proc.kill()
                raise RuntimeError(f"mlflow server did not start: {(srv / 'log').read_text()[-2000:]}") from None
            time.sleep(0.5)
    yield url
    # the whole session at once: a graceful stop (SIGTERM) waits seconds on the server's workers, and nothing
    # it would flush is read after the test
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait(timeout=30)


def wandb_records(path) -> list:
    """The protobuf records of a W&B offline run file: a 7-byte header, then LevelDB-log blocks of 32 KiB
    (each piece: crc32, length, type 1 full / 2 first / 3 middle / 4 last)."""
    from wandb.proto import wandb_internal_pb2 as pb

    data, pos, buf, out = path.read_bytes(), 7, b"", []
    while pos + 7 <= len(data):
        left = 32768 - pos % 32768
        if left < 7:
            pos += left
            continue
        _, n, kind = struct.unpack("<IHB", data[pos : pos + 7])
        pos += 7
        if n == 0 and kind == 0:  # block padding
            pos += left - 7
            continue
        buf, pos = buf + data[pos : pos + n], pos + n
        if kind in (1, 4):
            rec = pb.Record()
            rec.ParseFromString(buf)
            out.append(rec)
            buf = b""
    return out


def test_mlflow_server_and_wandb_offline(sample_shards, mlflow_server, tmp_path, monkeypatch):
    from mlflow import MlflowClient

    monkeypatch.setenv("MLFLOW_TRACKING_URI", mlflow_server)
    for var in ("WANDB_API_KEY", "WANDB_MODE"):
        monkeypatch.delenv(var, raising=False)
    over = [
        f"storage_path={tmp_path}",
        "name=trk",
        f"train.data_path={sample_shards}",
        "train.model={n_layer: 1, n_head: 2, d_model: 64, seq_len: 64}",
        "train.batch={micro_batch_size: 4, global_batch_tokens: 512}",
        "train.max_steps=4",
        "train.eval.every=2",  # local.yaml's downstream tasks kept
        "train.eval.batches=1",
        "train.checkpoint.every=4",
        "train.loggers=[tensorboard, mlflow, wandb]",
        "train.scaling.num_workers=1",  # rank 0 logs: a second worker (~4.5 s of CPU to start) adds nothing here
    ]
    assert main(["train", RECIPE, *[a for o in over for a in ("--set", o)]]) == 0
    train = tmp_path / "trk" / "train"
    ids = json.loads((train / "tracking.json").read_text())

    # MLflow, on the server: the recipe as params, every step's metrics, the loss plot and the final checkpoint
    client = MlflowClient(mlflow_server)
    run = client.get_run(ids["mlflow"]["run_id"])
    assert client.get_experiment(run.info.experiment_id).name == "trk" and run.info.status == "FINISHED"
    assert run.data.params["train.max_steps"] == "4" and run.data.params["train.model.d_model"] == "64"
    assert [m.step for m in client.get_metric_history(run.info.run_id, "loss")] == [1, 2, 3, 4]
    assert [m.step for m in client.get_metric_history(run.info.run_id, "val_loss")] == [2, 4]
    assert [m.step for m in client.get_metric_history(run.info.run_id, "tasks/core")] == [2, 4]  # train.eval.tasks
    assert {"loss.png", "checkpoint.txt"} <= {a.path for a in client.list_artifacts(run.info.run_id)}
    assert os.path.isdir(run.data.tags["raylm.checkpoint"]) and "checkpoint_" in run.data.tags["raylm.checkpoint"]
    got = client.download_artifacts(run.info.run_id, "checkpoint.txt", str(tmp_path))
    assert open(got).read().strip() == run.data.tags["raylm.checkpoint"]

    # W&B: offline, its records on disk: the recipe as config, a history row per step
    assert ids["wandb"]["mode"] == "offline"
    (wandb_file,) = list(train.glob("wandb/offline-run-*/run-*.wandb"))
    recs = wandb_records(wandb_file)
    (run_rec,) = [r.run for r in recs if r.WhichOneof("record_type") == "run"]
    config = {u.key: json.loads(u.value_json) for u in run_rec.config.update}
    assert config["train"]["max_steps"] == 4 and config["name"] == "trk"
    history = [r.history for r in recs if r.WhichOneof("record_type") == "history"]
    assert [h.step.num for h in history] == [1, 2, 3, 4]
    assert all("loss" in {"/".join(i.nested_key) for i in h.item} for h in history)
    assert [h.step.num for h in history if "tasks/core" in {"/".join(i.nested_key) or i.key for i in h.item}] == [2, 4]
