"""`raylm train`: the recipe's train section wired into Ray Train's TorchTrainer.

Running it again on the same run resumes from the latest checkpoint (Ray Train restores a run
found at storage_path/name); a failed worker is restarted from it up to failure.max_failures times.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import dataclass

from raylm.core.changes import changes
from raylm.core.manifest import read_manifest, require_shards
from raylm.core.paths import TOKENIZER, RunPaths
from raylm.core.schema import ConfigError
from raylm.training.config import TrainConfig, TrainJob

# what the missing-shards message adds when they are another run's
DATA_PATH_HINT = " (it is train.data_path: raylm reads those shards, it does not build them)"


@dataclass(frozen=True)
class PreparedJob(TrainJob):
    """A job `preflight` has checked and laid out: local paths absolute (Ray workers do not share the driver's
    working directory) and train.scaling resolved for the cluster. build_trainer and run_train take it as it is."""

    @classmethod
    def derived(cls, recipe: dict) -> PreparedJob:
        """The job of a prepared job's recipe with other values set and its own run name (a Tune trial's): validated
        again, its batch rule included (its layout being resolved)."""
        job = TrainJob.from_recipe(recipe)
        if not job.train.scaling.resolved:
            raise ValueError("a derived job keeps the prepared job's resolved train.scaling")
        return cls(job.train, job.paths, job.recipe)


def optimizer_plan(job: TrainJob) -> list[str]:
    """Which tensors each optimizer updates, at which lr and weight decay, a line per group: the model built on the
    meta device (no memory, no initialization cost) from the recipe and the shards' vocabulary."""
    import torch

    from raylm.training.model import GPT, GPTConfig
    from raylm.training.optim import describe_groups

    tok = read_manifest(job.paths.shards).tokenizer
    with torch.device("meta"):
        model = GPT(GPTConfig.from_config(job.train.model, tok.n_vocab, tok.eot))
    return describe_groups(model, job.train.optim)


def preflight(
    job: TrainJob, own: bool = True, hint: str = "", connect: Callable[[], None] | None = None, nodes: list[dict[str, float]] | None = None
) -> PreparedJob:
    """The train job checked and resolved once per command, before anything trains: its shards exist (`hint`: what
    their absence adds, DATA_PATH_HINT for train.data_path); with `own` (the command trains the run's own train/,
    as `raylm train` and `run` do), its checkpoints are of this recipe (check_resume) and train.init_from fits it
    (check_init_from). Then `connect` (Ray: nothing above needs it, so what can be wrong fails before it starts),
    and train.scaling resolved for the cluster (or `nodes`): ConfigError when the batch does not divide among them."""
    from raylm.training.scaling import resolve_job

    job = job.absolute()
    man = require_shards(job.paths.shards, DATA_PATH_HINT if job.train.data_path else hint)
    check_eval_data(job, man)
    check_task_files(job.train.eval.tasks)
    if own:
        check_resume(job)
        if job.train.init_from:
            check_init_from(job)
    if connect is not None:
        connect()
    job = resolve_job(job, nodes)
    return PreparedJob(job.train, job.paths, job.recipe)


def check_eval_data(job: TrainJob, man) -> None:
    """train.eval.data_path: finished shards with a val split, tokenized as the training shards are."""
    path = job.train.eval.data_path
    if path is None:
        return
    ev = require_shards(path, " (train.eval.data_path: the shards whose val split evaluations read)")
    if ev.tokenizer.sha256 != man.tokenizer.sha256 or ev.tokenizer.n_vocab != man.tokenizer.n_vocab:
        raise ConfigError(
            f"train.eval.data_path: {path} was tokenized with {ev.tokenizer.name}, the training shards with {man.tokenizer.name} (other ranks)"
        )
    if ev.splits["val"].tokens <= job.train.model.seq_len:
        raise ConfigError(f"train.eval.data_path: {path} has a val split of {ev.splits['val'].tokens} tokens, not one window of train.model.seq_len")


def build_trainer(job: TrainJob, callbacks: list | None = None, start_from: str | None = None, acks=None, tracking: dict | None = None):
    """A TorchTrainer for the job (prepared here unless it is a PreparedJob; `callbacks`: Ray Train UserCallbacks,
    e.g. Tune's report callback; `start_from`: a checkpoint directory whose full state a new run continues from, as
    a PBT trial does from another's; the run's own checkpoints, after a failure, take precedence; `acks`: a box
    that acknowledges each report, which the workers wait for before training on, as Tune trials do; `tracking`:
    where rank 0's MLflow / W&B runs go, training.tracking.tracking_info, resolved here when not given)."""
    from ray.train import CheckpointConfig, FailureConfig, LoggingConfig, ScalingConfig
    from ray.train import RunConfig as RayRunConfig
    from ray.train.torch import TorchTrainer

    from raylm.training.worker import train_loop_per_worker

    job = job if isinstance(job, PreparedJob) else preflight(job, own=False)  # the workers and checkpoints carry the layout used
    t = job.train
    if tracking is None and {"mlflow", "wandb"} & set(t.loggers):
        from raylm.training.tracking import tracking_info

        tracking = tracking_info(job)
    return TorchTrainer(
        train_loop_per_worker,
        train_loop_config={"job": job, "start_from": start_from, "acks": acks, "tracking": tracking},
        scaling_config=ScalingConfig(
            num_workers=t.scaling.num_workers, use_gpu=t.scaling.use_gpu, resources_per_worker=t.scaling.resources_per_worker
        ),
        run_config=RayRunConfig(
            name=job.paths.train_name,
            storage_path=job.paths.storage_path,
            checkpoint_config=CheckpointConfig(num_to_keep=t.checkpoint.keep),
            failure_config=FailureConfig(max_failures=t.failure.max_failures),
            # Ray Train's INFO lines (one per report and checkpoint) would bury the run's own output
            logging_config=LoggingConfig(log_level="WARNING"),
            callbacks=callbacks,
        ),
    )


def fit_in_thread(trainer, wait: Callable[[threading.Thread], bool]):
    """trainer.fit() in a daemon thread while this one calls `wait(thread)` until it returns False (it should
    return within about a second, so that signals are handled here); then fit's result, or its error raised."""
    out: dict = {}

    def fit() -> None:
        try:
            out["result"] = trainer.fit()
        except BaseException as e:  # re-raised below, on the caller's thread
            out["error"] = e

    worker = threading.Thread(target=fit, name="raylm-train-fit", daemon=True)
    worker.start()
    while wait(worker):
        pass
    worker.join()
    if "error" in out:
        raise out["error"]
    return out["result"]


def fit_interruptibly(trainer):
    """trainer.fit() off the main thread, so that Ctrl-C (and SIGTERM, cluster.runtime) reach this command as a
    KeyboardInterrupt, as everywhere else in raylm (run.json "interrupted", exit 1, the run resumable). On the main
    thread Ray Train installs its own SIGINT handler, which aborts the run and then ends the process from inside
    ray.get with SystemExit(1): recorded as a failure. The workers and the controller end with this process."""

    def wait(worker: threading.Thread) -> bool:
        worker.join(timeout=0.5)  # a short wait: a signal's handler runs between two
        return worker.is_alive()

    return fit_in_thread(trainer, wait)


class TrainingDiverged(RuntimeError):
    """Training stopped on losses or weights that are not finite (train.max_nonfinite_losses): exit 1."""


def check_diverged(paths: RunPaths, rows: list[dict] | None = None) -> None:
    """TrainingDiverged, with the step and the checkpoint left as the latest, if the run's last metrics row
    says training stopped on non-finite values (training/worker.py: Trainer.divergence). `rows`: metrics.jsonl
    when the caller has read it already."""
    from raylm.training import checkpoint
    from raylm.training.metrics import read_metrics

    rows = read_metrics(paths.metrics) if rows is None else rows
    if not rows or not rows[-1].get("diverged"):
        return
    try:
        step = checkpoint.read_meta(f"{checkpoint.latest(paths.root)}/{checkpoint.META}")["step"]
        kept = f"the latest checkpoint, step {step}, is the last with finite weights"
    except FileNotFoundError:
        kept = "no checkpoint was written"
    raise TrainingDiverged(f"training stopped: {rows[-1]['diverged']}; {kept}. Lower train.optim.lr (or warm up longer) and train under a new name")


def run_train(job: TrainJob, started: float | None = None):
    """Fit (or resume) the run's training (of the job, prepared here unless it is a PreparedJob) with progress
    lines on this (the driver's) output, then draw its loss curve to train/loss.png. Runs on the Ray instance this process is connected to
    (cluster.runtime.init_ray), else a new local one. `started`: time.time() when the command began."""
    from raylm.training.config import log_interval
    from raylm.training.metrics import plot_losses, read_metrics
    from raylm.training.progress import TrainProgress

    job = job if isinstance(job, PreparedJob) else preflight(job)
    trainer = build_trainer(job)
    with TrainProgress(job.paths.metrics, job.train.max_steps, log_interval(job.train), started):
        result = fit_interruptibly(trainer)
    rows = read_metrics(job.paths.metrics)
    plot_losses(rows, job.paths.loss_plot, title=job.paths.name)
    if "mlflow" in job.train.loggers:
        from raylm.training.tracking import log_final

        log_final(job.paths, result.checkpoint.path if result.checkpoint is not None else None)
    if result.error is None:
        check_diverged(job.paths, rows)
    return result


def init_checkpoint(init_from: str) -> tuple[str, dict]:
    """The checkpoint `train.init_from` names, and its meta.json; a FileNotFoundError naming the key when there
    is none. `run` and `tune` check it before Ray starts, ahead of the data stage."""
    from raylm.training import checkpoint

    try:
        ckpt = checkpoint.latest(init_from)
    except FileNotFoundError as e:
        raise FileNotFoundError(f"train.init_from: {e}") from None
    return ckpt, checkpoint.read_meta(f"{ckpt}/{checkpoint.META}")


def check_task_files(paths: list[str]) -> list:
    """train.eval.tasks: every file there and its header a task's (read as the workers will), before Ray starts;
    a ConfigError naming the key otherwise. Returns the files' headers (core.taskfile.TaskHeader)."""
    from raylm.training.tasks import read_task, task_files

    headers = []
    for k, path in enumerate(paths):
        try:
            headers += [read_task(f).header for f in task_files([path])]
        except (OSError, ValueError) as e:  # missing or unreadable, or not a task file
            raise ConfigError(f"train.eval.tasks[{k}]: {e}") from None
    return headers


def check_init_from(job: TrainJob) -> str:
    """The checkpoint `train.init_from` names, after checking (from its meta.json, without loading
    weights) that its model has the recipe's shape and its tokenizer made the shards. Raises
    FileNotFoundError or ConfigError with what differs."""
    ckpt, meta = init_checkpoint(job.train.init_from)
    want = job.train.model.model_dump(mode="json")
    have = meta.get("model")
    # dropout and document masking are training choices, not shapes: a fine-tune may change them
    diff = {k: (have[k], want[k]) for k in want if k not in ("dropout", "document_mask") and have is not None and have.get(k) != want[k]}
    if diff:
        raise ConfigError(
            f"train.init_from: {ckpt} has a different model: "
            + ", ".join(f"train.model.{k} is {w!r} there, {v!r} here" for k, (w, v) in diff.items())
        )
    tok = read_manifest(job.paths.shards).tokenizer
    if meta.get("tokenizer_sha256", tok.sha256) != tok.sha256:
        raise ConfigError(
            f"train.init_from: {ckpt} was trained with another tokenizer ({meta['tokenizer']}) than the one "
            f"that made {job.paths.shards} ({tok.name}); tokenize with the pretrained run's "
            f"(data.tokenizer.path: RUN/data/{TOKENIZER})"
        )
    return ckpt


# train keys a resumed run may change: how long it trains, how often it evaluates, saves and logs, where metrics
# go, its layout, retries and kernels; any other change (a new section too) would continue one recipe's state
# under another
RESUME_SAFE = tuple(
    f"train.{k}"
    for k in (
        "max_steps",
        "max_nonfinite_losses",
        "eval",
        "checkpoint",
        "report_every",
        "log_every",
        "loggers",
        "scaling",
        "parallelism",  # DCP reshards a checkpoint between DDP and FSDP2
        "failure",
        "precision",
        "compile",
        "init_from",
    )
)


def resume_changes(meta: dict, train: TrainConfig) -> list[str]:
    """The train keys outside RESUME_SAFE that differ between a checkpoint's meta.json and `train`, in words
    (core/changes.py; checkpoints from before meta.json held the train section: the model only)."""
    want, defaults = train.model_dump(mode="json"), type(train)().model_dump(mode="json")
    have = meta.get("train")
    if have is None:
        have, want, defaults = {"model": meta.get("model")}, {"model": want["model"]}, {"model": defaults["model"]}
    return [f"{k} is {a!r} there, {b!r} here" for k, (a, b) in changes(have, want, "train", RESUME_SAFE, defaults).items()]


def check_resume(job: TrainJob) -> None:
    """A run with checkpoints resumes: refuse (ConfigError) when the recipe's train section differs from the one
    its latest checkpoint was trained with (resume_changes), or the sources' weights do."""
    from raylm.training import checkpoint
    from raylm.training.mixture import recipe_weights

    try:
        ckpt = checkpoint.latest(job.paths.root)
    except FileNotFoundError:
        return
    meta = checkpoint.read_meta(f"{ckpt}/{checkpoint.META}")
    diff = resume_changes(meta, job.train)
    weights = recipe_weights(job.recipe)
    if meta.get("weights") and meta["weights"] != weights:  # a mixture drawn by other weights
        diff.append(f"data.sources weights are {meta['weights']} there, {weights} here")
    if diff:
        shown = "; ".join(diff[:4]) + (f"; and {len(diff) - 4} more" if len(diff) > 4 else "")
        raise ConfigError(
            f"{job.paths.train} has checkpoints (step {meta['step']}) of another recipe: {shown}. `raylm train` resumes a run "
            f"with its own recipe (raise train.max_steps to train longer); give this one a new name (--set name=...) or remove the run"
        )


def summarize(paths: RunPaths, started: float | None = None) -> dict:
    """The last step's figures, the last validation loss (and task metrics) and the mean throughput, from metrics.jsonl; with
    `started` (time.time() when the command began), the seconds to this invocation's first step finished
    (`first_step_s`: Ray, worker group, model build, shard mapping) and to its last (`train_s`)."""
    from raylm.training.metrics import read_metrics

    rows = read_metrics(paths.metrics)
    if not rows:
        return {}
    mine = [r["time"] for r in rows if started is not None and r.get("time", 0) >= started]
    ev = [r for r in rows if r.get("val_loss") is not None]
    timed = rows[1:] or rows  # the first step carries one-off costs
    out = {
        "step": rows[-1]["step"],
        "tokens": rows[-1]["tokens"],
        "loss": rows[-1]["loss"],
        "tokens_per_s": sum(r["tokens_per_s"] for r in timed) / len(timed),
    }
    if ev:
        out.update(val_loss=ev[-1]["val_loss"], val_ppl=ev[-1]["val_ppl"], val_bpb=ev[-1].get("val_bpb"), val_step=ev[-1]["step"])
        for key in ("val_sources", "val_mixture"):
            if ev[-1].get(key):
                out[key] = ev[-1][key]
    tasked = [r for r in ev if r.get("tasks/core") is not None]
    if tasked:  # train.eval.tasks: the last evaluation's task metrics
        from raylm.training.tasks import scalars

        out.update(tasks=scalars(tasked[-1]), tasks_step=tasked[-1]["step"])
    mfu = [r["mfu"] for r in timed if r.get("mfu") is not None]
    out["mfu"] = sum(mfu) / len(mfu) if mfu else None
    if mine:
        out.update(first_step_s=min(mine) - started, train_s=max(mine) - started)
    return out
