"""A Ray Train callback for PBT trials: Ray's TuneReportCallback forwards a report's metrics to Tune but
not its checkpoint, and PBT exploits through checkpoints."""
from __future__ import annotations

from typing import Any, Optional

from ray.train import Checkpoint, UserCallback
from ray.util.queue import Queue


class ForwardReports(UserCallback):
    """Runs in the Ray Train controller: puts each report (rank 0's metrics) and its checkpoint on a
    queue that the trial's Tune function drains into `ray.tune.report`."""

    def __init__(self, queue: Queue):
        self.queue = queue

    def after_report(self, run_context: Any, metrics: list[dict], checkpoint: Optional[Checkpoint]) -> None:
        self.queue.put((metrics[0], checkpoint))
