"""A small selectors event loop with a timer heap: one per worker process.

How this works: `run_once` waits in `select()` until the earliest timer is due (or a socket is
ready), calls the ready handlers, then every due timer. Handlers are objects with `on_readable` /
`on_writable` methods registered with the fd; timers are `(when, seq, callback)` entries on a heap,
cancelled lazily through their `Timer` handle. All times come from `time.monotonic()`, which on
Linux is one system-wide clock, so workers' timestamps can be compared by the parent.

Why this is not webscale.loop.EventLoop (issue 11 asks for one loop or a written reason): the
two do different jobs. webscale's loop serves pool threads (`call_soon_threadsafe`, a wake-up
socket, `before_wait` hooks for the dispatcher, loop-lag accounting per iteration) and wakes
for readiness; a bench_client worker has no threads and is driven by timers (one per client per
send on a fixed grid, `call_at`), which here are tuples compared in C. Run on webscale's loop
behind a thin adapter (`call_at` through `call_later`, fds wrapped as the socket-like objects it
registers), bench_client cost measurably more: 5,000 TLS clients at 1 msg/s against
benchmarks/sink.py, steady-state client CPU per message over 15 s, three alternating runs each:
own loop 27.6 / 31.9 / 31.7 us (median 31.7), webscale's 33.2 / 33.9 / 34.3 us (median 33.9,
+7%); over the whole run, handshakes included, 50.8 against 53.1 us per message (median, +4.5%).
In isolation a heap of 5,000 re-armed timers costs 0.5-0.6 us per pop and push here against
0.8-0.85 us with webscale's Timer (a Python `__lt__` per comparison). A load generator that
needs more CPU per message than necessary measures itself, so the client keeps this loop; both
share the Handler protocol (`on_readable` / `on_writable`) and the EVENT_READ/EVENT_WRITE
values. Reproduce: `python benchmarks/client_loop.py` (2026-12-03, 2 cores, Python 3.11.7; the
runs above used the same adapter and sampling, swapped in by file rather than by that script).
"""

from __future__ import annotations

import heapq
import logging
import selectors
import time
from collections.abc import Callable
from typing import Protocol

logger = logging.getLogger(__name__)

READ = selectors.EVENT_READ
WRITE = selectors.EVENT_WRITE

# Upper bound on one select() wait, so the loop notices flags set by signal handlers promptly even
# when no timer is due.
MAX_WAIT = 0.25


class Handler(Protocol):
    def on_readable(self) -> None: ...

    def on_writable(self) -> None: ...


class Timer:
    __slots__ = ("callback", "cancelled", "when")

    def __init__(self, when: float, callback: Callable[[], None]) -> None:
        self.when = when
        self.callback = callback
        self.cancelled = False

    def cancel(self) -> None:
        self.cancelled = True


class EventLoop:
    def __init__(self) -> None:
        self.selector = selectors.DefaultSelector()
        self._timers: list[tuple[float, int, Timer]] = []
        self._sequence = 0
        self.stopping = False

    def call_at(self, when: float, callback: Callable[[], None]) -> Timer:
        timer = Timer(when, callback)
        self._sequence += 1
        heapq.heappush(self._timers, (when, self._sequence, timer))
        return timer

    def call_later(self, delay: float, callback: Callable[[], None]) -> Timer:
        return self.call_at(time.monotonic() + delay, callback)

    def register(self, fd: int, events: int, handler: Handler) -> None:
        self.selector.register(fd, events, handler)

    def modify(self, fd: int, events: int, handler: Handler) -> None:
        self.selector.modify(fd, events, handler)

    def unregister(self, fd: int) -> None:
        try:
            self.selector.unregister(fd)
        except (KeyError, ValueError):
            pass  # already gone: closing twice must be harmless

    def run_once(self) -> None:
        timers = self._timers
        now = time.monotonic()
        timeout = MAX_WAIT
        if timers:
            timeout = min(MAX_WAIT, max(0.0, timers[0][0] - now))
        for key, events in self.selector.select(timeout):
            handler: Handler = key.data
            if events & READ:
                handler.on_readable()
            if events & WRITE and key.fd in self.selector.get_map():
                handler.on_writable()
        now = time.monotonic()
        while timers and timers[0][0] <= now:
            _, _, timer = heapq.heappop(timers)
            if not timer.cancelled:
                timer.callback()

    def run_until(self, done: Callable[[], bool]) -> None:
        while not done():
            self.run_once()

    def close(self) -> None:
        self.selector.close()
