"""`raylm train`: the recipe's train section wired into Ray Train's TorchTrainer.

Running it again on the same run resumes from the latest checkpoint (Ray Train restores a run
found at storage_path/name); a failed worker is restarted from it up to failure.max_failures times.
"""
from __future__ import annotations

import os

from cluster.config import RunConfig


def build_trainer(cfg: RunConfig):
    from ray.train import CheckpointConfig, FailureConfig, RunConfig as RayRunConfig, ScalingConfig
    from ray.train.torch import TorchTrainer

    from training.loop import train_loop_per_worker

    t = cfg.train
    storage = cfg.storage_path if "://" in cfg.storage_path else os.path.abspath(cfg.storage_path)
    return TorchTrainer(
        train_loop_per_worker,
        train_loop_config={"recipe": cfg.model_copy(update={"storage_path": storage}).model_dump(mode="json")},
        scaling_config=ScalingConfig(num_workers=t.scaling.num_workers, use_gpu=t.scaling.use_gpu,
                                     resources_per_worker=t.scaling.resources_per_worker),
        run_config=RayRunConfig(name=f"{cfg.name}/train", storage_path=storage,
                                checkpoint_config=CheckpointConfig(num_to_keep=t.checkpoint.keep),
                                failure_config=FailureConfig(max_failures=t.failure.max_failures)),
    )


def run_train(cfg: RunConfig):
    from cluster.runtime import init_ray
    from pipelines.shards import exists

    if not exists(f"{cfg.run_dir}/data/manifest.json"):
        raise FileNotFoundError(f"{cfg.run_dir}/data has no manifest.json: run `raylm data` first")
    init_ray(cfg.ray)
    return build_trainer(cfg).fit()
