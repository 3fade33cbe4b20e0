"""The event loop: one thread, one selector, a timer heap and a wake-up socket.

How this works: every socket is registered with `selectors.DefaultSelector` (epoll on Linux,
kqueue on BSD/macOS) with a `Handler` as its data; `run()` waits for readiness until the nearest
timer, calls `on_readable`/`on_writable`, then runs callbacks queued with `call_soon` and the
timers that are due. Other threads never touch loop state: they use `call_soon_threadsafe`, which
appends to a deque and writes one byte to a socketpair the selector watches. A pending-wake flag
keeps that to one write per loop iteration however many pool threads report (curio's `wake()`).
Signal handlers only set a flag; `signal.set_wakeup_fd` points at the same socketpair, so a signal
interrupts the wait at once.
"""

from __future__ import annotations

import heapq
import logging
import selectors
import socket
import time
from collections import deque
from collections.abc import Callable
from typing import Any, Protocol

logger = logging.getLogger(__name__)

EVENT_READ = selectors.EVENT_READ
EVENT_WRITE = selectors.EVENT_WRITE


class Handler(Protocol):
    def on_readable(self) -> None: ...

    def on_writable(self) -> None: ...


class Timer:
    """A scheduled call; `cancel()` is O(1) (the heap entry is skipped when it comes due)."""

    __slots__ = ("when", "callback", "args", "cancelled")

    def __init__(self, when: float, callback: Callable[..., object], args: tuple[Any, ...]) -> None:
        self.when = when
        self.callback = callback
        self.args = args
        self.cancelled = False

    def cancel(self) -> None:
        self.cancelled = True
        self.callback = _noop
        self.args = ()

    def __lt__(self, other: Timer) -> bool:
        return self.when < other.when


def _noop(*_: object) -> None:
    return None


class _Waker:
    """Reads the wake-up socket; the bytes themselves mean nothing."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock

    def on_readable(self) -> None:
        try:
            while self.sock.recv(4096):
                pass
        except (BlockingIOError, InterruptedError):
            pass

    def on_writable(self) -> None:  # pragma: no cover - never registered for writing
        pass


class EventLoop:
    def __init__(self) -> None:
        self.selector = selectors.DefaultSelector()
        self._timers: list[Timer] = []
        self._ready: deque[tuple[Callable[..., object], tuple[Any, ...]]] = deque()
        self._threadsafe: deque[tuple[Callable[..., object], tuple[Any, ...]]] = deque()
        self._wake_r, self._wake_w = socket.socketpair()
        self._wake_r.setblocking(False)
        self._wake_w.setblocking(False)
        self._wake_pending = False
        self.selector.register(self._wake_r, EVENT_READ, _Waker(self._wake_r))
        self._stopping = False
        self.now = time.monotonic()
        self.iterations = 0
        # Called after each iteration with the time it took to get back to select(); the server
        # feeds it to the loop-lag histogram.
        self.on_iteration: Callable[[float], None] | None = None
        # Called at the end of every iteration, before the loop waits again: where work
        # gathered during the iteration is handed off in one go (dispatch.Dispatcher.flush).
        self.before_wait: list[Callable[[], None]] = []

    # -- registration ------------------------------------------------------------------------
    def register(self, sock: socket.socket, events: int, handler: Handler) -> None:
        self.selector.register(sock, events, handler)

    def modify(self, sock: socket.socket, events: int, handler: Handler) -> None:
        self.selector.modify(sock, events, handler)

    def unregister(self, sock: socket.socket) -> None:
        self.selector.unregister(sock)

    # -- scheduling --------------------------------------------------------------------------
    def time(self) -> float:
        return time.monotonic()

    def call_later(self, delay: float, callback: Callable[..., object], *args: Any) -> Timer:
        timer = Timer(time.monotonic() + delay, callback, args)
        heapq.heappush(self._timers, timer)
        return timer

    def call_soon(self, callback: Callable[..., object], *args: Any) -> None:
        """Run `callback` on the loop thread after the current event (loop thread only)."""
        self._ready.append((callback, args))

    def call_soon_threadsafe(self, callback: Callable[..., object], *args: Any) -> None:
        """Run `callback` on the loop thread; callable from any thread."""
        self._threadsafe.append((callback, args))
        # Order matters: append before checking the flag, and the loop clears the flag before
        # draining, so an item is never left behind without a wake-up on its way.
        if not self._wake_pending:
            self._wake_pending = True
            self.wake()

    def wake(self) -> None:
        try:
            self._wake_w.send(b"\0")
        except (BlockingIOError, InterruptedError):
            pass  # the socket is full of wake-ups already: the loop will wake
        except OSError:
            pass  # closed during shutdown

    @property
    def wakeup_fd(self) -> int:
        """For signal.set_wakeup_fd: a signal then interrupts select() at once."""
        return self._wake_w.fileno()

    def stop(self) -> None:
        self._stopping = True

    # -- running -----------------------------------------------------------------------------
    def run_once(self, max_wait: float | None = None) -> None:
        timeout: float | None
        if self._ready or self._threadsafe:
            timeout = 0.0
        elif self._timers:
            timeout = max(0.0, self._timers[0].when - time.monotonic())
            if max_wait is not None:
                timeout = min(timeout, max_wait)
        else:
            timeout = max_wait
        events = self.selector.select(timeout)
        started = self.now = time.monotonic()
        for key, mask in events:
            handler = key.data
            if mask & EVENT_READ:
                handler.on_readable()
            if mask & EVENT_WRITE and key.fileobj.fileno() != -1:
                handler.on_writable()
        self._run_queued()
        self._run_timers()
        for callback in self.before_wait:
            callback()
        self.iterations += 1
        if self.on_iteration is not None:
            self.on_iteration(time.monotonic() - started)

    def _run_queued(self) -> None:
        if self._threadsafe:
            self._wake_pending = False
            threadsafe = self._threadsafe
            # Bound the batch so a flood from the pool cannot starve the selector.
            for _ in range(len(threadsafe)):
                callback, args = threadsafe.popleft()
                callback(*args)
        ready = self._ready
        for _ in range(len(ready)):
            callback, args = ready.popleft()
            callback(*args)

    def _run_timers(self) -> None:
        timers = self._timers
        now = time.monotonic()
        while timers and timers[0].when <= now:
            timer = heapq.heappop(timers)
            if not timer.cancelled:
                timer.callback(*timer.args)
        # Cancelled timers are dropped lazily; rebuild when they dominate the heap so that
        # reconnect storms do not grow it without bound.
        if (self.iterations & 1023) == 0 and len(timers) > 1024 and self._cancelled_share() > 0.5:
            self._timers = [t for t in timers if not t.cancelled]
            heapq.heapify(self._timers)

    def _cancelled_share(self) -> float:
        sample = self._timers[:256]
        return sum(t.cancelled for t in sample) / len(sample)

    def run_forever(self) -> None:
        self._stopping = False
        while not self._stopping:
            self.run_once()

    def close(self) -> None:
        try:
            self.selector.unregister(self._wake_r)
        except (KeyError, ValueError):
            pass
        self.selector.close()
        self._wake_r.close()
        self._wake_w.close()
