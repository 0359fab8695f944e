"""`raylm tune`: a Ray Tune campaign whose trials are full Ray Train runs of the recipe.

Each trial is a Tune function that builds a TorchTrainer for the recipe with the trial's values set
and fits it; Ray Train's TuneReportCallback forwards the loop's reports (eval and checkpoint steps)
to Tune, so a trial may use several workers and GPUs. The shards are the run's data/, written once
by `raylm data`; a trial only reads them. Layout under {storage_path}/{name}/tune/: Tune's
experiment state (what `--resume` restores), trials/<trial_id>/train/ (each trial's Ray Train run:
metrics.jsonl, checkpoints), results.csv, best.yaml, curves.png, params.png.

PBT exploits through Ray Train checkpoints: a PBT trial reports each of its Ray Train checkpoints to
Tune, and a trial told to continue from another's starts a new Ray Train run from that checkpoint
(trials/<trial_id>/from-<step>-<hash>/train), with the full state (weights, optimizer moments, schedule
position, data order) and its own perturbed values.
"""

from __future__ import annotations

import json
import os
import signal
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any

from raylm.core.paths import RunPaths
from raylm.core.progress import verbose
from raylm.core.schema import ConfigError
from raylm.training import checkpoint
from raylm.training.config import TrainConfig, TrainJob
from raylm.training.driver import PreparedJob, check_diverged, check_task_files, fit_in_thread, preflight
from raylm.training.tracking import campaign_tracking, end_campaign
from raylm.tuning.config import Recipe, TuneConfig
from raylm.tuning.datasections import check_data_keys, value_key
from raylm.tuning.results import OUTCOME
from raylm.tuning.space import apply_trial, to_tune, validate_space

if TYPE_CHECKING:
    from raylm.tuning.mailboxes import Box

TRIALS_HINT = " (trials only read shards)"  # what a campaign's missing-shards message adds

# What PBT may change under a running model: optimizer hyperparameters and dropout, not its shape or data.
PBT_KEYS = ("train.optim.", "train.model.dropout")


def pbt_interval_steps(tune: TuneConfig, train: TrainConfig) -> int:
    """Steps between PBT perturbations (and so between a PBT trial's checkpoints)."""
    s = tune.scheduler
    if s.perturbation_interval is None:
        return train.checkpoint.every
    if s.time_attr == "step":
        return s.perturbation_interval
    return s.perturbation_interval // train.batch.global_batch_tokens


def trial_recipe(recipe: dict, values: dict[str, Any], trial_id: str, data_dir: str, segment: str | None = None) -> dict:
    """The recipe a trial trains: the drawn values set, its own run name, the campaign's shards.
    A PBT trial checkpoints at every perturbation; `segment` names the run of a trial that continues
    from a checkpoint Tune handed it."""
    r = apply_trial(recipe, values)
    r["name"] = RunPaths(recipe["storage_path"], recipe["name"]).trial(trial_id).name + (f"/{segment}" if segment else "")
    r["train"]["data_path"] = data_dir
    if recipe["tune"]["scheduler"]["type"] == "pbt":
        r["train"]["checkpoint"]["every"] = pbt_interval_steps(TuneConfig.model_validate(recipe["tune"]), TrainConfig.model_validate(recipe["train"]))
        r["train"]["report_every"] = None  # every report must carry the metric PBT ranks by
    return r


def run_trial(config: dict, recipe: dict, data_dir: str, mail: Box, tracking: dict | None = None, data_dirs: dict | None = None) -> None:
    """One trial: a Ray Train run reporting to Tune through TuneReportCallback (PBT: with its checkpoints).
    Its workers wait at each report until Tune lets the trial go on (AckReports), so a trial the
    scheduler stops at a rung has trained exactly to the rung. `mail`: the campaign's mailboxes (the box of
    placement groups; the run's own boxes are new keys of it). `data_dirs`: a data ablation's sections, by the
    trial's data values (tuning/datasections.py)."""
    import ray.tune
    from ray.tune.integration.ray_train import TuneReportCallback

    from raylm.training.driver import build_trainer
    from raylm.tuning.forward import AckReports
    from raylm.tuning.reservations import RecordPlacementGroup

    trial_id = ray.tune.get_context().get_trial_id()
    data_dir = data_dirs[value_key(config)] if data_dirs else data_dir
    if recipe["tune"]["scheduler"]["type"] == "pbt":
        return _run_pbt_trial(config, recipe, data_dir, trial_id, mail, tracking)
    job = PreparedJob.derived(trial_recipe(recipe, config, trial_id, data_dir))
    callbacks: list = [TuneReportCallback(), RecordPlacementGroup(mail, trial_id)]
    acks = None
    if recipe["tune"]["scheduler"]["type"] in ("asha", "hyperband"):  # they stop trials early; FIFO never does
        acks = mail.new(f"acks/{trial_id}")
        callbacks.append(AckReports(acks))
    try:
        result = build_trainer(job, callbacks=callbacks, acks=acks, tracking=_trial_tracking(tracking, trial_id)).fit()
    finally:
        if acks is not None:
            acks.drop()
    if result.error is not None:
        raise result.error
    check_diverged(job.paths)  # a trial whose loss stopped being finite ends as an error, with the step


def _trial_tracking(tracking: dict | None, trial_id: str) -> dict | None:
    """The campaign's tracking, with the trial's own run name (an MLflow child run, a W&B run in the group)."""
    return {**tracking, "run_name": trial_id} if tracking else None


def _checkpoint_meta(ckpt) -> dict:
    """A checkpoint's meta.json: its step, and the run that wrote it (Tune hands over its own copy)."""
    with ckpt.as_directory() as d:
        return checkpoint.read_meta(f"{d}/{checkpoint.META}")


def _segment(start, step: int) -> str:
    """The run name of a trial continuing from Tune checkpoint `start`: its step, and a hash of where it
    lies (another trial's checkpoint at the same step is another run)."""
    import xxhash

    return f"from-{step:06d}-{xxhash.xxh32_hexdigest(start.path.encode())}"


def _url(ckpt) -> str:
    """A Tune checkpoint's location as a path or URL that fsspec opens on any node."""
    from pyarrow.fs import LocalFileSystem

    if isinstance(ckpt.filesystem, LocalFileSystem):
        return ckpt.path
    return f"{ckpt.filesystem.type_name}://{ckpt.path}".replace("gcs://", "gs://")


def _run_pbt_trial(config: dict, recipe: dict, data_dir: str, trial_id: str, mail: Box, tracking: dict | None = None) -> None:
    """Fit the trial's TorchTrainer in a thread while this one hands each report, with its checkpoint,
    to Tune: TuneReportCallback forwards metrics only, and PBT exploits through checkpoints."""

    import ray.train
    import ray.tune

    from raylm.training.driver import build_trainer
    from raylm.tuning.forward import ForwardReports
    from raylm.tuning.reservations import RecordPlacementGroup

    start = ray.tune.get_checkpoint()
    meta = _checkpoint_meta(start) if start is not None else {"step": 0}
    step = meta["step"]
    if step >= recipe["train"]["max_steps"]:  # handed a finished run's checkpoint: nothing left to train
        return _adopt_finished(start, meta, config, recipe, data_dir, trial_id)
    job = PreparedJob.derived(trial_recipe(recipe, config, trial_id, data_dir, _segment(start, step) if step else None))
    reports = mail.new(f"reports/{trial_id}")
    start_from = _url(start) if start is not None else None
    callbacks = [ForwardReports(reports), RecordPlacementGroup(mail, trial_id)]
    trainer = build_trainer(job, callbacks=callbacks, start_from=start_from, tracking=_trial_tracking(tracking, trial_id))

    def forward(worker) -> bool:  # every report, the ones left once fit has returned too
        running = worker.is_alive()  # before the wait: a report put before fit returned is in the box by then
        got = reports.get(timeout=0.5)
        for metrics, ckpt in got:
            ray.tune.report(metrics, checkpoint=ray.tune.Checkpoint(ckpt.path, ckpt.filesystem) if ckpt else None)
        return running or bool(got)

    try:
        result = fit_in_thread(trainer, forward)
    finally:
        reports.drop()
    if result.error is not None:
        raise result.error
    check_diverged(job.paths)


def _adopt_finished(start, meta: dict, config: dict, recipe: dict, data_dir: str, trial_id: str) -> None:
    """PBT handed this trial another's final checkpoint: the trial ends holding that finished model. Its
    history gets the donor's row at that step (in from-<step>-<hash>/, like any continuation) and Tune gets
    it as the trial's last result, so the trial is done at max_steps with the metric of the model it holds."""
    import fsspec
    import ray.tune

    from raylm.training.metrics import read_metrics

    own = RunPaths(recipe["storage_path"], recipe["name"]).trial(trial_id).name
    if f"/{own}/" in f"{meta['run_dir']}/":  # its own final checkpoint: already done
        return
    step, donor = meta["step"], RunPaths.at(meta["run_dir"]).metrics
    rows = [r for r in read_metrics(donor) if r["step"] == step]
    if not rows:
        raise RuntimeError(f"{donor}: no row of step {step}, the step of the checkpoint PBT handed over")
    job = TrainJob.from_recipe(trial_recipe(recipe, config, trial_id, data_dir, _segment(start, step)))
    with fsspec.open(job.paths.metrics, "w", auto_mkdir=True) as f:
        f.write(json.dumps(rows[-1]) + "\n")
    ray.tune.report(rows[-1])


def _workers_resources(cfg: Recipe) -> dict[str, float]:
    s = cfg.train.scaling
    per = dict(s.resources_per_worker)
    if s.use_gpu:
        per.setdefault("GPU", 1)
    return {k: v * s.num_workers for k, v in per.items()}


def max_concurrent(cfg: Recipe, cluster: dict[str, float]) -> int:
    """Trials that fit at once: for every resource a trial needs, what the cluster has / what one takes."""
    if cfg.tune.max_concurrent_trials:
        return cfg.tune.max_concurrent_trials
    need = _workers_resources(cfg)
    fits = [int(cluster.get(k, 0) // v) for k, v in need.items() if v > 0]
    n = min(fits) if fits else 1
    if n < 1:
        raise ConfigError(f"one trial needs {need} (train.scaling) but the cluster has {cluster}")
    return n


def build_scheduler(t: TuneConfig, cfg: Recipe, space: dict):
    from ray.tune.schedulers import ASHAScheduler, FIFOScheduler, HyperBandScheduler, PopulationBasedTraining

    s = t.scheduler
    if s.type == "pbt":
        # Tune's own PBT: perturbs (x0.8 / x1.2, or the next choice) or redraws from the searched distribution
        interval = pbt_interval_steps(cfg.tune, cfg.train) * (1 if s.time_attr == "step" else cfg.train.batch.global_batch_tokens)
        return PopulationBasedTraining(
            time_attr=s.time_attr,
            perturbation_interval=interval,
            hyperparam_mutations=to_tune(space),
            quantile_fraction=s.quantile_fraction,
            resample_probability=s.resample_probability,
            synch=s.synch,
        )
    steps = cfg.train.max_steps
    max_t = steps if s.time_attr == "step" else steps * cfg.train.batch.global_batch_tokens
    grace = s.grace_period or (cfg.train.eval.every if s.time_attr == "step" else cfg.train.eval.every * cfg.train.batch.global_batch_tokens)
    if s.type == "asha":
        return ASHAScheduler(
            time_attr=s.time_attr, max_t=max_t, grace_period=min(grace, max_t), reduction_factor=s.reduction_factor, brackets=s.brackets
        )
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


def check(cfg: Recipe) -> dict:
    """Everything about the campaign that can be wrong before Ray starts (ConfigError, exit 2)."""
    space = validate_space(cfg)
    check_metric(cfg)
    build_search(cfg.tune, space, 1)
    check_data_keys(cfg, space)
    if cfg.tune.scheduler.type == "pbt":
        _check_pbt(cfg, space)
    return space


LOOP_METRICS = ("val_loss", "val_ppl", "val_bpb", "loss")
TASK_METRICS = {"multiple_choice": ("acc", "acc_norm"), "cloze": ("acc", "bpb")}


def check_metric(cfg: Recipe) -> None:
    """tune.metric: one the loop reports, or a task metric of train.eval.tasks (tasks/core, tasks/<name>/<metric>)
    with the mode that makes it better (max for accuracies and CORE, min for bits per byte)."""
    m = cfg.tune.metric
    if m in LOOP_METRICS:
        return
    if not m.startswith("tasks/"):
        raise ConfigError(f"tune.metric: {m!r} is not reported by the loop ({', '.join(LOOP_METRICS)}, or tasks/core with train.eval.tasks)")
    if not cfg.train.eval.tasks:
        raise ConfigError(f"tune.metric: {m!r} needs train.eval.tasks (the task files scored at each evaluation)")
    headers = check_task_files(cfg.train.eval.tasks)
    known = ["tasks/core", *(f"tasks/{h.name}/{k}" for h in headers for k in TASK_METRICS[h.kind])]
    if m not in known:
        raise ConfigError(f"tune.metric: {m!r} is not a metric of train.eval.tasks ({', '.join(known)})")
    better = "min" if m.endswith("/bpb") else "max"
    if cfg.tune.mode != better:
        higher = "lower" if better == "min" else "higher"
        raise ConfigError(f"tune.mode: {cfg.tune.mode!r} with tune.metric {m!r}, which is better {higher}: set tune.mode: {better}")


def _check_pbt(cfg: Recipe, space: dict) -> None:
    s, t = cfg.tune.scheduler, cfg.train
    for key, (kind, _) in space.items():
        if not key.startswith(PBT_KEYS):
            raise ConfigError(
                f"tune.param_space.{key}: PBT changes values under a running model; it can search "
                f"{', '.join(k + '*' if k.endswith('.') else k for k in PBT_KEYS)} only"
            )
        if kind == "grid":
            raise ConfigError(f"tune.param_space.{key}: PBT cannot perturb a grid entry; use choice")
    if s.time_attr == "tokens" and s.perturbation_interval and s.perturbation_interval % t.batch.global_batch_tokens:
        raise ConfigError(
            f"tune.scheduler.perturbation_interval: {s.perturbation_interval} tokens is not a whole number "
            f"of steps ({t.batch.global_batch_tokens} tokens each)"
        )
    steps = pbt_interval_steps(cfg.tune, cfg.train)
    if steps < 1 or steps % t.eval.every:
        raise ConfigError(
            f"tune.scheduler.perturbation_interval: {steps} steps must be a multiple of train.eval.every "
            f"({t.eval.every}): PBT ranks trials by the metric at each checkpoint"
        )


def run_tune(cfg: Recipe, job: PreparedJob | None = None, resume: bool = False, data_dirs: dict[str, str] | None = None):
    """Run (or, with resume, continue) the campaign of the recipe, whose train job `job` is (prepared here when
    not given); returns Tune's ResultGrid. `data_dirs`: a data ablation's built sections (datasections.section_dirs),
    every trial then evaluated on the campaign's own val split unless train.eval.data_path names another."""
    from ray import tune

    from raylm.tuning.reservations import open_campaign_mailboxes

    if not verbose():  # Tune's own console output (config boxes, a result dump per trial) gives way to progress.TrialTable
        os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")  # whose verbose=0 prints nothing, unlike the new engine's

    # train.scaling auto: resolved once for the cluster, so every trial has the same layout and the space's
    # values are checked against it (a micro-batch that does not divide the global batch fails here)
    job = job or preflight(cfg.train_job(), own=False, hint=TRIALS_HINT)
    cfg = cfg.model_copy(update={"train": job.train})
    space = check(cfg)
    storage, data_dir = job.paths.storage_path, job.paths.shards
    recipe = job.recipe  # every trial's, with its own values: paths absolute, layout resolved
    if data_dirs and not recipe["train"].get("eval", {}).get("data_path"):
        recipe = {**recipe, "train": {**recipe["train"], "eval": {**recipe["train"].get("eval", {}), "data_path": data_dir}}}
    tracking = campaign_tracking(job, cfg.name, recipe)  # MLflow: the parent run of the trials'
    # The trial function only drives a TorchTrainer: its Ray Train workers reserve what the trial uses.
    # Tune rejects an empty request, and any CPU share would make N trials need N x workers + a bit,
    # so it reserves a token byte of memory.
    mail = open_campaign_mailboxes()  # placement groups (released as each trial ends), acknowledgements, PBT reports
    trainable = tune.with_parameters(run_trial, recipe=recipe, data_dir=data_dir, mail=mail, tracking=tracking, data_dirs=data_dirs)
    trainable = tune.with_resources(trainable, {"memory": 1})
    path = RunPaths(storage, cfg.name).tune
    if resume:
        if not tune.Tuner.can_restore(path):
            raise FileNotFoundError(f"{path}: no campaign to resume (run `raylm tune` without --resume)")
        tuner = tune.Tuner.restore(path, trainable=trainable, resume_unfinished=True, resume_errored=True)
    else:
        tuner = _new_tuner(cfg, trainable, space, storage)
    try:
        with _interrupts_recorded(mail):
            return tuner.fit()
    finally:
        end_campaign(tracking)


@contextmanager
def _interrupts_recorded(mail: Box) -> Iterator[None]:
    """Ctrl-C (and SIGTERM, which raylm turns into it) end the campaign through Tune's SIGUSR1 handler, which saves
    the experiment's state and returns its results; this SIGINT handler (in place of Tune's own) records that it
    happened (results.OUTCOME), which those results do not say, and tells the trials (`mail`, the campaign's
    mailboxes: a trial whose workers start after this does not train). A second Ctrl-C stops at once."""
    from raylm.tuning.mailboxes import INTERRUPTED

    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def handler(signum, frame) -> None:
        if OUTCOME.interrupted or not callable(signal.getsignal(signal.SIGUSR1)):  # not yet in Tune's loop: plain Ctrl-C
            raise KeyboardInterrupt
        OUTCOME.interrupted = True
        # from a thread: a Ray call made in a signal handler could wait on a lock the interrupted code holds
        threading.Thread(target=mail.at(INTERRUPTED).put, args=(True,), name="raylm-interrupted", daemon=True).start()
        signal.raise_signal(signal.SIGUSR1)

    os.environ["TUNE_DISABLE_SIGINT_HANDLER"] = "1"
    OUTCOME.interrupted, previous = False, signal.signal(signal.SIGINT, handler)
    OUTCOME.ended.clear()
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)


def _new_tuner(cfg: Recipe, trainable, space: dict, storage: str):
    import ray
    from ray import tune

    from raylm.tuning.progress import TrialTable
    from raylm.tuning.reservations import ReleaseReservations

    concurrency = max_concurrent(cfg, ray.cluster_resources())
    t = cfg.tune
    return tune.Tuner(
        trainable,
        param_space=to_tune(space),
        tune_config=tune.TuneConfig(
            metric=t.metric,
            mode=t.mode,
            num_samples=t.num_samples,
            scheduler=build_scheduler(t, cfg, space),
            search_alg=build_search(t, space, concurrency),
            max_concurrent_trials=concurrency,
            time_budget_s=t.time_budget_s,
        ),
        run_config=tune.RunConfig(
            name=cfg.paths.tune_name,
            storage_path=storage,
            verbose=int(verbose()),
            callbacks=[TrialTable(cfg, list(space)), ReleaseReservations(_workers_resources(cfg))],
        ),
    )
