"""The resources a campaign's trials reserve, released when each trial ends, however it ends.

A trial is a Ray Train run: its controller (an actor the trial's function starts) reserves the workers'
CPUs and GPUs in a placement group, which Ray scopes to the campaign's driver, not to the trial. A trial that
ends on its own removes it; one the scheduler stops (ASHA, HyperBand), PBT pauses, or that errors is killed
with its controller, and the reservation outlives it. Ray Train's own cleaner removes it only once it sees
the controller dead through the State API, and only if the worker group had started; when that does not
happen, the next round's trials wait for workers forever. So each trial's controller reports its placement
group here (`RecordPlacementGroup`, a Ray Train callback, through the campaign's mailboxes) and the driver
removes the groups of every trial that is no longer running (`ReleaseReservations`, a Tune callback), within a
second of Tune's decision. Once the campaign is interrupted, a trial whose workers start after that (on the CPUs
the stopped trials gave back) waits for Tune to stop it rather than training (`hold_if_interrupted`).

`ReleaseReservations` also says, once, what a campaign waits for when a trial has had no result for
WAIT_NOTE_S: the resources one trial's workers need against what the cluster has free.
"""

from __future__ import annotations

import sys
import time

import ray
from ray import tune
from ray.train.v2._internal.execution.callback import WorkerGroupCallback
from ray.util.placement_group import PlacementGroup, placement_group_table, remove_placement_group

from raylm.tuning.mailboxes import INTERRUPTED, Box, open_mailboxes

WAIT_NOTE_S = 180.0  # a trial with no result for this long while the cluster cannot fit its workers is worth a line
HOLD_S = 120.0  # how long a trial whose workers started after the campaign was interrupted waits to be stopped
_POLL_S = 1.0  # how often the driver looks for ended trials (Tune calls on_step_begin many times a second)
# The campaign's box of placement groups on this driver. A module global, not a callback attribute: Tune pickles its
# callbacks with the experiment and `Tuner.restore` brings back those copies, which must find the resumed campaign's.
_placement_groups: Box | None = None


def open_campaign_mailboxes() -> Box:
    """This driver's campaign's mailboxes (tuning/mailboxes.py), fresh: their box of placement groups, handed to
    every trial (which takes its other boxes from it)."""
    global _placement_groups
    _placement_groups = open_mailboxes()
    return _placement_groups


def _say(msg: str) -> None:
    print(f"[raylm tune] {msg}", file=sys.stderr, flush=True)


class RecordPlacementGroup(WorkerGroupCallback):
    """Runs in a trial's Ray Train controller: puts (trial id, placement group) in the campaign's box each time
    a worker group starts (again after a worker failure). Ray Train takes callbacks of its own kinds beside
    UserCallbacks in RunConfig(callbacks=...) for this (DataParallelTrainer._create_default_callbacks)."""

    def __init__(self, placement_groups: Box, trial_id: str):
        self.placement_groups, self.trial_id = placement_groups, trial_id

    def after_worker_group_start(self, worker_group) -> None:
        self.placement_groups.put((self.trial_id, worker_group.get_worker_group_state().placement_group_handle.placement_group))
        hold_if_interrupted(self.placement_groups)


def hold_if_interrupted(mail: Box, hold_s: float = HOLD_S) -> None:
    """In a trial's Ray Train controller, before its workers start training: once the campaign was interrupted, wait
    for Tune to stop the trial instead (at most `hold_s`, then fail). The CPUs that Tune's stop of the running
    trials frees would otherwise start a pending trial's workers, which then train until Tune stops that one too."""
    interrupted = mail.at(INTERRUPTED)
    if not interrupted.count():
        return
    time.sleep(hold_s)  # Tune's stop of the trial kills this controller long before
    raise RuntimeError(f"the campaign was interrupted before this trial's workers started; not stopped within {hold_s:.0f} s")


def release(pg: PlacementGroup) -> bool:
    """Remove a placement group unless it is gone already; whether this call removed it."""
    try:
        if placement_group_table(pg).get("state", "REMOVED") == "REMOVED":
            return False
        remove_placement_group(pg)
        return True
    except (ValueError, ray.exceptions.RaySystemError):  # removed in between (by its controller or Ray's cleaner)
        return False


class ReleaseReservations(tune.Callback):
    """On the campaign's driver: removes the placement groups of trials that are not running (stopped, paused,
    errored, done), and notes a campaign that waits long for resources. `need`: one trial's workers' resources."""

    def __init__(self, need: dict[str, float], say=None):
        self.need = need
        self.say = say or _say
        self.groups: dict[str, list[PlacementGroup]] = {}  # trial id -> its Ray Train runs' placement groups
        self.released = 0
        self._last_poll = 0.0
        self._last_result: dict[str, float] = {}  # trial id -> when it last reported (or started)
        self._noted = False

    def __getstate__(self) -> dict:  # Tune saves its callbacks with the experiment: what it holds is this run's
        return {**self.__dict__, "groups": {}, "_last_result": {}}

    def _drain(self) -> None:
        if _placement_groups is None:
            return
        for trial_id, pg in _placement_groups.take_all():
            self.groups.setdefault(trial_id, []).append(pg)

    def release_ended(self, trials) -> None:
        self._drain()
        running = {t.trial_id for t in trials if t.status == "RUNNING"}
        for trial_id in [t for t in self.groups if t not in running]:
            self.released += sum(release(pg) for pg in self.groups.pop(trial_id))

    def on_step_begin(self, iteration, trials, **info) -> None:
        now = time.monotonic()
        if now - self._last_poll < _POLL_S:
            return
        self._last_poll = now
        self.release_ended(trials)
        self._note_waiting(trials, now)

    def on_trial_start(self, iteration, trials, trial, **info) -> None:
        self._last_result[trial.trial_id] = time.monotonic()

    def on_trial_result(self, iteration, trials, trial, result, **info) -> None:
        self._last_result[trial.trial_id] = time.monotonic()

    def on_experiment_end(self, trials, **info) -> None:
        self._drain()
        for pgs in self.groups.values():
            self.released += sum(release(pg) for pg in pgs)
        self.groups.clear()

    def _note_waiting(self, trials, now: float) -> None:
        """Once per campaign: a running trial silent for WAIT_NOTE_S while the cluster cannot fit its workers."""
        if self._noted:
            return
        waiting = [t for t in trials if t.status == "RUNNING" and now - self._last_result.get(t.trial_id, now) > WAIT_NOTE_S]
        free, total = ray.available_resources(), ray.cluster_resources()
        if not waiting or all(free.get(k, 0) >= v for k, v in self.need.items()):
            return
        self._noted = True
        have = ", ".join(f"{free.get(k, 0):g} of {total.get(k, 0):g} {k}" for k in self.need)
        self.say(
            f"trial {waiting[0].trial_id} has waited {(now - self._last_result[waiting[0].trial_id]) / 60:.0f} min for its workers "
            f"({', '.join(f'{v:g} {k}' for k, v in self.need.items())} in all); the cluster has {have} free, the rest reserved "
            "(`ray status` shows placement groups and pending demands)"
        )
