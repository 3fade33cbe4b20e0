"""The dispatcher's hand-off driven without sockets: the unit cap's timer, failing units, lazy
completions.

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

from webscale.budget import MemoryBudget
from webscale.dispatch import Dispatcher
from webscale.handle import ConnectionHandle
from webscale.loop import Timer
from webscale.stats import Stats


class FakeLoop:
    def __init__(self) -> None:
        self.now = 0.0
        self.wait_cap: float | None = None
        self.before_wait: list[Callable[[], None]] = []
        self.timers: list[Timer] = []
        self.calls: queue.SimpleQueue[tuple[Callable[..., object], tuple[Any, ...], bool]] = (
            queue.SimpleQueue())
        self.wakes = 0

    def call_later(self, delay: float, callback: Callable[..., object], *args: Any) -> Timer:
        timer = Timer(self.now + delay, callback, args)
        self.timers.append(timer)
        return timer

    def call_soon_threadsafe(self, callback: Callable[..., object], *args: Any,
                             wake: bool = True) -> None:
        self.calls.put((callback, args, wake))

    def wake_soon(self) -> None:
        self.wakes += 1

    def run_calls(self, count: int, timeout: float = 10.0) -> list[bool]:
        """Run `count` queued calls; how each asked to be woken."""
        woke = []
        for _ in range(count):
            callback, args, wake = self.calls.get(timeout=timeout)
            callback(*args)
            woke.append(wake)
        return woke


class FakeConn:
    def __init__(self, conn_id: int) -> None:
        self.conn_id = conn_id
        self.paused = False
        self.done = 0
        self.closed_with: int | None = None

    def pause_reading(self, paused: bool) -> None:
        self.paused = paused

    def messages_done(self, count: int) -> None:
        self.done += count

    def close(self, code: int = 1000, reason: str = "") -> None:
        self.closed_with = code

    def send_message(self, data: str | bytes) -> None:
        pass


@pytest.fixture
def loop() -> FakeLoop:
    return FakeLoop()


def make(loop: FakeLoop, handler: Callable[..., object] | None = None,
         **options: Any) -> Dispatcher:
    return Dispatcher(loop, Stats(), handler, None, threads=16, **options)  # type: ignore[arg-type]


def opened(loop: FakeLoop, d: Dispatcher, conn_id: int) -> FakeConn:
    conn = FakeConn(conn_id)
    d.open(conn, ConnectionHandle(loop, conn, conn_id, None))  # type: ignore[arg-type]
    return conn


def test_connections_left_over_by_a_full_pool_get_a_timer(loop: FakeLoop) -> None:
    release = threading.Event()
    d = make(loop, lambda handle, message: release.wait(10))
    try:
        d.cost_per_message = 0.01  # slow handlers: one connection per unit
        conns = [opened(loop, d, i) for i in range(3)]
        for conn in conns:
            d.deliver(conn, b"x")  # type: ignore[arg-type]
        d.flush(force=True)
        assert d.cap.in_pool == 2 and [box.reader for box in d._ready] == [conns[2]]
        assert d._cap_timer is not None, "the left-over connection would wait for a wake-up"
        # The two units out are now waited for: their completions must wake the loop.
        assert all(unit.urgent for unit in d._units.values())
        # When the two units go stale (they block), the timer sends the third.
        loop.now += 0.06
        d._cap_timer.callback(*d._cap_timer.args)
        assert d.cap.in_pool == 3 and not d._ready
        release.set()
        loop.run_calls(3)
        assert d.in_flight_total == 0 and d.cap.in_pool == 0
        assert [conn.done for conn in conns] == [1, 1, 1]
    finally:
        release.set()
        d.shutdown(wait=True)


def test_a_unit_failing_beyond_its_handler_still_reports_back(loop: FakeLoop) -> None:
    def exits(handle: ConnectionHandle, message: object) -> None:
        raise SystemExit(3)  # not an Exception: escapes the handler guard

    d = make(loop, exits)
    try:
        conns = [opened(loop, d, i) for i in range(2)]
        for conn in conns:
            d.deliver(conn, b"a")  # type: ignore[arg-type]
            d.deliver(conn, b"b")  # type: ignore[arg-type]
        d.flush(force=True)  # one unit: both connections
        loop.run_calls(1)
        assert d.in_flight_total == 0 and d.cap.in_pool == 0
        assert [conn.done for conn in conns] == [2, 2]
        assert d.stats.handler_errors == 1 and d.stats.messages_handled == 4
    finally:
        d.shutdown(wait=True)


def test_completions_wake_the_loop_only_when_it_waits_for_them(loop: FakeLoop) -> None:
    gate = threading.Event()
    d = make(loop, lambda handle, message: gate.wait(10))
    try:
        quiet, busy = opened(loop, d, 1), opened(loop, d, 2)
        d.deliver(quiet, b"q")  # type: ignore[arg-type]
        d.deliver(busy, b"b1")  # type: ignore[arg-type]
        d.flush(force=True)
        assert loop.wait_cap is not None  # units out: the loop's sleep is bounded
        # A second message for `busy` arrives while its batch runs: that unit is now urgent.
        d.deliver(busy, b"b2")  # type: ignore[arg-type]
        units = list(d._units.values())
        assert len(units) == 1 and units[0].urgent
        gate.set()
        assert loop.run_calls(1) == [False]  # queued without a wake-up of its own...
        assert loop.wakes == 1  # ...then hurried along, because the loop waited on it
        assert [box.reader for box in d._ready] == [busy]
        d.flush(force=True)
        assert loop.run_calls(1) == [False]
        assert loop.wakes == 1  # nobody waited for that one: no wake-up at all
        assert loop.wait_cap is None and d.idle
        assert (quiet.done, busy.done) == (1, 2)
    finally:
        gate.set()
        d.shutdown(wait=True)


def test_backpressure_pauses_and_resumes(loop: FakeLoop) -> None:
    gate = threading.Event()
    d = make(loop, lambda handle, message: gate.wait(10), max_in_flight_per_connection=3)
    try:
        conn = opened(loop, d, 1)
        for data in (b"1", b"2", b"3"):
            d.deliver(conn, data)  # type: ignore[arg-type]
        assert conn.paused
        d.flush(force=True)
        gate.set()
        loop.run_calls(1)
        assert not conn.paused and conn.done == 3
    finally:
        gate.set()
        d.shutdown(wait=True)


def test_ingesting_mailboxes_linger_and_answering_ones_do_not(loop: FakeLoop) -> None:
    def answer(handle: ConnectionHandle, message: object) -> None:
        if message == b"ask":
            handle.send(b"answer")

    d = make(loop, answer, batch_linger=0.01)
    try:
        conn = opened(loop, d, 1)
        d.deliver(conn, b"ask")  # type: ignore[arg-type]
        d.flush()
        assert d._units == {} and d._linger_timer is not None  # a first message lingers
        loop.now += 0.011
        d.flush()  # the first iteration after the linger hands it off
        assert len(d._units) == 1
        loop.run_calls(2)  # the handler's send, then the unit's completion
        # The handler answered: its client is waiting, so the next message goes at once.
        d.deliver(conn, b"ingest")  # type: ignore[arg-type]
        d.flush()
        assert len(d._units) == 1
        loop.run_calls(1)
        # That one was not answered: the one after lingers again.
        d.deliver(conn, b"ingest")  # type: ignore[arg-type]
        d.flush()
        assert d._units == {}
    finally:
        d.shutdown(wait=True)


def test_mailboxes_are_bounded_in_bytes_and_charged_to_the_budget(loop: FakeLoop) -> None:
    gate = threading.Event()
    budget = MemoryBudget(1 << 30)
    d = make(loop, lambda handle, message: gate.wait(10),
             max_in_flight_bytes_per_connection=10_000, budget=budget)
    try:
        conn = opened(loop, d, 1)
        d.deliver(conn, b"x" * 6000)  # type: ignore[arg-type]
        assert not conn.paused and budget.used == 6000
        d.deliver(conn, "\U0001f600" * 1000)  # type: ignore[arg-type]  # ~4 KB held
        assert conn.paused and budget.used > 10_000  # two messages, over 10,000 bytes
        d.flush(force=True)  # the batch goes to the pool: still charged until handled
        assert budget.used > 10_000
        gate.set()
        loop.run_calls(1)
        assert not conn.paused and conn.done == 2 and budget.used == 0
    finally:
        gate.set()
        d.shutdown(wait=True)


def test_over_the_budget_only_connections_holding_much_are_paused(loop: FakeLoop) -> None:
    gate = threading.Event()
    budget = MemoryBudget(100_000)
    d = make(loop, lambda handle, message: gate.wait(10), budget=budget)
    try:
        big, small = opened(loop, d, 1), opened(loop, d, 2)
        d.deliver(big, b"b" * 120_000)  # type: ignore[arg-type]
        assert budget.over and big.paused  # held: it holds more than the allowance
        d.deliver(small, b"s" * 1000)  # type: ignore[arg-type]
        assert not small.paused  # a small message from a quiet client goes on
        d.flush(force=True)
        gate.set()
        loop.run_calls(1)
        assert big.paused and budget.used == 0  # held until the budget says it recovered
        budget.recovered()  # (the guard's check does this, and then calls resume_held)
        d.resume_held()
        assert not big.paused and budget.used == 0
    finally:
        gate.set()
        d.shutdown(wait=True)


def test_discard_drops_what_the_pool_has_not_taken(loop: FakeLoop) -> None:
    gate = threading.Event()
    budget = MemoryBudget(1 << 30)
    d = make(loop, lambda handle, message: gate.wait(10), budget=budget)
    try:
        conn = opened(loop, d, 1)
        d.deliver(conn, b"1" * 100)  # type: ignore[arg-type]
        d.flush(force=True)  # this one runs
        d.deliver(conn, b"2" * 200)  # type: ignore[arg-type]
        d.deliver(conn, b"3" * 300)  # type: ignore[arg-type]
        assert d.queued_bytes(conn) == 500 and budget.used == 600  # type: ignore[arg-type]
        assert d.discard(conn) == 2  # type: ignore[arg-type]
        assert conn.done == 2 and budget.used == 100 and d.in_flight_total == 1
        gate.set()
        loop.run_calls(1)
        assert conn.done == 3 and budget.used == 0 and d.idle
    finally:
        gate.set()
        d.shutdown(wait=True)
