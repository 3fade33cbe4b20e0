"""The dispatcher's cap on GIL-bound units, driven without sockets.

A stand-in loop (the clock is set by hand, thread-safe calls are queued and run by the test)
drives `Dispatcher` directly: its learning of CPU/wall ratios, the probe that re-tries the cap,
the timer that keeps left-over connections moving, and units that fail in the pool.
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from webscale.config import Config
from webscale.dispatch import _PROBE_SECONDS, ConnectionHandle, Dispatcher, UnitDone
from webscale.loop import Timer
from webscale.stats import Stats


class FakeLoop:
    def __init__(self) -> None:
        self.now = 0.0
        self.before_wait: list[Callable[[], None]] = []
        self.timers: list[Timer] = []
        self.calls: queue.SimpleQueue[tuple[Callable[..., object], tuple[Any, ...]]] = (
            queue.SimpleQueue())

    def call_later(self, delay: float, callback: Callable[..., object], *args: Any) -> Timer:
        timer = Timer(self.now + delay, callback, args)
        self.timers.append(timer)
        return timer

    def call_soon_threadsafe(self, callback: Callable[..., object], *args: Any) -> None:
        self.calls.put((callback, args))

    def run_calls(self, count: int, timeout: float = 10.0) -> None:
        for _ in range(count):
            callback, args = self.calls.get(timeout=timeout)
            callback(*args)


class FakeConn:
    def __init__(self, loop: FakeLoop, conn_id: int) -> None:
        self.conn_id = conn_id
        self.inbox: list[str | bytes] = []
        self.in_flight = 0
        self.batch_running = False
        self.handle: ConnectionHandle | None = ConnectionHandle(loop, self, None)  # type: ignore[arg-type]
        self.paused = False

    def apply_backpressure(self, paused: bool) -> None:
        self.paused = paused

    def batch_done(self) -> None:
        pass

    def close_from_handler(self, code: int, reason: str) -> None:
        pass


@pytest.fixture
def loop() -> FakeLoop:
    return FakeLoop()


def make(loop: FakeLoop, handler: Callable[..., object] | None = None) -> Dispatcher:
    dispatcher = Dispatcher(loop, Config(threads=16, decode="none"), Stats(),  # type: ignore[arg-type]
                            handler)
    return dispatcher


@pytest.fixture
def dispatcher(loop: FakeLoop) -> Iterator[Dispatcher]:
    d = make(loop)
    yield d
    d.shutdown(wait=True)


def finish(d: Dispatcher, loop: FakeLoop, seq: int, wall: float, cpu: float) -> None:
    """Report unit `seq` done, as a pool thread would, after `wall` seconds of loop time."""
    loop.now += wall
    d._unit_done(UnitDone((), 0, 0, 0, (0,) * 16, wall, cpu, seq))


def start(d: Dispatcher, loop: FakeLoop) -> int:
    """Book a unit as submitted (what _submit records) without running it."""
    d.units_in_pool += 1
    d._unit_seq += 1
    d._unit_started[d._unit_seq] = loop.now
    return d._unit_seq


def test_blocking_units_lift_the_cap_and_a_probe_does_not_bring_it_straight_back(
        dispatcher: Dispatcher, loop: FakeLoop) -> None:
    d = dispatcher
    assert d.capped  # GIL-bound until shown otherwise
    finish(d, loop, start(d, loop), wall=3.0, cpu=0.01)  # a 3 s database call
    assert not d.capped
    # More than the probe interval later the cap is tried again...
    seq = start(d, loop)
    finish(d, loop, seq, wall=_PROBE_SECONDS + 0.5, cpu=0.01)
    assert d.capped
    # ...and one unit submitted after the probe that waits 3 s lifts it, for another interval
    # (it used to be re-tried in the same call, so handlers over 2 s kept the pool capped).
    finish(d, loop, start(d, loop), wall=3.0, cpu=0.01)
    assert not d.capped
    finish(d, loop, start(d, loop), wall=0.5, cpu=0.005)
    assert not d.capped


def test_samples_from_units_crowded_before_a_probe_do_not_lift_the_cap(
        dispatcher: Dispatcher, loop: FakeLoop) -> None:
    d = dispatcher
    finish(d, loop, start(d, loop), wall=0.2, cpu=0.002)  # waiting work: uncapped
    assert not d.capped
    crowded = [start(d, loop) for _ in range(12)]  # then GIL-bound work floods the pool
    finish(d, loop, crowded.pop(0), wall=_PROBE_SECONDS, cpu=_PROBE_SECONDS / 13)  # probe
    assert d.capped
    after_probe = start(d, loop)
    # It shared the GIL with the crowd still in the pool: 1/13 says nothing; ignored.
    finish(d, loop, after_probe, wall=0.03, cpu=0.03 / 13)
    assert d.capped
    for seq in crowded:
        finish(d, loop, seq, wall=0.002, cpu=0.002 / 13)
    assert d.capped
    finish(d, loop, start(d, loop), wall=0.004, cpu=0.0016)  # alone with one other: 0.4
    assert d.capped


def test_connections_left_over_by_a_full_pool_get_a_timer(loop: FakeLoop) -> None:
    release = threading.Event()
    d = make(loop, lambda handle, message: release.wait(10))
    try:
        d.cost_per_message = 0.01  # slow handlers: one connection per unit
        conns = [FakeConn(loop, i) for i in range(3)]
        for conn in conns:
            d.submit(conn, b"x")  # type: ignore[arg-type]
        d.flush(force=True)
        assert d.units_in_pool == 2 and list(d._ready) == [conns[2]]
        assert d._cap_timer is not None, "the left-over connection would wait for a wake-up"
        # When the two units go stale (they block), the timer sends the third.
        loop.now += 0.06
        d._cap_timer.callback(*d._cap_timer.args)
        assert d.units_in_pool == 3 and not d._ready
        release.set()
        loop.run_calls(3)
        assert d.in_flight_total == 0 and d.units_in_pool == 0 and not d._unit_started
    finally:
        release.set()
        d.shutdown(wait=True)


def test_a_unit_failing_beyond_its_handler_still_reports_back(loop: FakeLoop) -> None:
    def exits(handle: ConnectionHandle, message: object) -> None:
        raise SystemExit(3)  # not an Exception: escapes the handler guard

    d = make(loop, exits)
    try:
        conns = [FakeConn(loop, i) for i in range(2)]
        for conn in conns:
            d.submit(conn, b"a")  # type: ignore[arg-type]
            d.submit(conn, b"b")  # type: ignore[arg-type]
        d.flush(force=True)  # one unit: both connections
        loop.run_calls(1)
        assert d.in_flight_total == 0 and d.units_in_pool == 0 and not d._unit_started
        assert all(not c.batch_running and c.in_flight == 0 for c in conns)
        assert d.stats.handler_errors == 1 and d.stats.messages_handled == 4
    finally:
        d.shutdown(wait=True)
