"""Ray Train callbacks of Tune trials. ForwardReports (PBT): Ray's TuneReportCallback forwards a report's
metrics to Tune but not its checkpoint, and PBT exploits through checkpoints. AckReports (the other
schedulers): tells the workers that Tune let the trial go on after a report."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from ray.train import Checkpoint, UserCallback

if TYPE_CHECKING:
    from raylm.tuning.mailboxes import Box


class ForwardReports(UserCallback):
    """Runs in the Ray Train controller: puts each report (rank 0's metrics) and its checkpoint in a box
    (tuning/mailboxes.py) that the trial's Tune function drains into `ray.tune.report`."""

    def __init__(self, box: Box):
        self.box = box

    def after_report(self, run_context: Any, metrics: list[dict], checkpoint: Checkpoint | None) -> None:
        self.box.put((metrics[0], checkpoint))


class AckReports(UserCallback):
    """Runs in the Ray Train controller after TuneReportCallback, whose `ray.tune.report` returns only once
    Tune lets the trial continue: acknowledges the report in a box (tuning/mailboxes.py) that rank 0 waits on.
    Without it, workers train on while a report travels (up to a controller poll, 2 s, plus Tune's decision), and
    a trial ASHA stops at a rung has already spent steps past it."""

    def __init__(self, box: Box):
        self.box = box

    def after_report(self, run_context: Any, metrics: list[dict], checkpoint: Checkpoint | None) -> None:
        self.box.put(metrics[0].get("step"))
