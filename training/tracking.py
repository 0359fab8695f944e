"""Experiment tracking besides metrics.jsonl: `train.loggers` (tensorboard, mlflow, wandb), through Ray's own
integrations (`setup_mlflow`, `setup_wandb`: rank 0 logs, inside the Ray Train worker).

MLflow: the server at MLFLOW_TRACKING_URI, else a SQLite store in the run directory (`{run}/mlflow.db`, artifacts
in `{run}/mlflow-artifacts/`; MLflow 3 refuses a plain file store); experiment = the run's top-level name;
params = the resolved recipe (dotted keys); metrics every step; the loss plot and the final checkpoint's path
(artifacts loss.png and checkpoint.txt, and tag `raylm.checkpoint`) logged by the driver when training ends.
A tune campaign makes one parent run, each trial a child (tag mlflow.parentRunId).
W&B: offline (files under train/wandb/, nothing sent) unless an API key is configured (WANDB_API_KEY) or
WANDB_MODE says otherwise; project WANDB_PROJECT or "raylm"; config = the recipe; metrics every step; a
campaign's trials share a group.
"""

from __future__ import annotations

import importlib.util
import json
import logging
import os
from typing import Any

import fsspec

from raylm.core.changes import flat
from raylm.core.io import is_local, write_json
from raylm.core.paths import RunPaths
from raylm.core.redact import redacted
from raylm.core.schema import ConfigError
from raylm.training.config import TrainJob

TRACKING = "tracking.json"  # in train/: where this run's MLflow and W&B runs are, written by rank 0
STEP_METRICS = ("loss", "lr", "grad_norm", "tokens_per_s", "mfu", "val_loss", "val_ppl", "val_bpb")


def mlflow_params(recipe: dict) -> dict[str, Any]:
    """A nested recipe as MLflow params, which are flat: dotted keys, a list one JSON value."""
    return {k: json.dumps(v) if isinstance(v, list) else v for k, v in flat(recipe, lists=False).items()}


def mlflow_uri(paths: RunPaths) -> str:
    """MLFLOW_TRACKING_URI, else a SQLite store in the run's top-level directory (a campaign's trials share it)."""
    if os.environ.get("MLFLOW_TRACKING_URI"):
        return os.environ["MLFLOW_TRACKING_URI"]
    fs, _ = fsspec.core.url_to_fs(paths.storage_path)
    if not is_local(fs):
        raise ConfigError(f"train.loggers: mlflow needs MLFLOW_TRACKING_URI when storage_path is remote ({paths.storage_path})")
    top = RunPaths(paths.storage_path, paths.name.split("/")[0])
    fs.makedirs(top.root, exist_ok=True)
    return f"sqlite:///{os.path.abspath(top.root)}/mlflow.db"


def wandb_mode() -> str:
    return os.environ.get("WANDB_MODE") or ("online" if os.environ.get("WANDB_API_KEY") else "offline")


def tracking_info(job: TrainJob, run_name: str | None = None, parent: str | None = None, group: str | None = None) -> dict:
    """What the workers need to open the trackers, resolved on the driver (its environment, not the workers')."""
    loggers = job.train.loggers
    for name in {"mlflow", "wandb"} & set(loggers):
        if importlib.util.find_spec(name) is None:  # checked here, not as a worker's ImportError
            raise ConfigError(f"train.loggers: {name} is not installed (pip install 'raylm[{name}]')")
    info: dict = {"run_name": run_name or job.paths.name.replace("/", "-"), "group": group}
    if "mlflow" in loggers:
        top = job.paths.name.split("/")[0]
        info.update(mlflow_uri=mlflow_uri(job.paths), experiment=top, parent=parent, artifacts=None)
        if not os.environ.get("MLFLOW_TRACKING_URI"):  # the run's own store: its artifacts beside it
            info["artifacts"] = f"{os.path.abspath(RunPaths(job.paths.storage_path, top).root)}/mlflow-artifacts"
    if "wandb" in loggers:
        info.update(wandb_mode=wandb_mode(), wandb_project=os.environ.get("WANDB_PROJECT", "raylm"))
    return info


def campaign_tracking(job: TrainJob, campaign: str, recipe: dict) -> dict | None:
    """A tune campaign's tracking, on the driver: its MLflow parent run (params: the campaign's recipe, with the
    search space), which each trial's run names as its parent; W&B trials share the campaign's group."""
    if not {"mlflow", "wandb"} & set(job.train.loggers):
        return None
    info = tracking_info(job, run_name=f"{campaign}-tune", group=campaign)
    if "mlflow" in job.train.loggers:
        import mlflow

        _experiment(mlflow, info)
        client = mlflow.MlflowClient(info["mlflow_uri"])
        exp = client.get_experiment_by_name(info["experiment"])
        run = client.create_run(exp.experiment_id, run_name=info["run_name"], tags={"raylm.run": job.paths.root, "raylm.stage": "tune"})
        params = mlflow_params(redacted(recipe))
        for i in range(0, len(params), 100):  # MLflow takes at most 100 params a batch
            client.log_batch(run.info.run_id, params=[mlflow.entities.Param(k, str(v)[:6000]) for k, v in list(params.items())[i : i + 100]])
        info["parent"] = run.info.run_id
    return info


def end_campaign(info: dict | None) -> None:
    """Mark a campaign's MLflow parent run finished (its children carry the metrics)."""
    if info and info.get("parent"):
        import mlflow

        mlflow.MlflowClient(info["mlflow_uri"]).set_terminated(info["parent"])


def _quiet() -> None:
    for name in ("mlflow", "alembic", "wandb"):
        logging.getLogger(name).setLevel(logging.WARNING)


def _experiment(mlflow, info: dict) -> None:
    """Create the experiment (with its artifacts beside a run's own store), unless it exists."""
    _quiet()
    mlflow.set_tracking_uri(info["mlflow_uri"])
    if mlflow.get_experiment_by_name(info["experiment"]) is None:
        try:
            mlflow.create_experiment(info["experiment"], artifact_location=info.get("artifacts"))
        except Exception:  # noqa: BLE001 - created by another trial meanwhile
            pass


def _open_wandb(job: TrainJob, info: dict):
    """Ray's setup_wandb when a key is configured; offline, wandb.init itself: Ray's integration refuses to
    start without an API key even in offline mode, where none is needed."""
    import wandb

    _quiet()
    wdir = job.paths.train if is_local(fsspec.core.url_to_fs(job.paths.train)[0]) else None
    if wdir:
        os.makedirs(wdir, exist_ok=True)
    kw = dict(project=info["wandb_project"], name=info["run_name"], group=info.get("group"), dir=wdir, mode=info["wandb_mode"], tags=["raylm"])
    if info["wandb_mode"] == "offline":
        return wandb.init(config=redacted(job.recipe), **kw)
    from ray.air.integrations.wandb import setup_wandb

    return setup_wandb(redacted(job.recipe), **kw)


class Trackers:
    """Rank 0's MLflow and W&B runs for one training invocation: opened with the recipe, a row per step, closed
    at the end (its ids in train/tracking.json for the driver's artifacts and `raylm runs`)."""

    def __init__(self, job: TrainJob, info: dict, step: int):
        self.job, self.info, self.mlflow, self.wandb = job, info, None, None
        loggers, recipe = job.train.loggers, redacted(job.recipe)
        tags = {"raylm.run": job.paths.root, "raylm.start_step": str(step)}
        if "mlflow" in loggers:
            import mlflow
            from ray.air.integrations.mlflow import setup_mlflow

            _experiment(mlflow, info)
            tags.update({"mlflow.parentRunId": info["parent"]} if info.get("parent") else {})
            self.mlflow = setup_mlflow(
                mlflow_params(recipe), tracking_uri=info["mlflow_uri"], experiment_name=info["experiment"], run_name=info["run_name"], tags=tags
            )
        if "wandb" in loggers:
            self.wandb = _open_wandb(job, info)

    def log(self, row: dict) -> None:
        from raylm.training.tasks import scalars as task_scalars

        scalars = {k: row[k] for k in STEP_METRICS if row.get(k) is not None} | task_scalars(row)
        if self.mlflow is not None:
            self.mlflow.log_metrics(scalars, step=row["step"], synchronous=False)  # batched in the background
        if self.wandb is not None:
            self.wandb.log(scalars, step=row["step"])

    def close(self) -> None:
        ids: dict = {}
        if self.mlflow is not None:
            run = self.mlflow.active_run()
            ids["mlflow"] = {"tracking_uri": self.info["mlflow_uri"], "run_id": run.info.run_id, "experiment_id": run.info.experiment_id}
            self.mlflow.end_run()
        if self.wandb is not None:
            ids["wandb"] = {"id": self.wandb.id, "mode": self.info["wandb_mode"], "dir": self.wandb.dir, "project": self.info["wandb_project"]}
            self.wandb.finish()
        if ids:
            write_json(f"{self.job.paths.train}/{TRACKING}", ids)


def log_final(paths: RunPaths, checkpoint_path: str | None) -> None:
    """The driver, after training: the loss plot and the final checkpoint's path onto the run's MLflow run."""
    try:
        with fsspec.open(f"{paths.train}/{TRACKING}") as f:
            ids = json.load(f).get("mlflow")
    except FileNotFoundError:
        return
    if not ids:
        return
    from mlflow import MlflowClient

    _quiet()
    client = MlflowClient(ids["tracking_uri"])
    if checkpoint_path:  # a tag to search by, and an artifact beside the loss plot
        client.set_tag(ids["run_id"], "raylm.checkpoint", checkpoint_path)
        client.log_text(ids["run_id"], checkpoint_path + "\n", "checkpoint.txt")
    fs, _ = fsspec.core.url_to_fs(paths.loss_plot)
    if is_local(fs) and fs.exists(paths.loss_plot):
        client.log_artifact(ids["run_id"], paths.loss_plot)
