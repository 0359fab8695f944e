"""Experiment tracking end to end: `raylm train` with train.loggers [mlflow, wandb] logs the recipe and every
step to a real MLflow tracking server started on 127.0.0.1 (MLFLOW_TRACKING_URI), with the loss plot and the
final checkpoint; and to a W&B offline run (no API key: files under train/wandb/, nothing sent), read back from
its .wandb record file. The run is tests/conftest.py's `tracked_run`, which tests/test_train_parallel.py also
checks as a run initialized from another's weights."""

import json
import os
import struct

import pytest

pytestmark = pytest.mark.slow


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


def test_mlflow_server_and_wandb_offline(tracked_run, tmp_path):
    from mlflow import MlflowClient

    root, mlflow_server = tracked_run
    train = root / "trk" / "train"
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
