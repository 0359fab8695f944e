"""Sampling by weight across sources (training/mixture.py): proportions, determinism, resume, schedules,
epochs per source. Pure functions: no Ray, no torch."""

import numpy as np
from hypothesis import given
from hypothesis import strategies as st

from training.mixture import MixturePlan, source_of_slots, weights_at


def _run(plan: MixturePlan, steps: range, drawn: np.ndarray):
    out = []
    for s in steps:
        src, ids, drawn = plan.step(s, drawn)
        out.append((src, ids))
    return out, drawn


def test_thousand_steps_within_one_percent_and_identical_across_runs():
    plan = MixturePlan([5000, 700], ["web", "books"], [(None, {"web": 0.8, "books": 0.2})], seed=3, slots=32)
    a, drawn = _run(plan, range(1000), np.zeros(2, np.int64))
    b, _ = _run(plan, range(1000), np.zeros(2, np.int64))
    counts = np.bincount(np.concatenate([s for s, _ in a]), minlength=2)
    assert abs(counts[0] / counts.sum() - 0.8) < 0.01 and abs(counts[1] / counts.sum() - 0.2) < 0.01
    assert (drawn == counts).all()
    assert all((x[0] == y[0]).all() and (x[1] == y[1]).all() for x, y in zip(a, b))


def test_resume_from_the_position_in_every_source_is_exact():
    plan = MixturePlan([900, 130, 40], ["a", "b", "c"], [(None, {"a": 0.5, "b": 0.3, "c": 0.2})], seed=0, slots=24)
    whole, _ = _run(plan, range(400), np.zeros(3, np.int64))
    first, saved = _run(plan, range(250), np.zeros(3, np.int64))  # killed after step 250, its state checkpointed
    rest, _ = _run(plan, range(250, 400), saved)
    assert all((x[0] == y[0]).all() and (x[1] == y[1]).all() for x, y in zip(whole, first + rest))


def test_schedule_switches_at_the_step_and_zero_weight_is_never_drawn():
    schedule = [(800, {"web": 1.0, "task": 0.0}), (None, {"web": 0.5, "task": 0.5})]
    plan = MixturePlan([10_000, 10_000], ["web", "task"], schedule, seed=1, slots=16)
    steps, _ = _run(plan, range(1000), np.zeros(2, np.int64))
    before = np.concatenate([s for s, _ in steps[:800]])
    after = np.concatenate([s for s, _ in steps[800:]])
    assert (before == 0).all()
    assert abs((after == 1).mean() - 0.5) < 0.01
    assert weights_at(schedule, ["web", "task"], 799).tolist() == [1.0, 0.0] and weights_at(schedule, ["web", "task"], 800).tolist() == [0.5, 0.5]


def test_each_window_of_a_source_once_per_epoch_in_its_own_order():
    plan = MixturePlan([37, 400], ["small", "big"], [(None, {"small": 0.5, "big": 0.5})], seed=5, slots=10)
    steps, drawn = _run(plan, range(30), np.zeros(2, np.int64))
    small = np.concatenate([ids[src == 0] for src, ids in steps])
    assert drawn[0] == len(small) > 2 * 37
    for e in range(len(small) // 37):  # every full epoch of the small source is a permutation of its windows
        assert sorted(small[e * 37 : (e + 1) * 37]) == list(range(37))
    assert list(small[:37]) != list(small[37:74])  # a new order each epoch


@given(st.lists(st.floats(0.01, 1.0), min_size=1, max_size=6), st.integers(0, 10**9), st.integers(1, 4000))
def test_every_prefix_of_slots_tracks_the_weights(w, first, n):
    src = source_of_slots(first, n, np.array(w))
    share = np.array(w) / sum(w)
    counts = np.bincount(src, minlength=len(w))
    assert counts.sum() == n and (np.abs(counts - n * share) <= 2 + 2 * np.log2(n + 1)).all()
