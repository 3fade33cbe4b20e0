"""UnitCap: how many pool units run at once, fed CPU/wall samples and a hand-set clock."""

from __future__ import annotations

import pytest

from webscale.unit_cap import _PROBE_SECONDS, _STALE_UNIT_SECONDS, UnitCap


class Clock:
    now = 0.0


@pytest.fixture
def clock() -> Clock:
    return Clock()


def run(cap: UnitCap, clock: Clock, wall: float, cpu: float) -> None:
    """One unit submitted now that comes back after `wall` seconds having used `cpu`."""
    seq = cap.submitted(clock.now)
    clock.now += wall
    cap.finished(seq, cpu, wall, clock.now)


def test_starts_capped_and_stays_capped_for_gil_bound_units(clock: Clock) -> None:
    cap = UnitCap(threads=16, now=clock.now)
    assert cap.capped
    for _ in range(50):
        run(cap, clock, wall=0.002, cpu=0.0019)
    assert cap.capped


def test_never_capped_with_two_threads_or_fewer(clock: Clock) -> None:
    assert not UnitCap(threads=2, now=0.0).capped


def test_one_waiting_unit_lifts_the_cap(clock: Clock) -> None:
    cap = UnitCap(threads=16, now=clock.now)
    run(cap, clock, wall=0.2, cpu=0.002)
    assert not cap.capped


def test_a_probe_does_not_bring_the_cap_straight_back(clock: Clock) -> None:
    cap = UnitCap(threads=16, now=clock.now)
    run(cap, clock, wall=3.0, cpu=0.01)  # a 3 s database call
    assert not cap.capped
    run(cap, clock, wall=_PROBE_SECONDS + 0.5, cpu=0.01)  # 2 s after the lift: try the cap
    assert cap.capped
    # One unit submitted after the probe that waits 3 s lifts it, for another interval (it used
    # to be re-tried in the same call, so handlers over 2 s kept the pool capped for good).
    run(cap, clock, wall=3.0, cpu=0.01)
    assert not cap.capped
    run(cap, clock, wall=0.5, cpu=0.005)
    assert not cap.capped


def test_samples_from_units_crowded_before_a_probe_are_ignored(clock: Clock) -> None:
    cap = UnitCap(threads=16, now=clock.now)
    run(cap, clock, wall=0.2, cpu=0.002)  # waiting work: the cap lifts
    assert not cap.capped
    crowded = [cap.submitted(clock.now) for _ in range(12)]  # then GIL-bound work floods in
    clock.now += _PROBE_SECONDS
    cap.finished(crowded.pop(0), _PROBE_SECONDS / 13, _PROBE_SECONDS, clock.now)  # probe
    assert cap.capped
    # It shared the GIL with the crowd still in the pool: 1/13 says nothing, so it is ignored.
    run(cap, clock, wall=0.03, cpu=0.03 / 13)
    assert cap.capped
    for seq in crowded:
        clock.now += 0.002
        cap.finished(seq, 0.002 / 13, 0.002, clock.now)
    assert cap.capped and cap.in_pool == 0
    run(cap, clock, wall=0.004, cpu=0.0016)  # alone with one other: 0.4
    assert cap.capped


def test_units_turn_stale_and_free_their_place(clock: Clock) -> None:
    cap = UnitCap(threads=16, now=clock.now)
    cap.submitted(clock.now)
    clock.now += 0.01
    cap.submitted(clock.now)
    free, wait = cap.free(clock.now)
    assert free == 0
    assert wait == pytest.approx(_STALE_UNIT_SECONDS - 0.01)
    clock.now += wait
    assert cap.free(clock.now)[0] == 1  # the first is stale: it waits on I/O, not the GIL
    clock.now += 0.01
    assert cap.free(clock.now)[0] == 2
    assert cap.in_pool == 2
