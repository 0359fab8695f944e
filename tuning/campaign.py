"""`raylm tune`: a Ray Tune campaign whose trials are full Ray Train runs of the recipe.

Each trial is a Tune function that builds a TorchTrainer for the recipe with the trial's values set
and fits it; Ray Train's TuneReportCallback forwards the loop's reports (eval and checkpoint steps)
to Tune, so a trial may use several workers and GPUs. The shards are the run's data/, written once
by `raylm data`; a trial only reads them. Layout under {storage_path}/{name}/tune/: Tune's
experiment state (what `--resume` restores), trials/<trial_id>/train/ (each trial's Ray Train run:
metrics.jsonl, checkpoints), results.csv, best.yaml, curves.png, params.png.
"""
from __future__ import annotations

from typing import Any

from cluster.config import ConfigError, RunConfig, TuneConfig, absolute
from tuning.space import apply_trial, to_tune, validate_space


def tune_name(name: str) -> str:
    """Tune's experiment name (under storage_path): the campaign directory of run `name`."""
    return f"{name}/tune"


def trial_name(name: str, trial_id: str) -> str:
    """The run name of a trial's Ray Train run, inside the campaign directory."""
    return f"{tune_name(name)}/trials/{trial_id}"


def tune_dir(cfg: RunConfig) -> str:
    return f"{cfg.storage_path.rstrip('/')}/{tune_name(cfg.name)}"


def trial_recipe(recipe: dict, values: dict[str, Any], trial_id: str, data_dir: str) -> dict:
    """The recipe a trial trains: the drawn values set, its own run name, the campaign's shards."""
    r = apply_trial(recipe, values)
    r["name"] = trial_name(recipe["name"], trial_id)
    r["train"]["data_path"] = data_dir
    return r


def run_trial(config: dict, recipe: dict, data_dir: str) -> None:
    """One trial: a Ray Train run reporting to Tune through TuneReportCallback."""
    import ray.tune
    from ray.tune.integration.ray_train import TuneReportCallback

    from training.trainer import build_trainer

    cfg = RunConfig.model_validate(trial_recipe(recipe, config, ray.tune.get_context().get_trial_id(), data_dir))
    result = build_trainer(cfg, callbacks=[TuneReportCallback()]).fit()
    if result.error is not None:
        raise result.error


def _workers_resources(cfg: RunConfig) -> dict[str, float]:
    s = cfg.train.scaling
    per = dict(s.resources_per_worker)
    if s.use_gpu:
        per.setdefault("GPU", 1)
    return {k: v * s.num_workers for k, v in per.items()}


def max_concurrent(cfg: RunConfig, cluster: dict[str, float]) -> int:
    """Trials that fit at once: for every resource a trial needs, what the cluster has / what one takes."""
    if cfg.tune.max_concurrent_trials:
        return cfg.tune.max_concurrent_trials
    need = _workers_resources(cfg)
    fits = [int(cluster.get(k, 0) // v) for k, v in need.items() if v > 0]
    n = min(fits) if fits else 1
    if n < 1:
        raise ConfigError(f"one trial needs {need} (train.scaling) but the cluster has {cluster}")
    return n


def build_scheduler(t: TuneConfig, cfg: RunConfig):
    from ray.tune.schedulers import ASHAScheduler, FIFOScheduler, HyperBandScheduler

    s = t.scheduler
    steps = cfg.train.max_steps
    max_t = steps if s.time_attr == "step" else steps * cfg.train.batch.global_batch_tokens
    grace = s.grace_period or (cfg.train.eval.every if s.time_attr == "step" else cfg.train.eval.every * cfg.train.batch.global_batch_tokens)
    if s.type == "asha":
        return ASHAScheduler(time_attr=s.time_attr, max_t=max_t, grace_period=min(grace, max_t),
                             reduction_factor=s.reduction_factor, brackets=s.brackets)
    if s.type == "hyperband":
        return HyperBandScheduler(time_attr=s.time_attr, max_t=max_t, reduction_factor=s.reduction_factor)
    return FIFOScheduler()


def build_search(t: TuneConfig, space: dict, concurrency: int):
    """Optuna TPE, or Tune's BasicVariantGenerator (random draws, grid entries expanded)."""
    if t.search.type == "optuna":
        from optuna.samplers import TPESampler
        from ray.tune.search import ConcurrencyLimiter
        from ray.tune.search.optuna import OptunaSearch

        if any(kind == "grid" for kind, _ in space.values()):
            raise ConfigError("tune.search.type=optuna: grid entries cannot be searched by TPE; use choice")
        return ConcurrencyLimiter(OptunaSearch(sampler=TPESampler(seed=t.search.seed)), max_concurrent=concurrency)
    if t.search.type == "grid" and any(kind != "grid" for kind, _ in space.values()):
        raise ConfigError("tune.search.type=grid: every param_space entry must be {grid: [...]}")
    from ray.tune.search import BasicVariantGenerator

    return BasicVariantGenerator(random_state=t.search.seed, max_concurrent=concurrency)  # seeded: the same draws every time


def check(cfg: RunConfig) -> dict:
    """Everything about the campaign that can be wrong before Ray starts (ConfigError, exit 2)."""
    space = validate_space(cfg)
    if cfg.tune.metric not in ("val_loss", "val_ppl", "loss"):
        raise ConfigError(f"tune.metric: {cfg.tune.metric!r} is not reported by the loop (val_loss, val_ppl, loss)")
    build_search(cfg.tune, space, 1)
    return space


def run_tune(cfg: RunConfig, resume: bool = False):
    """Run (or, with resume, continue) the campaign; returns Tune's ResultGrid."""
    import ray
    from ray import tune

    from cluster.runtime import init_ray
    from pipelines.shards import exists

    space = check(cfg)
    if not exists(f"{cfg.data_dir}/manifest.json"):
        raise FileNotFoundError(f"{cfg.data_dir} has no manifest.json: run `raylm data` first (trials only read shards)")
    init_ray(cfg.ray)
    storage, data_dir = absolute(cfg.storage_path), absolute(cfg.data_dir)
    recipe = cfg.model_copy(update={"storage_path": storage}).model_dump(mode="json")
    # The trial function only drives a TorchTrainer: its Ray Train workers reserve what the trial uses.
    # Tune rejects an empty request, and any CPU share would make N trials need N x workers + a bit,
    # so it reserves a token byte of memory.
    trainable = tune.with_resources(tune.with_parameters(run_trial, recipe=recipe, data_dir=data_dir), {"memory": 1})
    path = tune_dir(cfg.model_copy(update={"storage_path": storage}))
    if resume:
        if not tune.Tuner.can_restore(path):
            raise FileNotFoundError(f"{path}: no campaign to resume (run `raylm tune` without --resume)")
        tuner = tune.Tuner.restore(path, trainable=trainable, resume_unfinished=True, resume_errored=True)
        return tuner.fit()
    concurrency = max_concurrent(cfg, ray.cluster_resources())
    t = cfg.tune
    tuner = tune.Tuner(
        trainable,
        param_space=to_tune(space),
        tune_config=tune.TuneConfig(metric=t.metric, mode=t.mode, num_samples=t.num_samples,
                                    scheduler=build_scheduler(t, cfg), search_alg=build_search(t, space, concurrency),
                                    max_concurrent_trials=concurrency, time_budget_s=t.time_budget_s),
        run_config=tune.RunConfig(name=tune_name(cfg.name), storage_path=storage, verbose=1),
    )
    return tuner.fit()

