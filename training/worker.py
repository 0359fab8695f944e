"""The training loop run by every Ray Train worker: the model (DDP or FSDP2, see parallel.py),
shard loader, AdamW with warmup and decay, gradient accumulation up to `batch.global_batch_tokens`,
clipping, periodic evaluation, per-step metrics through `ray.train.report` (and metrics.jsonl /
TensorBoard on rank 0), checkpoints that carry everything an exact resume needs (checkpoint.py).
"""

from __future__ import annotations

import logging
import math
import random
import tempfile
import time
from collections.abc import Callable
from contextlib import nullcontext

import numpy as np
import torch

from raylm.core.manifest import read_manifest
from raylm.training import checkpoint, saving
from raylm.training.config import TrainJob, accumulation_steps
from raylm.training.data import ShardWindows, TrainLoader, val_windows
from raylm.training.evaluate import lm_metrics, window_batches
from raylm.training.metrics import MetricsLog, bits_per_byte, split_bpb
from raylm.training.mixture import MixtureLoader, recipe_weights, schedule_of, weighted_total, weights_at
from raylm.training.model import GPT, GPTConfig
from raylm.training.optim import build_optimizer, build_scheduler, hyperparams, reapply_hyperparams
from raylm.training.parallel import autocast, grad_sync, parallelize

# bf16 dense peak of the accelerators MFU is reported against (per GPU); null where unknown or CPU
PEAK_FLOPS = {"H100": 989e12, "H200": 989e12, "A100": 312e12}


def _quiet_ray_train_reports() -> None:
    # Ray Train V2 logs each report at INFO under a logger named by its source file, outside the
    # "ray.train" logger that RunConfig's LoggingConfig filters; the driver's output stays ours
    for name in list(logging.root.manager.loggerDict):
        if "ray/train/" in name:
            logging.getLogger(name).setLevel(logging.WARNING)


def cpu_threads(t) -> int:
    """Intra-op threads of a CPU worker: the CPUs it reserved (Ray's default OMP_NUM_THREADS may differ)."""
    return max(1, int(t.scaling.resources_per_worker.get("CPU", 1)))


def peak_flops(device: torch.device) -> float | None:
    if device.type != "cuda":
        return None
    name = torch.cuda.get_device_name(device)
    return next((v for k, v in PEAK_FLOPS.items() if k in name), None)


def await_ack(acks, rank: int, world: int) -> None:
    """Wait until the last report is acknowledged (a Tune trial: until Tune lets it continue); rank 0
    takes the acknowledgement, the others wait for rank 0."""
    if rank == 0:
        acks.get()
    if world > 1:
        torch.distributed.barrier()


def masked_weights(masks: list[torch.Tensor], world: int) -> list[torch.Tensor]:
    """Per micro-batch multipliers of the masked mean loss so that the step's gradient is that of the
    mean over every counted target of the step, on all ranks (micro-batch i weighs n_i * world / N,
    N all-reduced; DDP then averages over ranks). Equal weights 1/accum would weigh a micro-batch
    of few completion tokens as much as one of many."""
    counts = torch.stack([m.sum().to(torch.float32) for m in masks])
    total = counts.sum()
    if world > 1:
        torch.distributed.all_reduce(total)
    return list(counts * world / total.clamp_min(1))


def train_step(
    model: torch.nn.Module,
    opt: torch.optim.Optimizer,
    sched,
    loader: TrainLoader,
    accum: int,
    clip: float,
    amp,
    device: torch.device,
    world: int,
    before_update: Callable[[], None] | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """One optimizer step over `accum` micro-batches (gradient sync on the last only), clipped;
    returns the mean loss across micro-batches and ranks (per counted target under a loss mask),
    and the pre-clip gradient norm. `before_update` runs just before the weights change (an in-place
    asynchronous save waits there)."""
    batches = [tuple(a.to(device, non_blocking=True) if a is not None else None for a in loader.next()) for _ in range(accum)]
    masked = batches[0][2] is not None
    weights = masked_weights([b[2] for b in batches], world) if masked else None
    loss_sum = torch.zeros((), device=device)
    for micro, (x, y, m) in enumerate(batches):
        with grad_sync(model, micro == accum - 1), amp:
            _, loss = model(x, y, loss_mask=m)
            (loss * weights[micro] if masked else loss / accum).backward()
        loss_sum += loss.detach() * weights[micro] if masked else loss.detach()
    grad_norm = torch.nn.utils.clip_grad_norm_(model.parameters(), clip)
    grad_norm = grad_norm.full_tensor() if hasattr(grad_norm, "full_tensor") else grad_norm  # FSDP2: a DTensor
    if before_update is not None:
        before_update()
    opt.step()
    sched.step()
    opt.zero_grad(set_to_none=True)
    loss_t = loss_sum / world if masked else loss_sum / accum  # masked: this rank's share of the global mean
    if world > 1:
        torch.distributed.all_reduce(loss_t, op=torch.distributed.ReduceOp.SUM if masked else torch.distributed.ReduceOp.AVG)
    return loss_t, grad_norm


def finite_weights(model: torch.nn.Module) -> bool:
    """Whether every parameter is finite (one norm over all of them; FSDP2: over every shard)."""
    norm = torch.nn.utils.get_total_norm([p.detach() for p in model.parameters()])
    norm = norm.full_tensor() if hasattr(norm, "full_tensor") else norm
    return bool(torch.isfinite(norm))


class Trainer:
    """One worker's training, in phases (torchtitan's trainer is the model): `build` (model, parallelism,
    optimizer, schedule, loaders), `restore`, `train_step`, `evaluate`, `checkpoint_and_report`; and
    `state_dict()` / `load_state_dict()` for everything a checkpoint holds. Ray Train runs it through
    `train_loop_per_worker`; benchmarks/train_throughput.py drives the same object without Ray."""

    def __init__(self, job: TrainJob, rank: int, world: int, device: torch.device):
        self.job, self.t = job, job.train
        self.rank, self.world, self.device = rank, world, device
        self.step = 0
        self.nonfinite = 0  # consecutive steps whose loss was not finite
        self.build()

    def build(self) -> None:
        t, rank, device = self.t, self.rank, self.device
        random.seed(t.seed + rank)
        np.random.seed(t.seed + rank)
        if device.type == "cpu":
            torch.use_deterministic_algorithms(True)  # bitwise-reproducible steps
            torch.set_num_threads(cpu_threads(t))
        else:
            torch.backends.cuda.matmul.allow_tf32 = True
            torch.backends.cudnn.allow_tf32 = True
        self.data_root = self.job.paths.shards
        self.manifest = read_manifest(self.data_root)
        torch.manual_seed(t.seed)  # the same initial weights on every rank
        tok = self.manifest.tokenizer
        gpt = GPT(GPTConfig.from_config(t.model, tok.n_vocab, tok.eot))
        torch.manual_seed(t.seed + rank)  # then per-rank streams (dropout)
        self.flops_per_token = gpt.flops_per_token()
        self.model = parallelize(gpt, t, device)
        self.opt = build_optimizer(self.model, t.optim, device.type)
        self.sched = build_scheduler(self.opt, t.schedule, t.max_steps)
        self.accum = accumulation_steps(t, self.world)
        self.loader = self.build_loader()
        # train.eval.data_path: another run's val split, the same for runs trained on different data
        self.val_root = t.eval.data_path or self.data_root
        self.val_manifest = read_manifest(self.val_root) if t.eval.data_path else self.manifest
        has_val = self.val_manifest.splits["val"].tokens > t.model.seq_len
        self.val = ShardWindows(self.val_root, "val", t.model.seq_len) if has_val else None
        self.val_ids = val_windows(self.val, t.eval.batches * t.batch.micro_batch_size) if has_val else None
        self.val_sources = self.source_validation() if has_val else {}
        self.tasks = self.downstream_tasks()
        self.amp = autocast(t, device)
        self.tokens_per_step = t.batch.global_batch_tokens  # exactly: accumulation_steps refuses a remainder
        self.peak = peak_flops(device)
        self.pending: saving.PendingSave | None = None  # an asynchronous save being written
        self.save_group = saving.save_group(self.world) if t.checkpoint.async_ else None
        self.stager = saving.stager(device, t.checkpoint.staging) if t.checkpoint.async_ else None

    def build_loader(self) -> TrainLoader | MixtureLoader:
        """Uniform over the train split, or by weight across its sources when the shards have several."""
        t, sources = self.t, self.manifest.splits["train"].sources or {}
        if len(sources) < 2:
            return TrainLoader(ShardWindows(self.data_root, "train", t.model.seq_len), t.batch.micro_batch_size, self.rank, self.world, t.seed)
        windows = {n: ShardWindows(self.data_root, "train", t.model.seq_len, source=n) for n in sources}
        schedule = schedule_of(t, self.manifest, recipe_weights(self.job.recipe))
        return MixtureLoader(windows, schedule, t.batch.micro_batch_size, self.rank, self.world, self.accum, t.seed)

    def trainer_state(self) -> dict:
        """What a checkpoint holds besides the model, optimizer and RNG states (trainer.pt)."""
        return {
            "scheduler": self.sched.state_dict(),
            "loader": self.loader.state_dict(),
            "step": self.step,
            "world": self.world,
            "config": self.job.recipe,
            "tokenizer": self.manifest.tokenizer.as_json(),
        }

    def state_dict(self) -> dict:
        """A full checkpoint's state.pt: the whole model and optimizer state with trainer_state. A collective."""
        model_sd, opt_sd = checkpoint.full_state(self.model, self.opt)
        return {"model": model_sd, "optimizer": opt_sd, **self.trainer_state()}

    def load_state_dict(self, state: dict) -> None:
        """A full checkpoint's state (state_dict's)."""
        hyper = hyperparams(self.opt)
        checkpoint.load_full_state(self.model, self.opt, state["model"], state["optimizer"])
        self.load_trainer_state(state, hyper)

    def load_trainer_state(self, state: dict, hyper: list[dict]) -> None:
        """Schedule, step and data position from a checkpoint; `hyper`, the optimizer's values before it was loaded."""
        self.sched.load_state_dict(state["scheduler"])
        reapply_hyperparams(self.opt, self.sched, hyper)  # a PBT trial continues another's state with its own values
        saved_world = state.get("world", self.world)
        if saved_world != self.world and self.rank == 0:
            print(f"[raylm train] {self.loader.layout_note(state['loader'], saved_world)}", flush=True)
        self.loader.load_state_dict(state["loader"])
        self.step = state["step"]

    def restore(self, ckpt, start_from: str | None) -> None:
        """Resume from the run's own checkpoint (after a failure), else from `start_from` (another run's, as
        a PBT trial continues), else take `train.init_from`'s weights (a fine-tune: fresh optimizer)."""
        if ckpt is not None or start_from:
            with ckpt.as_directory() if ckpt is not None else nullcontext(checkpoint.local_dir(start_from)) as d:
                if checkpoint.is_sharded(d):
                    checkpoint.check_complete(d)  # (load checks a full one)
                    hyper = hyperparams(self.opt)
                    self.load_trainer_state(checkpoint.restore_sharded(d, self.model, self.opt), hyper)
                    rng = checkpoint.load_rng(d, self.rank)
                else:
                    state, rng = checkpoint.load(d, self.rank, device="cpu")
                    self.load_state_dict(state)
            if rng is not None:
                checkpoint.set_rng_state(rng)
        elif self.t.init_from:
            state, _ = checkpoint.load(checkpoint.resolve(self.t.init_from), self.rank, device="cpu")
            checkpoint.load_model_weights(self.model, state["model"])

    def train_step(self) -> dict:
        """One optimizer step; returns its metrics row."""
        t0 = time.perf_counter()
        lr = self.opt.param_groups[0]["lr"]  # the lr this step uses
        loss_t, grad_norm = train_step(
            self.model,
            self.opt,
            self.sched,
            self.loader,
            self.accum,
            self.t.optim.grad_clip,
            self.amp,
            self.device,
            self.world,
            lambda: saving.settle(self.pending),
        )
        self.step += 1
        row = {"step": self.step, "tokens": self.step * self.tokens_per_step, "loss": loss_t.item(), "lr": lr, "grad_norm": grad_norm.item()}
        tps = self.tokens_per_step / (time.perf_counter() - t0)  # after .item(): the step's work is done
        row["time"] = time.time()
        if isinstance(self.loader, MixtureLoader):  # the step's tokens from each source (all ranks)
            row["source_tokens"] = dict(zip(self.loader.names, (self.loader.counts * self.t.model.seq_len).tolist()))
        row.update(tokens_per_s=tps, mfu=(tps * self.flops_per_token / (self.peak * self.world)) if self.peak else None)
        return row

    def downstream_tasks(self) -> list:
        """train.eval.tasks, read and tokenized with the run's tokenizer once (training/tasks.py)."""
        if not self.t.eval.tasks:
            return []
        from raylm.core.tokenizer import load_encoding, run_tokenizer
        from raylm.training.tasks import prepare, read_task, task_files

        enc = load_encoding(run_tokenizer(self.manifest.tokenizer.as_json(), self.data_root))
        return [prepare(read_task(p), enc) for p in task_files(self.t.eval.tasks)]

    def task_metrics(self) -> dict:
        """The downstream tasks' metrics, the examples split across the ranks (a collective)."""
        from raylm.training.tasks import metric_row, sharded_results

        was = self.model.training
        self.model.eval()
        try:
            tok = self.manifest.tokenizer
            res = sharded_results(self.model, self.tasks, tok.n_vocab, self.device, self.rank, self.world, self.t.model.seq_len)
        finally:
            self.model.train(was)
        return metric_row(res)

    def source_validation(self) -> dict[str, tuple[ShardWindows, np.ndarray]]:
        """Per source of the val split (when it has several): its windows and the fixed ones evaluated."""
        t, sources = self.t, self.val_manifest.splits["val"].sources or {}
        if len(sources) < 2:
            return {}
        out = {}
        for n, entry in sources.items():
            if entry.tokens > t.model.seq_len:
                w = ShardWindows(self.val_root, "val", t.model.seq_len, source=n)
                out[n] = (w, val_windows(w, t.eval.batches * t.batch.micro_batch_size))
        return out

    def evaluate(self, val: ShardWindows | None = None, ids: np.ndarray | None = None) -> dict:
        """lm_metrics over fixed validation windows (the split's, or `val`'s `ids`), each rank taking an equal slice
        (the same number of forward passes everywhere, as FSDP's collectives need)."""
        val, ids = (self.val, self.val_ids) if val is None else (val, ids)
        per_rank = len(ids) // self.world
        mine = ids[self.rank * per_rank : (self.rank + 1) * per_rank]
        return lm_metrics(self.model, window_batches(val, mine, self.t.batch.micro_batch_size), self.device, self.amp, self.world)

    def validation(self) -> dict:
        """An eval step's metrics: val loss, perplexity and bits per byte over the split, and per source."""
        val = self.evaluate()
        out = dict(val_loss=val["loss"], val_ppl=val["ppl"], val_bpb=split_bpb(val["loss"], self.val_manifest, "val"))
        if self.tasks:
            out.update(self.task_metrics())
        if self.val_sources:
            entries = self.val_manifest.splits["val"].sources
            per = {n: self.evaluate(w, ids)["loss"] for n, (w, ids) in self.val_sources.items()}
            out["val_sources"] = {n: {"loss": v, "bpb": bits_per_byte(v, entries[n].tokens, entries[n].bytes)} for n, v in per.items()}
            if isinstance(self.loader, MixtureLoader):  # weighted as training draws at this step
                plan = self.loader.plan
                mix = weighted_total(out["val_sources"], dict(zip(plan.names, weights_at(plan.schedule, plan.names, self.step - 1))))
                if mix is not None:
                    out["val_mixture"] = mix
        return out

    def divergence(self, row: dict) -> str | None:
        """Why training must stop here: train.max_nonfinite_losses consecutive non-finite losses, or weights that
        are no longer finite at a checkpoint step (never saved: the latest checkpoint stays the last finite one).
        The loss is all-reduced, and the weight check a collective, so every rank decides alike."""
        t = self.t
        self.nonfinite = 0 if math.isfinite(row["loss"]) else self.nonfinite + 1
        if self.nonfinite >= t.max_nonfinite_losses:
            first = self.step - self.nonfinite + 1
            return f"the loss is not finite ({row['loss']}) at step {self.step}" + (f", and at every step since {first}" if first < self.step else "")
        if self.checkpoint_step() and not finite_weights(self.model):
            return f"the weights are no longer finite at step {self.step} (loss {row['loss']})"
        return None

    def checkpoint_step(self) -> bool:
        """Whether this step saves a checkpoint: every checkpoint.every steps, and the last."""
        return self.step % self.t.checkpoint.every == 0 or self.step == self.t.max_steps

    def checkpoint_and_report(self, row: dict, log: MetricsLog | None, acks=None) -> None:
        """Report the row to Ray Train at checkpoint, eval and `report_every` steps, with a checkpoint at checkpoint
        steps (train.checkpoint.async: begun here, reported with its row once written, see saving.py)."""
        t = self.t
        if self.pending is not None and saving.written(self.pending, self.world, self.device):
            self.finish_save(acks)
        if self.checkpoint_step():
            if log is not None:
                log.flush()
            self.finish_save(acks)  # one save in flight at a time, reported in order
            if t.checkpoint.async_ and self.step < t.max_steps:  # the last is written before the run ends anyway
                self.pending = saving.start(self, row, self.save_group, self.stager)
                return
            with tempfile.TemporaryDirectory() as d:
                self.save(d)
                self.report(row, d, acks)
        elif (t.report_every and self.step % t.report_every == 0) or "val_loss" in row:
            self.finish_save(acks)
            self.report(row, None, acks)

    def report(self, row: dict, directory: str | None, acks=None, upload=None) -> None:
        """ray.train.report of the row (and the checkpoint in `directory`); a Tune trial then waits for its ack."""
        import ray.train

        ckpt = ray.train.Checkpoint.from_directory(directory) if directory is not None else None
        ray.train.report(row, checkpoint=ckpt, **({"checkpoint_upload_mode": upload} if upload is not None else {}))
        if acks is not None and self.step < self.t.max_steps:
            await_ack(acks, self.rank, self.world)

    def finish_save(self, acks=None) -> None:
        """The asynchronous save in flight, if any: wait for it, complete it and report it (Ray Train uploads it in
        the background and then deletes the local copy)."""
        if self.pending is None:
            return
        from ray.train import CheckpointUploadMode

        p, self.pending = self.pending, None
        saving.finish(p, self.world, self.data_root)
        self.report(p.row, p.directory, acks, upload=CheckpointUploadMode.ASYNC)

    def save(self, directory: str) -> None:
        """This rank's part of a checkpoint into a local directory, in train.checkpoint.format. A collective."""
        ours = self.rank == 0
        if self.t.checkpoint.format == "full":
            state = self.state_dict()  # gathered on every rank's call; rank 0 writes it
            checkpoint.save(directory, self.rank, state if ours else None, tokenizer_dir=self.data_root, world=self.world)
        else:
            state = checkpoint.sharded_state(self.model, self.opt)
            checkpoint.save_sharded(directory, self.rank, self.world, state, self.trainer_state() if ours else None, self.data_root)

    def metrics_log(self, tracking: dict | None) -> MetricsLog | None:
        """Rank 0's sink: metrics.jsonl, TensorBoard and the MLflow / W&B runs train.loggers names (`tracking`:
        what training.tracking.tracking_info resolved on the driver)."""
        if self.rank != 0:
            return None
        trackers = None
        if tracking and {"mlflow", "wandb"} & set(self.t.loggers):
            from raylm.training.tracking import Trackers

            trackers = Trackers(self.job, tracking, self.step)
        return MetricsLog(self.job.paths.train, self.step, tensorboard="tensorboard" in self.t.loggers, trackers=trackers)

    def fit(self, acks=None, tracking: dict | None = None) -> None:
        """Train to max_steps; `acks`: a Tune trial's box of acknowledgements (tuning/mailboxes.py), waited on after each report."""
        t = self.t
        log = self.metrics_log(tracking)
        while self.step < t.max_steps:
            row = self.train_step()
            why = self.divergence(row)
            if why is not None:  # the last row says why; the driver ends the command with it (exit 1): a retry
                row["diverged"] = why  # from the checkpoint would diverge again, so the workers end without an error
                if log is not None:
                    log.log(row)
                break
            if self.val is not None and (self.step % t.eval.every == 0 or self.step == t.max_steps):
                row.update(self.validation())
            if log is not None:
                log.log(row)
            self.checkpoint_and_report(row, log, acks)
        self.finish_save(acks)  # a save still in flight when training stopped early (diverged)
        if self.stager is not None:
            self.stager.close()
        if log is not None:
            log.close()


def train_loop_per_worker(config: dict) -> None:
    """Ray Train's entry point on every worker."""
    import ray.train
    import ray.train.torch as rtt

    _quiet_ray_train_reports()
    ctx = ray.train.get_context()
    trainer = Trainer(config["job"], ctx.get_world_rank(), ctx.get_world_size(), rtt.get_device())
    trainer.restore(ray.train.get_checkpoint(), config.get("start_from"))
    trainer.fit(config.get("acks"), config.get("tracking"))
