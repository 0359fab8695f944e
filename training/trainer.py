"""`raylm train`: the recipe's train section wired into Ray Train's TorchTrainer.

Running it again on the same run resumes from the latest checkpoint (Ray Train restores a run
found at storage_path/name); a failed worker is restarted from it up to failure.max_failures times.
"""
from __future__ import annotations

from typing import Optional

from cluster.config import RunConfig, absolute


def build_trainer(cfg: RunConfig, callbacks: Optional[list] = None, start_from: Optional[str] = None):
    """A TorchTrainer for the recipe (`callbacks`: Ray Train UserCallbacks, e.g. Tune's report callback;
    `start_from`: a checkpoint directory whose full state a new run continues from, as a PBT trial does
    from another's; the run's own checkpoints, after a failure, take precedence)."""
    from ray.train import CheckpointConfig, FailureConfig, LoggingConfig, RunConfig as RayRunConfig, ScalingConfig
    from ray.train.torch import TorchTrainer

    from training.loop import train_loop_per_worker

    t = cfg.train
    storage = absolute(cfg.storage_path)
    recipe = cfg.model_copy(update={"storage_path": storage}).model_dump(mode="json")
    if t.data_path:
        recipe["train"]["data_path"] = absolute(t.data_path)
    return TorchTrainer(
        train_loop_per_worker,
        train_loop_config={"recipe": recipe, "start_from": start_from},
        scaling_config=ScalingConfig(num_workers=t.scaling.num_workers, use_gpu=t.scaling.use_gpu,
                                     resources_per_worker=t.scaling.resources_per_worker),
        run_config=RayRunConfig(name=f"{cfg.name}/train", storage_path=storage,
                                checkpoint_config=CheckpointConfig(num_to_keep=t.checkpoint.keep),
                                failure_config=FailureConfig(max_failures=t.failure.max_failures),
                                # Ray Train's INFO lines (one per report and checkpoint) would bury the run's own output
                                logging_config=LoggingConfig(log_level="WARNING"), callbacks=callbacks),
    )


def run_train(cfg: RunConfig):
    """Fit (or resume) the run's training, then draw its loss curve to train/loss.png."""
    from cluster.runtime import init_ray
    from pipelines.shards import exists
    from training.metrics import plot_losses, read_metrics

    if not exists(f"{cfg.data_dir}/manifest.json"):
        raise FileNotFoundError(f"{cfg.data_dir} has no manifest.json: run `raylm data` first")
    init_ray(cfg.ray)
    result = build_trainer(cfg).fit()
    plot_losses(read_metrics(f"{cfg.run_dir}/train/metrics.jsonl"), f"{cfg.run_dir}/train/loss.png", title=cfg.name)
    return result


def summarize(cfg: RunConfig) -> dict:
    """The last step's figures, the last validation loss and the mean throughput, from metrics.jsonl."""
    from training.metrics import read_metrics

    rows = read_metrics(f"{cfg.run_dir}/train/metrics.jsonl")
    if not rows:
        return {}
    ev = [r for r in rows if r.get("val_loss") is not None]
    timed = rows[1:] or rows  # the first step carries one-off costs
    out = {"step": rows[-1]["step"], "tokens": rows[-1]["tokens"], "loss": rows[-1]["loss"],
           "tokens_per_s": sum(r["tokens_per_s"] for r in timed) / len(timed)}
    if ev:
        out.update(val_loss=ev[-1]["val_loss"], val_ppl=ev[-1]["val_ppl"], val_step=ev[-1]["step"])
    mfu = [r["mfu"] for r in timed if r.get("mfu") is not None]
    out["mfu"] = sum(mfu) / len(mfu) if mfu else None
    return out
