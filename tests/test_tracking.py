"""training/tracking.py's pure parts: recipe flattening, where MLflow and W&B go; no Ray, no server."""

import pytest

from raylm.core.paths import RunPaths
from raylm.core.schema import ConfigError
from raylm.training.tracking import mlflow_params, mlflow_uri, wandb_mode


def test_flat_recipe_keys():
    assert mlflow_params({"train": {"optim": {"lr": 0.1, "betas": [0.9, 0.95]}, "loggers": ["mlflow"]}, "name": "x"}) == {
        "train.optim.lr": 0.1,
        "train.optim.betas": "[0.9, 0.95]",
        "train.loggers": '["mlflow"]',
        "name": "x",
    }


def test_mlflow_store_is_the_runs_own_unless_a_server_is_named(tmp_path, monkeypatch):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    trial = RunPaths(str(tmp_path), "camp/tune/trials/t1")  # a campaign's trials share its top-level store
    assert mlflow_uri(trial) == f"sqlite:///{tmp_path}/camp/mlflow.db"
    with pytest.raises(ConfigError, match="MLFLOW_TRACKING_URI"):
        mlflow_uri(RunPaths("memory://bucket/runs", "x"))
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://127.0.0.1:5000")
    assert mlflow_uri(RunPaths("memory://bucket/runs", "x")) == "http://127.0.0.1:5000"


def test_wandb_offline_without_a_key(monkeypatch):
    for var in ("WANDB_API_KEY", "WANDB_MODE"):
        monkeypatch.delenv(var, raising=False)
    assert wandb_mode() == "offline"
    monkeypatch.setenv("WANDB_API_KEY", "k" * 40)
    assert wandb_mode() == "online"
    monkeypatch.setenv("WANDB_MODE", "disabled")
    assert wandb_mode() == "disabled"


def test_env_vars_values_are_redacted_from_what_is_recorded():
    from raylm.core.redact import redacted

    r = {"name": "x", "ray": {"address": None, "runtime_env": {"env_vars": {"AWS_SECRET_ACCESS_KEY": "s3cr3t"}, "pip": ["a"]}}}
    out = redacted(r)
    assert out["ray"]["runtime_env"] == {"env_vars": {"AWS_SECRET_ACCESS_KEY": "<redacted>"}, "pip": ["a"]}
    assert r["ray"]["runtime_env"]["env_vars"]["AWS_SECRET_ACCESS_KEY"] == "s3cr3t"  # the recipe itself untouched
    assert redacted({"name": "x"}) == {"name": "x"}
