"""The event loop alone: timers, call_soon, wake-ups from other threads, socket readiness."""

from __future__ import annotations

import socket
import threading
import time

from helpers import UNIT
from webscale.loop import EVENT_READ, EventLoop


def run_until(loop: EventLoop, predicate, units: float = 5.0) -> None:  # type: ignore[no-untyped-def]
    end = time.monotonic() + units * UNIT
    while not predicate():
        assert time.monotonic() < end, "loop condition not reached"
        loop.run_once(max_wait=0.05)


def test_timers_fire_in_deadline_order_and_cancel_works() -> None:
    loop = EventLoop()
    fired: list[str] = []
    loop.call_later(0.03, fired.append, "c")
    loop.call_later(0.01, fired.append, "a")
    cancelled = loop.call_later(0.02, fired.append, "b")
    cancelled.cancel()
    loop.call_later(0.04, fired.append, "d")
    run_until(loop, lambda: "d" in fired)
    assert fired == ["a", "c", "d"]
    loop.close()


def test_timer_does_not_fire_early() -> None:
    loop = EventLoop()
    fired: list[float] = []
    start = time.monotonic()
    loop.call_later(0.1, lambda: fired.append(time.monotonic() - start))
    run_until(loop, lambda: fired)
    assert fired[0] >= 0.1
    loop.close()


def test_call_soon_threadsafe_wakes_a_blocked_select() -> None:
    loop = EventLoop()
    got: list[str] = []

    def other_thread() -> None:
        time.sleep(0.05)
        loop.call_soon_threadsafe(got.append, "from thread")

    thread = threading.Thread(target=other_thread)
    thread.start()
    start = time.monotonic()
    # No timers, no sockets: only the wake-up can end this wait before 10 s.
    while not got:
        loop.run_once(max_wait=10 * UNIT)
    assert time.monotonic() - start < 5 * UNIT
    assert got == ["from thread"]
    thread.join()
    loop.close()


def test_many_threadsafe_calls_all_run_in_order() -> None:
    loop = EventLoop()
    got: list[int] = []
    def produce(base: int) -> None:
        for i in range(1000):
            loop.call_soon_threadsafe(got.append, base + i)

    threads = [threading.Thread(target=produce, args=(base,)) for base in (0, 10_000)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    run_until(loop, lambda: len(got) == 2000)
    assert [g for g in got if g < 10_000] == list(range(1000))
    assert [g for g in got if g >= 10_000] == list(range(10_000, 11_000))
    loop.close()


def test_readable_socket_dispatches_to_handler() -> None:
    loop = EventLoop()
    a, b = socket.socketpair()
    a.setblocking(False)
    received: list[bytes] = []

    class Reader:
        def on_readable(self) -> None:
            received.append(a.recv(100))

        def on_writable(self) -> None:
            raise AssertionError("not registered for writing")

    loop.register(a, EVENT_READ, Reader())
    b.send(b"ping")
    run_until(loop, lambda: received)
    assert received == [b"ping"]
    loop.unregister(a)
    a.close()
    b.close()
    loop.close()


def test_coarse_timers_are_never_early_share_wake_ups_and_cancel() -> None:
    from webscale.loop import COARSE_TICK

    loop = EventLoop()
    fired: list[tuple[str, float]] = []
    start = time.monotonic()
    for name, delay in (("b", 0.25), ("a", 0.05), ("a2", 0.06), ("c", 0.3)):
        loop.call_coarse(delay, lambda n=name, d=delay: fired.append((n, time.monotonic() - start
                                                                      - d)))
    loop.call_coarse(0.1, fired.append, ("cancelled", 0.0)).cancel()
    end = time.monotonic() + 5 * UNIT
    while len(fired) < 4 and time.monotonic() < end:
        loop.run_once()  # sleeps until the next tick: nothing else wakes it
    assert [name for name, _ in fired] == ["a", "a2", "b", "c"]
    assert all(0 <= late <= COARSE_TICK + 0.05 * UNIT for _, late in fired)
    # One wake-up per tick that has timers (the cancelled one's included): at most five.
    assert loop.iterations <= 5
    assert loop._coarse == {} and loop._coarse_next == 0
    loop.close()
