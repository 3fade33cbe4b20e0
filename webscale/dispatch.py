"""Hand-off of complete messages from the loop to the thread pool, with backpressure.

How this works: the loop appends each complete message to its connection's inbox and marks the
connection ready. Once per loop iteration (`flush`, called before the loop waits again) the ready
connections' inboxes are packed into work units and submitted to the pool. A connection has at
most one batch queued or running at a time, which keeps its messages in order without locks: the
pool thread gets each inbox as an immutable tuple, decodes and handles the messages in order, and
reports one `UnitDone` back through `call_soon_threadsafe`; the loop applies the counts and marks
those connections ready again if more arrived meanwhile.

Why units: `ThreadPoolExecutor.submit` and the completion wake-up cost more than decoding a small
message, and each one is a GIL hand-off between the loop and a pool thread. So fast handlers are
packed many messages to a unit (about 2 ms of work, from a moving average of the measured cost
per message; a ready message waits up to --batch-linger, 2 ms, for company), while slow ones (a
blocking database call) go one connection per unit so the pool's threads run them side by side.

How many units run at once: GIL-bound units (decode, fast handlers) are capped at two. More
would add no throughput (one thread holds the GIL at a time) but each one queued on the GIL
delays the loop thread by another switch interval, which is what pings and reads wait on. A
unit's CPU time over its wall time tells the kinds apart; when handlers wait on I/O the cap
lifts and the pool's threads all run, and a unit still running after 50 ms never counts
against the cap, so handlers stuck in a slow call do not hold up the rest (`unit_cap.py`).

Backpressure: when a connection has `max_in_flight_per_connection` messages waiting or in the pool,
or the server has `max_in_flight_total`, the connection stops reading (its socket leaves the
selector's read set) and TCP pushes back on the client. Reading resumes once the pool catches up.
Nothing is dropped and no queue grows without bound.

Handlers run in the pool and may block. They talk to the connection only through
`ConnectionHandle`, whose `send`/`close` enqueue work for the loop; pool threads never touch a
socket or loop state.
"""

from __future__ import annotations

import bisect
import importlib
import logging
import time
from collections import deque
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol

from .config import Config
from .errors import ConfigError, DecodeError
from .messages import decode_telemetry
from .stats import HANDLER_BOUNDS, Stats
from .unit_cap import UnitCap

if TYPE_CHECKING:
    from .connection import Connection
    from .loop import EventLoop, Timer

logger = logging.getLogger(__name__)

Handler = Callable[["ConnectionHandle", Any], object]
# One unit of pool work: per connection, its handle and the messages to handle in order.
Unit = list[tuple["Inbox", "ConnectionHandle", tuple[str | bytes, ...]]]


class Inbox(Protocol):
    """What the dispatcher needs of a connection (implemented by connection.Connection)."""

    conn_id: int
    inbox: list[str | bytes]
    in_flight: int
    batch_running: bool
    handle: ConnectionHandle | None  # set at the upgrade, before any message can arrive

    def apply_backpressure(self, paused: bool) -> None: ...

    def batch_done(self) -> None: ...

    def close_from_handler(self, code: int, reason: str) -> None: ...


@dataclass(frozen=True, slots=True)
class UnitDone:
    """What a pool thread reports for one unit: totals, and per connection what it finished."""

    finished: tuple[tuple[Inbox, int, int], ...]  # (connection, messages handled, close code)
    decoded: int
    decode_errors: int
    handler_errors: int
    handler_buckets: tuple[int, ...]
    handler_seconds: float
    cpu_seconds: float  # the pool thread's CPU time for the unit
    seq: int  # the unit's submission number


# A unit of fast messages should keep a pool thread busy about this long: long enough to
# amortise the hand-off, short enough that results flow back steadily.
_UNIT_TARGET_SECONDS = 0.002
_UNIT_MAX_MESSAGES = 256


class ConnectionHandle:
    """A handler's view of its connection: thread-safe, and safe to keep after it closes."""

    __slots__ = ("conn_id", "remote_address", "_loop", "_conn")

    def __init__(self, loop: EventLoop, conn: Connection, remote_address: object) -> None:
        self.conn_id = conn.conn_id
        self.remote_address = remote_address
        self._loop = loop
        self._conn = conn

    def send(self, data: str | bytes) -> None:
        """Queue a text (str) or binary (bytes) message; returns at once, from any thread."""
        self._loop.call_soon_threadsafe(self._conn.send_from_handler, data)

    def close(self, code: int = 1000, reason: str = "") -> None:
        self._loop.call_soon_threadsafe(self._conn.close_from_handler, code, reason)

    def __repr__(self) -> str:
        return f"<ConnectionHandle {self.conn_id} {self.remote_address}>"


def load_handler(spec: str | None) -> Handler | None:
    """Import "package.module:function"; ConfigError naming what is missing."""
    if spec is None:
        return None
    module_name, _, attr = spec.partition(":")
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise ConfigError(f"--handler {spec}: cannot import {module_name}: {exc}") from exc
    handler = getattr(module, attr, None)
    if not callable(handler):
        raise ConfigError(f"--handler {spec}: {module_name} has no callable {attr!r}")
    return handler  # type: ignore[no-any-return]


class Dispatcher:
    def __init__(self, loop: EventLoop, config: Config, stats: Stats,
                 handler: Handler | None) -> None:
        self.loop = loop
        self.stats = stats
        self.handler = handler
        self.decode = config.decode == "telemetry"
        self.close_on_invalid = config.invalid_json == "close"
        self.per_connection_limit = config.max_in_flight_per_connection
        self.total_limit = config.max_in_flight_total
        # Resume globally paused connections only when well below the bound, so they do not
        # flap between paused and reading on every unit.
        self.total_resume = max(1, self.total_limit * 3 // 4)
        self.linger = config.batch_linger
        self.pool = ThreadPoolExecutor(config.threads, thread_name_prefix="webscale-pool")
        self.in_flight_total = 0
        # Moving average of seconds per message (decode + handler), sizing the units.
        self.cost_per_message = 0.0001
        self.cap = UnitCap(config.threads, loop.now)
        self._cap_timer: Timer | None = None
        self._ready: deque[Inbox] = deque()
        # Messages in the ready inboxes when they became ready (later arrivals are not counted:
        # an undercount only lets a unit linger its --batch-linger in full).
        self._ready_messages = 0
        self._ready_since = 0.0
        self._linger_timer: Timer | None = None
        self._globally_paused: dict[int, Inbox] = {}
        self._last_error_log = 0.0
        loop.before_wait.append(self.flush)

    # -- loop thread ------------------------------------------------------------------------
    def submit(self, conn: Inbox, data: str | bytes) -> None:
        """Queue one complete message (loop thread); may pause reading that connection."""
        conn.inbox.append(data)
        conn.in_flight += 1
        self.in_flight_total += 1
        if not conn.batch_running:
            conn.batch_running = True
            self._mark_ready(conn)
        if conn.in_flight >= self.per_connection_limit:
            conn.apply_backpressure(True)
        elif self.in_flight_total >= self.total_limit:
            self._globally_paused[conn.conn_id] = conn
            conn.apply_backpressure(True)

    def _mark_ready(self, conn: Inbox) -> None:
        if not self._ready:
            self._ready_since = self.loop.now
        self._ready.append(conn)
        self._ready_messages += len(conn.inbox)

    def _free_units(self) -> int:
        """Units that may be submitted now under the cap; arms a timer when there are none."""
        free, wait = self.cap.free(self.loop.now)
        if free <= 0 and self._cap_timer is None:
            # A finishing unit flushes again; this timer covers units that turn stale instead.
            self._cap_timer = self.loop.call_later(wait, self._cap_check)
        return free

    def _cap_check(self) -> None:
        self._cap_timer = None
        self.flush()

    def flush(self, force: bool = False) -> None:
        """Pack the ready connections' inboxes into units and submit them (end of iteration)."""
        ready = self._ready
        if not ready:
            return
        free_units = self._free_units() if self.cap.capped else None
        if free_units is not None and free_units <= 0:
            return  # meanwhile the inboxes grow into bigger units
        budget = min(_UNIT_MAX_MESSAGES,
                     max(1, int(_UNIT_TARGET_SECONDS / self.cost_per_message)))
        if not force and budget > 1 and self._ready_messages < budget:
            waited = self.loop.now - self._ready_since
            if waited < self.linger:
                if self._linger_timer is None:
                    self._linger_timer = self.loop.call_later(self.linger - waited,
                                                              self._linger_over)
                return
        if self._linger_timer is not None:
            self._linger_timer.cancel()
            self._linger_timer = None
        unit: Unit = []
        count = 0
        taken = 0
        while ready:
            conn = ready.popleft()
            batch = tuple(conn.inbox)
            conn.inbox.clear()
            handle = conn.handle
            assert handle is not None
            unit.append((conn, handle, batch))
            count += len(batch)
            taken += len(batch)
            if count >= budget:
                self._submit(unit)
                unit = []
                count = 0
                if free_units is not None:
                    free_units -= 1
                    if free_units == 0:
                        break
        if unit:
            self._submit(unit)
        # Connections left over (the pool is full) keep waiting with their _ready_since; the
        # count is what they held when marked ready, less what was taken (never over).
        self._ready_messages = max(0, self._ready_messages - taken) if ready else 0
        if ready:
            self._free_units()  # arms _cap_timer: if the units just sent block, they turn stale
        self.stats.in_flight = self.in_flight_total

    def _submit(self, unit: Unit) -> None:
        seq = self.cap.submitted(self.loop.now)
        self.stats.pool_queue_depth = self.cap.in_pool
        self.pool.submit(self._run_unit, unit, seq)

    def _unit_done(self, done: UnitDone) -> None:
        stats = self.stats
        self.cap.finished(done.seq, done.cpu_seconds, done.handler_seconds, self.loop.now)
        stats.pool_gil_bound = int(self.cap.capped)
        stats.pool_queue_depth = self.cap.in_pool
        handled = 0
        for conn, count, close_code in done.finished:
            handled += count
            conn.in_flight -= count
            conn.batch_running = False
            if close_code:
                conn.close_from_handler(close_code, "invalid JSON")
            if conn.inbox:
                conn.batch_running = True
                self._mark_ready(conn)
            if (conn.in_flight < self.per_connection_limit
                    and conn.conn_id not in self._globally_paused):
                conn.apply_backpressure(False)
            conn.batch_done()
        self.in_flight_total -= handled
        stats.in_flight = self.in_flight_total
        stats.messages_handled += handled
        stats.messages_decoded += done.decoded
        stats.decode_errors += done.decode_errors
        stats.handler_errors += done.handler_errors
        stats.handler_seconds.merge(done.handler_buckets, done.handler_seconds)
        if handled:
            self.cost_per_message = (0.8 * self.cost_per_message
                                     + 0.2 * done.handler_seconds / handled)
        if self._globally_paused and self.in_flight_total <= self.total_resume:
            paused = list(self._globally_paused.values())
            self._globally_paused.clear()
            for other in paused:
                if other.in_flight < self.per_connection_limit:
                    other.apply_backpressure(False)

    def _linger_over(self) -> None:
        self._linger_timer = None
        self.flush(force=True)

    def forget(self, conn: Inbox) -> None:
        """The connection closed; its in-flight messages still finish (loop thread)."""
        self._globally_paused.pop(conn.conn_id, None)

    @property
    def idle(self) -> bool:
        return self.in_flight_total == 0 and self.cap.in_pool == 0

    def shutdown(self, wait: bool) -> None:
        for timer in (self._linger_timer, self._cap_timer):
            if timer is not None:
                timer.cancel()
        self._linger_timer = self._cap_timer = None
        self.pool.shutdown(wait=wait, cancel_futures=not wait)

    # -- pool threads -----------------------------------------------------------------------
    def _run_unit(self, unit: Unit, seq: int) -> None:
        decoded = decode_errors = handler_errors = 0
        buckets = [0] * (len(HANDLER_BOUNDS) + 1)
        spent = 0.0
        handler = self.handler
        decode = self.decode
        clock = time.perf_counter
        cpu_started = time.thread_time()
        finished: list[tuple[Inbox, int, int]] = []
        try:
            for conn, handle, batch in unit:
                close_code = 0
                for data in batch:
                    started = clock()
                    message: Any = data
                    if decode:
                        try:
                            message = decode_telemetry(data)
                            decoded += 1
                        except DecodeError as exc:
                            decode_errors += 1
                            self._log_rate_limited("conn %d: undecodable message: %s",
                                                   handle.conn_id, exc)
                            if self.close_on_invalid:
                                close_code = 1007
                                break  # the connection is closing; the rest count as handled
                            message = None
                    if handler is not None and message is not None:
                        try:
                            handler(handle, message)
                        except Exception:
                            handler_errors += 1
                            logger.exception("conn %d: handler raised", handle.conn_id)
                    elapsed = clock() - started
                    spent += elapsed
                    buckets[_bucket(elapsed)] += 1
                finished.append((conn, len(batch), close_code))
        except BaseException:
            # Not a handler's Exception (those are counted above): SystemExit from a handler,
            # a MemoryError. Logged; the unit's messages still count as handled below, or the
            # connections would never get another unit and the in-flight counts never drain.
            handler_errors += 1
            logger.exception("pool unit %d failed", seq)
            raise
        finally:
            for conn, _handle, batch in unit[len(finished):]:
                finished.append((conn, len(batch), 0))
            self.loop.call_soon_threadsafe(
                self._unit_done,
                UnitDone(tuple(finished), decoded, decode_errors, handler_errors,
                         tuple(buckets), spent, time.thread_time() - cpu_started, seq))

    def _log_rate_limited(self, fmt: str, *args: object) -> None:
        # A client streaming garbage must not turn into a log flood: one line a second at most.
        now = time.monotonic()
        if now - self._last_error_log >= 1.0:
            self._last_error_log = now
            logger.warning(fmt, *args)


def _bucket(seconds: float) -> int:
    """Index of the first bound >= seconds (the last bucket is +Inf), as Histogram.observe."""
    return bisect.bisect_left(HANDLER_BOUNDS, seconds)
