"""The event loop: one thread, one poller, a timer heap and a wake-up socket.

How this works: every socket is registered with a poller together with a `Handler`; `run_once()`
first runs the `before_wait` hooks (where the dispatcher hands the iteration's messages to the
pool in one go, as the last thing before the thread sleeps, so a woken pool thread finds the GIL
free), then waits for readiness until the nearest timer, calls `on_readable`/`on_writable`, runs
the callbacks queued with `call_soon` or from other threads, and the timers that are due.

The poller: on Linux `select.epoll` used directly (level-triggered): `selectors.EpollSelector`
builds a SelectorKey lookup per event, a measurable cost at tens of thousands of events a second.
Elsewhere `selectors.DefaultSelector` (kqueue on BSD/macOS). `WEBSCALE_POLLER=selectors` (or
`poll`, `select`) picks the generic path on Linux too, so tests run it where kqueue is absent
(CI runs the server tests a second time with `scripts/test --poller poll`); a value this
platform does not have stops the start with a ConfigError naming the variable.

Timers come in two kinds. `call_later` keeps a heap, for deadlines that need precision (a linger,
a close handshake). `call_coarse` drops the call into a bucket of a wheel of `COARSE_TICK` (100 ms)
slots: deadlines that need no precision (keepalive pings, pong and idle deadlines, handshake
timeouts) then share one wake-up per tick instead of one heap entry and one wake-up each. With
5,000 clients pinged every 20 s that is 10 wake-ups a second instead of 250, and the pongs come
back together.

Other threads never touch loop state: they use `call_soon_threadsafe`, which appends to a deque
and writes one byte to a socketpair the poller watches. A pending-wake flag keeps that to one
write per loop iteration however many threads report (curio's `wake()`). `wake=False` queues
without writing: the callback runs at the loop's next wake-up, which the caller bounds with
`wait_cap` (the dispatcher's completions: the loop is usually awake for reads anyway, and a
wake-up per pool unit costs two context switches). Signal handlers only set a flag;
`signal.set_wakeup_fd` points at the same socketpair, so a signal interrupts the wait at once.
"""

from __future__ import annotations

import heapq
import logging
import os
import select
import selectors
import socket
import time
from collections import deque
from collections.abc import Callable
from typing import Any, Protocol

from .errors import ConfigError

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


# The coarse timers' resolution: a coarse call runs up to this much after its delay, never before.
COARSE_TICK = 0.1


class _Waker:
    """Reads the wake-up socket; the bytes themselves mean nothing."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock

    def on_readable(self) -> None:
        # One read: the bytes mean nothing, and a level-triggered poller reports any left over.
        try:
            self.sock.recv(4096)
        except (BlockingIOError, InterruptedError):
            pass

    def on_writable(self) -> None:  # pragma: no cover - never registered for writing
        pass


class _EpollPoller:
    """epoll with an fd -> handler dict; ERR/HUP wake both callbacks so the handler's next
    read or write reports the error."""

    name = "epoll"

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

    def poll(self, timeout: float | None) -> list[tuple[int, int]]:
        return self._epoll.poll(-1 if timeout is None else timeout)

    def dispatch(self, ready: list[tuple[int, int]]) -> None:
        """Call each ready handler; handlers ignore calls after they closed (an earlier one in
        this batch may have closed them), so a closed fd's stale event is harmless."""
        handlers = self._handlers
        for fd, mask in ready:
            handler = handlers.get(fd)
            if handler is not None:
                if mask & _EPOLL_READISH:
                    handler.on_readable()
                if mask & _EPOLL_WRITEISH:
                    handler.on_writable()

    def close(self) -> None:
        self._epoll.close()


class _SelectorPoller:
    """Any `selectors` selector: kqueue on BSD/macOS, or the one WEBSCALE_POLLER names."""

    def __init__(self, selector: selectors.BaseSelector) -> None:
        self._selector = selector
        self.name = type(selector).__name__

    def register(self, sock: socket.socket, events: int, handler: Handler) -> None:
        self._selector.register(sock, events, handler)

    def modify(self, sock: socket.socket, events: int, handler: Handler) -> None:
        self._selector.modify(sock, events, handler)

    def unregister(self, sock: socket.socket) -> None:
        self._selector.unregister(sock)

    def poll(self, timeout: float | None) -> list[tuple[selectors.SelectorKey, int]]:
        return self._selector.select(timeout)

    def dispatch(self, ready: list[tuple[selectors.SelectorKey, int]]) -> None:
        for key, mask in ready:
            handler: Handler = key.data
            if mask & EVENT_READ:
                handler.on_readable()
            if mask & EVENT_WRITE:
                handler.on_writable()

    def close(self) -> None:
        self._selector.close()


if hasattr(select, "epoll"):
    _EPOLL_READISH = select.EPOLLIN | select.EPOLLPRI | select.EPOLLERR | select.EPOLLHUP
    _EPOLL_WRITEISH = select.EPOLLOUT | select.EPOLLERR | select.EPOLLHUP


def _to_epoll(events: int) -> int:
    return ((select.EPOLLIN if events & EVENT_READ else 0)
            | (select.EPOLLOUT if events & EVENT_WRITE else 0))


_SELECTORS: dict[str, str] = {"selectors": "DefaultSelector", "poll": "PollSelector",
                              "select": "SelectSelector", "kqueue": "KqueueSelector"}
POLLER_ENV = "WEBSCALE_POLLER"


def available_pollers() -> list[str]:
    """The WEBSCALE_POLLER values this platform has (epoll: Linux; kqueue: BSD and macOS)."""
    return ((["epoll"] if hasattr(select, "epoll") else [])
            + [kind for kind, name in _SELECTORS.items() if hasattr(selectors, name)])


def make_poller(kind: str | None = None) -> _EpollPoller | _SelectorPoller:
    """epoll where the kernel has it; `kind` (default $WEBSCALE_POLLER) picks a `selectors` one.

    An unknown or unavailable kind is a ConfigError naming the variable and what this platform
    has, so a typo stops the start with one line (exit code 2), not a traceback."""
    from_env = kind is None and bool(os.environ.get(POLLER_ENV))
    kind = kind or os.environ.get(POLLER_ENV) or ("epoll" if hasattr(select, "epoll")
                                                  else "selectors")
    if kind not in available_pollers():
        why = ("not available on this platform" if kind in ("epoll", *_SELECTORS)
               else "not a poller")
        raise ConfigError(f"{POLLER_ENV}={kind!r}: {why} (this platform has: "
                          f"{', '.join(available_pollers())})")
    poller: _EpollPoller | _SelectorPoller
    if kind == "epoll":
        poller = _EpollPoller()
    else:
        selector_class: type[selectors.BaseSelector] = getattr(selectors, _SELECTORS[kind])
        poller = _SelectorPoller(selector_class())
    if from_env:
        logger.info("%s poller, as %s=%s asks", poller.name, POLLER_ENV, kind)
    return poller


class EventLoop:
    def __init__(self, poller: str | None = None) -> None:
        self._poller = make_poller(poller)
        self.poller_name = self._poller.name
        self._timers: list[Timer] = []
        self._coarse: dict[int, list[Timer]] = {}  # tick number -> timers due in it
        self._coarse_next = 0  # the earliest tick with timers (0: none)
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
        # The longest the loop may sleep while callbacks queued with wake=False may arrive
        # (None: no bound beyond the timers and run_once's max_wait).
        self.wait_cap: float | None = None

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

    def call_coarse(self, delay: float, callback: Callable[..., object], *args: Any) -> Timer:
        """`call_later` to within COARSE_TICK (never early), sharing a wake-up per tick."""
        when = time.monotonic() + delay
        tick = int(when / COARSE_TICK) + 1
        timer = Timer(tick * COARSE_TICK, callback, args)
        bucket = self._coarse.get(tick)
        if bucket is None:
            self._coarse[tick] = [timer]
            if not self._coarse_next or tick < self._coarse_next:
                self._coarse_next = tick
        else:
            bucket.append(timer)
        return timer

    def call_soon(self, callback: Callable[..., object], *args: Any) -> None:
        """Run `callback` on the loop thread after the current event (loop thread only)."""
        self._ready.append((callback, args))

    def call_soon_threadsafe(self, callback: Callable[..., object], *args: Any,
                             wake: bool = True) -> None:
        """Run `callback` on the loop thread; callable from any thread.

        With `wake=False` the loop is not woken for it: it runs at the next wake-up (I/O, a
        timer, another call, or `wait_cap`), and `wake_soon()` can still hurry it along."""
        self._threadsafe.append((callback, args))
        # Order matters: append before checking the flag, and the loop clears the flag before
        # draining, so an item is never left behind without a wake-up on its way.
        if wake and not self._wake_pending:
            self._wake_pending = True
            self.wake()

    def wake_soon(self) -> None:
        """From any thread: make sure the loop wakes up to run what is queued."""
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
        # Hand-offs first: whatever the last iteration gathered goes out just before we sleep.
        for callback in self.before_wait:
            callback()
        timeout: float | None
        if self._ready or self._threadsafe:
            timeout = 0.0
        else:
            timeout = max_wait
            if self._timers or self._coarse_next:
                now = time.monotonic()
                if self._timers:
                    until = self._timers[0].when - now
                    timeout = until if timeout is None or until < timeout else timeout
                if self._coarse_next:
                    until = self._coarse_next * COARSE_TICK - now
                    timeout = until if timeout is None or until < timeout else timeout
            cap = self.wait_cap
            if cap is not None and (timeout is None or cap < timeout):
                timeout = cap
            if timeout is not None and timeout < 0.0:
                timeout = 0.0
        poller = self._poller
        ready = poller.poll(timeout)
        started = self.now = time.monotonic()
        if ready:
            poller.dispatch(ready)  # type: ignore[arg-type]
        self._run_queued()
        self._run_timers()
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
        if self._coarse_next and self._coarse_next * COARSE_TICK <= now:
            self._run_coarse(now)
        # Cancelled timers are dropped lazily; rebuild when they dominate the heap so that
        # reconnect storms do not grow it without bound.
        if (self.iterations & 1023) == 0 and len(timers) > 1024 and self._cancelled_share() > 0.5:
            self._timers = [t for t in timers if not t.cancelled]
            heapq.heapify(self._timers)

    def _run_coarse(self, now: float) -> None:
        coarse = self._coarse
        last = int(now / COARSE_TICK)
        for tick in sorted(t for t in coarse if t <= last):
            for timer in coarse.pop(tick):
                if not timer.cancelled:
                    timer.callback(*timer.args)
        self._coarse_next = min(coarse) if coarse else 0

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
