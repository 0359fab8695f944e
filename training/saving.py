"""Asynchronous sharded saves (`train.checkpoint.async`), as torchtitan makes them: DCP's `async_save` writes this
rank's model and optimizer state from a background thread over a gloo process group of its own (the loop's
collectives go on on the default one), while training goes on. What training goes on with
(`train.checkpoint.staging`):
- copy (GPU's default): the state is first copied to host memory, into buffers kept from one save to the next
  (pinned on GPU, so only the first save allocates them): the loop waits for that copy only;
- in_place (CPU's default): no copy. The files are written from the live tensors, which the next step's forward
  and backward only read; its optimizer update (`settle`, before `opt.step()`) waits until this rank's part is
  written. On CPU a copy would be a second host copy of the state, doubling rank 0's memory during a save.
The save is reported to Ray Train, and so counts, only once every rank's part is written: then rank 0 writes
trainer.pt and, last, meta.json, and Ray Train uploads the ranks' directories in the background. A worker that dies
before that leaves the previous checkpoint as the run's latest. One save is in flight at a time: the next
checkpoint step, any other report and the end of training wait for it first.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import time
from dataclasses import dataclass
from typing import Any

import torch

from raylm.training import checkpoint

# fault injection for tests (as Ray's RAY_testing_* variables): seconds each rank's background write waits
# before writing, so that a test can kill a worker while an asynchronous save is in flight
WRITE_DELAY_ENV = "RAYLM_TESTING_CHECKPOINT_WRITE_DELAY_S"


@dataclass
class PendingSave:
    future: Any  # concurrent.futures.Future of DCP's Metadata
    directory: str  # this rank's local directory of the checkpoint
    row: dict  # the metrics row of the step saved, reported with the checkpoint
    trainer: dict | None  # rank 0: the trainer state at that step (trainer.pt)
    in_place: bool = False  # written from the live tensors: no update to them until the future is done
    waited: float = 0.0  # seconds an optimizer update waited for it (in_place)


class InPlace:
    """DCP's AsyncStager protocol with no copy: `async_save` writes the live tensors (see `settle`)."""

    should_synchronize_after_execute = False  # what async_save reads: nothing staged to wait for

    def stage(self, state_dict: dict) -> dict:
        return state_dict

    def synchronize_staging(self) -> None:
        pass

    def close(self) -> None:
        pass


def _writer(path: str):
    from torch.distributed.checkpoint import FileSystemWriter

    delay = float(os.environ.get(WRITE_DELAY_ENV, "0") or 0)
    if delay <= 0:
        return FileSystemWriter(path)

    class DelayedWriter(FileSystemWriter):
        def write_data(self, plan, planner):
            time.sleep(delay)
            return super().write_data(plan, planner)

    return DelayedWriter(path)


def stager(device: torch.device, staging: str = "auto"):
    """The stager kept for the run (close it at the end): InPlace, or a copier whose host buffers every save
    reuses; `staging` is train.checkpoint.staging."""
    from torch.distributed.checkpoint.staging import DefaultStager, StagingOptions

    gpu = device.type == "cuda"
    if staging == "in_place" or (staging == "auto" and not gpu):
        return InPlace()
    return DefaultStager(StagingOptions(use_pinned_memory=gpu, use_shared_memory=False, use_async_staging=False, use_non_blocking_copy=gpu))


def save_group(world: int):
    """The gloo process group the background writes use (None on one rank). A collective: every rank, once."""
    return torch.distributed.new_group(backend="gloo") if world > 1 else None


def start(tr, row: dict, group, staging=None) -> PendingSave:
    """Begin an asynchronous sharded save of the Trainer `tr` at its step: RNG states now, the model and optimizer
    state staged in host memory before this returns, written in the background. A collective."""
    import torch.distributed.checkpoint as dcp

    directory = tempfile.mkdtemp(prefix="raylm-ckpt-")
    checkpoint.save_rng(directory, tr.rank)
    state = checkpoint.sharded_state(tr.model, tr.opt)
    writer = _writer(os.path.join(directory, checkpoint.DCP))
    future = dcp.async_save(state, storage_writer=writer, process_group=group, async_stager=staging)
    return PendingSave(future, directory, dict(row), tr.trainer_state() if tr.rank == 0 else None, isinstance(staging, InPlace))


def settle(p: PendingSave | None) -> None:
    """Before an optimizer update: an in-place save's tensors must be written first (its error raised here)."""
    if p is None or not p.in_place or p.future.done():
        return
    t0 = time.perf_counter()
    p.future.result()
    p.waited += time.perf_counter() - t0


def written(p: PendingSave, world: int, device: torch.device) -> bool:
    """Whether every rank's part is written (all ranks agree: a collective on the default group, whose backend
    wants the worker's device: NCCL's on GPU)."""
    done = torch.tensor([int(p.future.done())], device=device)
    if world > 1:
        torch.distributed.all_reduce(done, op=torch.distributed.ReduceOp.MIN)
    return bool(done.item())


def finish(p: PendingSave, world: int, tokenizer_dir: str | None) -> None:
    """Wait for this rank's write (an error in it is raised here), then on rank 0 trainer.pt and meta.json."""
    metadata = p.future.result()
    if world > 1:
        torch.distributed.barrier()  # every rank's part written before meta.json says the checkpoint is whole
    if p.trainer is not None:
        checkpoint.finish_sharded(p.directory, world, p.trainer, metadata, tokenizer_dir)


def discard(p: PendingSave) -> None:
    shutil.rmtree(p.directory, ignore_errors=True)
