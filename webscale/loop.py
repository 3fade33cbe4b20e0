"""The event loop: one thread, one selector, a timer heap and a wake-up socket.

How this works: every socket is registered with a poller together with a `Handler`; `run_once()`
waits for readiness until the nearest timer, calls `on_readable`/`on_writable`, runs callbacks
queued with `call_soon` and the timers that are due, then the `before_wait` hooks (where the
dispatcher hands the iteration's messages to the pool in one go). On Linux the poller is
`select.epoll` used directly (level-triggered): `selectors.EpollSelector` builds a SelectorKey
lookup per event, a measurable cost at tens of thousands of events a second. Elsewhere it is
`selectors.DefaultSelector` (kqueue on BSD/macOS). Other threads never touch loop state: they
use `call_soon_threadsafe`, which
appends to a deque and writes one byte to a socketpair the selector watches. A pending-wake flag
keeps that to one write per loop iteration however many pool threads report (curio's `wake()`).
Signal handlers only set a flag; `signal.set_wakeup_fd` points at the same socketpair, so a signal
interrupts the wait at once.
"""

from __future__ import annotations

import heapq
import logging
import select
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


class _EpollPoller:
    """epoll with an fd -> handler dict; ERR/HUP wake both callbacks so the handler's next
    read or write reports the error."""

    def __init__(self) -> None:
        self._epoll = select.epoll()
        self._handlers: dict[int, Handler] = {}

    def register(self, sock: socket.socket, events: int, handler: Handler) -> None:
        fd = sock.fileno()
        self._epoll.register(fd, _to_epoll(events))
        self._handlers[fd] = handler

    def modify(self, sock: socket.socket, events: int, handler: Handler) -> None:
        fd = sock.fileno()
        self._epoll.modify(fd, _to_epoll(events))
        self._handlers[fd] = handler

    def unregister(self, sock: socket.socket) -> None:
        fd = sock.fileno()
        if self._handlers.pop(fd, None) is None:
            raise KeyError(fd)
        self._epoll.unregister(fd)

    def poll(self, timeout: float | None) -> list[tuple[Handler, int]]:
        ready = self._epoll.poll(-1 if timeout is None else timeout)
        handlers = self._handlers
        out = []
        for fd, mask in ready:
            handler = handlers.get(fd)
            if handler is not None:
                out.append((handler, (EVENT_READ if mask & _EPOLL_READISH else 0)
                            | (EVENT_WRITE if mask & _EPOLL_WRITEISH else 0)))
        return out

    def close(self) -> None:
        self._epoll.close()


class _SelectorPoller:
    def __init__(self) -> None:
        self._selector = selectors.DefaultSelector()

    def register(self, sock: socket.socket, events: int, handler: Handler) -> None:
        self._selector.register(sock, events, handler)

    def modify(self, sock: socket.socket, events: int, handler: Handler) -> None:
        self._selector.modify(sock, events, handler)

    def unregister(self, sock: socket.socket) -> None:
        self._selector.unregister(sock)

    def poll(self, timeout: float | None) -> list[tuple[Handler, int]]:
        return [(key.data, mask) for key, mask in self._selector.select(timeout)]

    def close(self) -> None:
        self._selector.close()


if hasattr(select, "epoll"):
    _EPOLL_READISH = select.EPOLLIN | select.EPOLLPRI | select.EPOLLERR | select.EPOLLHUP
    _EPOLL_WRITEISH = select.EPOLLOUT | select.EPOLLERR | select.EPOLLHUP


def _to_epoll(events: int) -> int:
    return ((select.EPOLLIN if events & EVENT_READ else 0)
            | (select.EPOLLOUT if events & EVENT_WRITE else 0))


def _make_poller() -> _EpollPoller | _SelectorPoller:
    return _EpollPoller() if hasattr(select, "epoll") else _SelectorPoller()


class EventLoop:
    def __init__(self) -> None:
        self._poller = _make_poller()
        self._timers: list[Timer] = []
        self._ready: deque[tuple[Callable[..., object], tuple[Any, ...]]] = deque()
        self._threadsafe: deque[tuple[Callable[..., object], tuple[Any, ...]]] = deque()
        self._wake_r, self._wake_w = socket.socketpair()
        self._wake_r.setblocking(False)
        self._wake_w.setblocking(False)
        self._wake_pending = False
        self._poller.register(self._wake_r, EVENT_READ, _Waker(self._wake_r))
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
        self._poller.register(sock, events, handler)

    def modify(self, sock: socket.socket, events: int, handler: Handler) -> None:
        self._poller.modify(sock, events, handler)

    def unregister(self, sock: socket.socket) -> None:
        self._poller.unregister(sock)

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
        events = self._poller.poll(timeout)
        started = self.now = time.monotonic()
        for handler, mask in events:
            # Handlers ignore calls after they closed (an earlier handler in this batch may
            # have closed them), so no re-check of the registration is needed here.
            if mask & EVENT_READ:
                handler.on_readable()
            if mask & EVENT_WRITE:
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
            self._poller.unregister(self._wake_r)
        except (KeyError, ValueError, OSError):
            pass
        self._poller.close()
        self._wake_r.close()
        self._wake_w.close()
