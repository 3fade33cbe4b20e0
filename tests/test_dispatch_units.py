"""The dispatcher's hand-off driven without sockets: the unit cap's timer, failing units.

A stand-in loop (the clock is set by hand, thread-safe calls are queued and run by the test)
drives `Dispatcher` directly with real pool threads. The cap's own bookkeeping is in
test_unit_cap.py.
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Callable
from typing import Any

import pytest

from webscale.config import Config
from webscale.dispatch import ConnectionHandle, Dispatcher
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


def test_connections_left_over_by_a_full_pool_get_a_timer(loop: FakeLoop) -> None:
    release = threading.Event()
    d = make(loop, lambda handle, message: release.wait(10))
    try:
        d.cost_per_message = 0.01  # slow handlers: one connection per unit
        conns = [FakeConn(loop, i) for i in range(3)]
        for conn in conns:
            d.submit(conn, b"x")  # type: ignore[arg-type]
        d.flush(force=True)
        assert d.cap.in_pool == 2 and list(d._ready) == [conns[2]]
        assert d._cap_timer is not None, "the left-over connection would wait for a wake-up"
        # When the two units go stale (they block), the timer sends the third.
        loop.now += 0.06
        d._cap_timer.callback(*d._cap_timer.args)
        assert d.cap.in_pool == 3 and not d._ready
        release.set()
        loop.run_calls(3)
        assert d.in_flight_total == 0 and d.cap.in_pool == 0
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
        assert d.in_flight_total == 0 and d.cap.in_pool == 0
        assert all(not c.batch_running and c.in_flight == 0 for c in conns)
        assert d.stats.handler_errors == 1 and d.stats.messages_handled == 4
    finally:
        d.shutdown(wait=True)
