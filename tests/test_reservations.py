"""A campaign's trials give back what they reserved however they end (tuning/reservations.py): the driver removes
the placement groups of every trial that is not running, on the suite's real Ray instance."""

import time
from types import SimpleNamespace

import pytest
import ray
from ray.util.placement_group import placement_group, placement_group_table

from raylm.tuning.reservations import ReleaseReservations, open_campaign_mailboxes

pytestmark = pytest.mark.slow


def _reserved(cpus: float = 1):
    pg = placement_group([{"CPU": cpus}])
    ray.get(pg.ready(), timeout=60)
    return pg


def _state(pg) -> str:
    return placement_group_table(pg)["state"]


def test_groups_of_ended_trials_are_removed_and_running_ones_kept(ray_session):
    registry = open_campaign_mailboxes()
    stopped, running = _reserved(), _reserved()
    registry.put(("t1", stopped))
    registry.put(("t2", running))
    cb = ReleaseReservations({"CPU": 1})
    cb.release_ended([SimpleNamespace(trial_id="t1", status="TERMINATED"), SimpleNamespace(trial_id="t2", status="RUNNING")])
    assert (_state(stopped), _state(running), cb.released) == ("REMOVED", "CREATED", 1)
    cb.on_experiment_end([])
    assert _state(running) == "REMOVED"


def test_a_paused_trials_group_is_removed(ray_session):
    registry = open_campaign_mailboxes()
    pg = _reserved()
    registry.put(("p", pg))
    ReleaseReservations({"CPU": 1}).release_ended([SimpleNamespace(trial_id="p", status="PAUSED")])
    assert _state(pg) == "REMOVED"


def test_a_group_already_removed_is_no_error(ray_session):
    registry = open_campaign_mailboxes()
    pg = _reserved()
    ray.util.remove_placement_group(pg)
    registry.put(("t", pg))
    cb = ReleaseReservations({"CPU": 1})
    cb.release_ended([SimpleNamespace(trial_id="t", status="ERROR")])
    assert cb.released == 0


def test_a_long_wait_for_resources_is_said_once(ray_session, monkeypatch):
    import raylm.tuning.reservations as r

    held = _reserved(2)  # every CPU of the suite's instance
    said = []
    cb = ReleaseReservations({"CPU": 1}, say=said.append)
    trials = [SimpleNamespace(trial_id="w", status="RUNNING")]
    cb.on_trial_start(0, trials, trials[0])
    monkeypatch.setattr(r, "WAIT_NOTE_S", 0.0)
    time.sleep(0.01)
    try:
        cb._note_waiting(trials, time.monotonic())
        cb._note_waiting(trials, time.monotonic())
    finally:
        ray.util.remove_placement_group(held)
    assert len(said) == 1 and "0 of 2 CPU free" in said[0]
