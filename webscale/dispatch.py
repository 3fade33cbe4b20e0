"""Hand-off of complete messages from the loop to the thread pool, with backpressure.

How this works: each WebSocket has a `Mailbox`, owned here. The loop appends every complete
message to its connection's mailbox and marks the mailbox ready. Once per loop iteration, as the
last thing before the loop sleeps (`flush`, a `before_wait` hook), ready mailboxes are packed into
work units and submitted to the `concurrent.futures` pool. A mailbox has at most one batch
queued or running at a time, which keeps its messages in order without locks: the pool thread
gets each batch as an immutable tuple, decodes and handles the messages in order, and reports a
`UnitDone` back to the loop, which applies the counts and marks mailboxes ready again if more
arrived meanwhile.

Why units: a hand-off is a futex wake of a pool thread and two context switches (10-25 us of CPU on
a small VM, measured in benchmarks/handoff_cost.py), more than decoding a small message. So fast
handlers are packed many messages to a unit (about 2 ms of work, from moving averages of the
measured cost per message and per byte: a few large messages make a unit), and a ready message
waits up to --batch-linger (10 ms) for company; the linger ends at the first loop iteration after
it expires (the loop wakes for reads anyway), and a timer half a linger later bounds it when
nothing else happens. A mailbox whose handler replied to its last batch does not linger: its client
is waiting for an answer (request/response, an echo), while an ingesting handler's client is not.
Slow handlers (a blocking database call) go one mailbox per unit so the pool's threads run them
side by side.

Why completions do not wake the loop: the report of a finished unit is queued with
`call_soon_threadsafe(..., wake=False)` and applied at the loop's next wake-up (the loop's
`wait_cap` bounds that while units are out). Only when the loop is waiting on a unit (a mailbox
with messages behind a running batch, backpressure, a connection failing after its replies, work
held back by the unit cap) is the unit marked urgent, and then its completion wakes the loop.

How many units run at once: GIL-bound units (decode, fast handlers) are capped at two: more add
no throughput and each one queued on the GIL delays the loop thread (reads, pongs). Units that
wait on I/O lift the cap (`unit_cap.py`).

Backpressure: when a mailbox holds `max_in_flight_per_connection` messages or
`max_in_flight_bytes_per_connection` bytes, or the dispatcher `max_in_flight_total` messages, or
the server's memory budget is over and the mailbox holds more than a small allowance
(budget.OVER_BUDGET_ALLOWANCE), its connection stops reading (TCP pushes back on the client) until
the pool catches up. The bytes of every message are charged to the memory budget from `deliver`
until the loop applies the unit's completion (the mailbox remembers its batch's bytes, so the pool
thread reports nothing new). Nothing is dropped and no queue grows without bound; only the
budget's guard may `discard` the messages of a connection it closes.
"""

from __future__ import annotations

import logging
import sys
import time
from collections import deque
from collections.abc import Callable
from typing import Any, Protocol

from .budget import OVER_BUDGET_ALLOWANCE, MemoryBudget
from .handle import ConnectionHandle
from .pool import WorkerPool
from .stats import Stats
from .unit_cap import UnitCap
from .units import Decoder, Handler, Unit, UnitDone

logger = logging.getLogger(__name__)


# A unit of fast messages should keep a pool thread busy about this long: long enough to
# amortise the hand-off, short enough that results flow back steadily.
_UNIT_TARGET_SECONDS = 0.002
_UNIT_MAX_MESSAGES = 256
# Nor more bytes of messages than take that long by the measured cost per byte: large messages
# take long to decode and handle whatever the average per message says, and a small message
# packed after them waits for all of them (a handler slow on 1 MiB messages held a 10 KB one for
# 1.2 s behind six of them otherwise). Bounded both ways: a unit may always carry 64 KiB, and
# never more than 4 MiB.
_UNIT_MIN_BYTES = 64 * 1024
_UNIT_MAX_BYTES = 4 << 20
# While units are in the pool, the loop sleeps at most this long, so a completion nobody
# waits for (counts, the unit cap's bookkeeping) is applied within it.
_COMPLETION_LATENCY = 0.02


class Reader(Protocol):
    """What the dispatcher needs of a connection (connection.Connection implements it)."""

    conn_id: int

    def pause_reading(self, paused: bool) -> None: ...

    def messages_done(self, count: int) -> None: ...

    def close(self, code: int = 1000, reason: str = "") -> None: ...


class Loop(Protocol):
    """The loop calls the dispatcher uses (loop.EventLoop implements them)."""

    now: float
    wait_cap: float | None
    before_wait: list[Callable[[], None]]

    def call_later(self, delay: float, callback: Callable[..., object], *args: Any) -> Any: ...

    def call_soon_threadsafe(self, callback: Callable[..., object], *args: Any,
                             wake: bool = True) -> None: ...

    def wake_soon(self) -> None: ...


class Mailbox:
    """One connection's messages on their way to the pool (loop thread only)."""

    __slots__ = ("reader", "handle", "inbox", "in_flight", "unit", "paused", "held", "closed",
                 "interactive", "inbox_bytes", "unit_bytes")

    def __init__(self, reader: Reader, handle: ConnectionHandle) -> None:
        self.reader = reader
        self.handle = handle
        self.inbox: list[str | bytes] = []
        self.in_flight = 0  # messages received and not yet handled (inbox + pool)
        self.inbox_bytes = 0  # bytes of the inbox's messages
        self.unit_bytes = 0   # bytes of the batch in the pool
        self.unit: Unit[Mailbox] | None = None  # the unit carrying its batch, while one is out
        self.paused = False  # its connection is not being read (backpressure)
        self.held = False  # ... because of the total bound: resumes with the others
        self.closed = False
        self.interactive = False  # its handler replied to the last batch: somebody waits


class Dispatcher:
    def __init__(self, loop: Loop, stats: Stats, handler: Handler | None,
                 decode: Decoder | None, *, threads: int = 16, close_on_invalid: bool = False,
                 max_in_flight_per_connection: int = 64, max_in_flight_total: int = 8192,
                 max_in_flight_bytes_per_connection: int = 4 << 20,
                 batch_linger: float = 0.002, budget: MemoryBudget | None = None) -> None:
        self.loop = loop
        self.stats = stats
        self.handler = handler
        self.decode = decode
        self.close_on_invalid = close_on_invalid
        self.per_connection_limit = max_in_flight_per_connection
        self.per_connection_bytes = max_in_flight_bytes_per_connection
        self.total_limit = max_in_flight_total
        self.budget = budget if budget is not None else MemoryBudget.unlimited()
        # Resume globally paused connections only when well below the bound, so they do not
        # flap between paused and reading on every unit.
        self.total_resume = max(1, max_in_flight_total * 3 // 4)
        self.linger = batch_linger
        self.pool = WorkerPool(threads, thread_name_prefix="webscale-pool")
        self.in_flight_total = 0
        # Moving average of seconds per message (decode + handler), sizing the units.
        self.cost_per_message = 0.0001
        # ... and of seconds per byte of message: 10 ns, a 10 KB message's 100 us.
        self.cost_per_byte = 1e-8
        self.cap = UnitCap(threads, loop.now)
        self._units: dict[int, Unit[Mailbox]] = {}  # seq -> unit, while in the pool
        self._cap_timer: Any = None
        self._ready: deque[Mailbox] = deque()
        # Messages in the ready mailboxes when they became ready (later arrivals are not
        # counted: an undercount only lets a unit linger in full).
        self._ready_messages = 0
        self._ready_since = 0.0
        self._interactive_ready = False  # a ready mailbox's client waits for replies
        self._linger_timer: Any = None
        self._globally_paused: list[Mailbox] = []
        self._mailboxes: dict[Reader, Mailbox] = {}
        self._last_error_log = 0.0
        loop.before_wait.append(self.flush)

    # -- loop thread: mailboxes ---------------------------------------------------------------
    def open(self, reader: Reader, handle: ConnectionHandle) -> None:
        """A WebSocket opened: give it a mailbox."""
        self._mailboxes[reader] = Mailbox(reader, handle)

    def close(self, reader: Reader) -> None:
        """Its connection closed; messages already received still finish."""
        box = self._mailboxes.pop(reader, None)
        if box is not None:
            box.closed = True

    def deliver(self, reader: Reader, data: str | bytes) -> None:
        """One complete message from `reader` (loop thread); may pause reading it."""
        box = self._mailboxes[reader]
        box.inbox.append(data)
        size = len(data)
        if data.__class__ is str and not data.isascii():
            size = sys.getsizeof(data)  # 1, 2 or 4 bytes a character: what it really holds
        box.inbox_bytes += size
        budget = self.budget
        budget.used += size
        if budget.used > budget.limit and not budget.over:
            budget.went_over()
        box.in_flight += 1
        self.in_flight_total += 1
        unit = box.unit
        if unit is None:
            if len(box.inbox) == 1:
                self._mark_ready(box)
        elif not unit.urgent:
            unit.urgent = True  # this message waits for that unit: its completion must wake us
        if (box.in_flight >= self.per_connection_limit
                or box.inbox_bytes + box.unit_bytes >= self.per_connection_bytes):
            self._pause(box)
        elif not box.held and (self.in_flight_total >= self.total_limit or (
                budget.over and box.inbox_bytes + box.unit_bytes > OVER_BUDGET_ALLOWANCE)):
            box.held = True
            self._globally_paused.append(box)
            self._pause(box)

    def queued_bytes(self, reader: Reader) -> int:
        """Bytes of `reader`'s messages not yet given to the pool (what `discard` would free)."""
        box = self._mailboxes.get(reader)
        return box.inbox_bytes if box is not None else 0

    def discard(self, reader: Reader) -> int:
        """Drop `reader`'s messages not yet given to the pool (the memory budget closes it);
        how many. Its batch in the pool still finishes."""
        box = self._mailboxes.get(reader)
        if box is None or not box.inbox:
            return 0
        dropped = len(box.inbox)
        box.inbox.clear()
        box.in_flight -= dropped
        self.in_flight_total -= dropped
        self.budget.used -= box.inbox_bytes
        box.inbox_bytes = 0
        self.stats.in_flight = self.in_flight_total
        reader.messages_done(dropped)
        return dropped

    def _pause(self, box: Mailbox) -> None:
        if not box.paused:
            box.paused = True
            box.reader.pause_reading(True)
            if box.unit is not None:
                box.unit.urgent = True

    def _mark_ready(self, box: Mailbox) -> None:
        ready = self._ready
        if not ready:
            self._ready_since = self.loop.now
        ready.append(box)
        self._ready_messages += len(box.inbox)
        if box.interactive:
            self._interactive_ready = True

    # -- loop thread: hand-off -------------------------------------------------------------
    def flush(self, force: bool = False) -> None:
        """Pack the ready mailboxes into units and submit them (just before the loop sleeps)."""
        ready = self._ready
        if not ready:
            return
        now = self.loop.now
        free_units = self._free_units(now) if self.cap.capped else None
        if free_units is not None and free_units <= 0:
            return  # meanwhile the inboxes grow into bigger units
        cost = self.cost_per_message
        budget = (_UNIT_MAX_MESSAGES if cost * _UNIT_MAX_MESSAGES < _UNIT_TARGET_SECONDS
                  else max(1, int(_UNIT_TARGET_SECONDS / cost)))
        byte_budget = min(_UNIT_MAX_BYTES, max(_UNIT_MIN_BYTES,
                                               int(_UNIT_TARGET_SECONDS / self.cost_per_byte)))
        if (not force and budget > 1 and self._ready_messages < budget
                and not self._interactive_ready):
            waited = now - self._ready_since
            if waited < self.linger:
                if self._linger_timer is None:
                    # The bound when no other wake-up comes: half a linger more.
                    self._linger_timer = self.loop.call_later(1.5 * self.linger - waited,
                                                              self._linger_over)
                return
        if self._linger_timer is not None:
            self._linger_timer.cancel()
            self._linger_timer = None
        unit: Unit[Mailbox] = Unit()
        count = 0
        unit_bytes = 0
        taken = 0
        while ready:
            box = ready.popleft()
            inbox = box.inbox
            batch = tuple(inbox)
            inbox.clear()
            box.unit_bytes = box.inbox_bytes
            box.inbox_bytes = 0
            box.unit = unit
            unit.batches.append((box, batch))
            count += len(batch)
            unit_bytes += box.unit_bytes
            if count >= budget or unit_bytes >= byte_budget:
                self._submit(unit)
                taken += count
                count = unit_bytes = 0
                unit = Unit()
                if free_units is not None:
                    free_units -= 1
                    if free_units == 0:
                        break
        if unit.batches:
            self._submit(unit)
            taken += count
        # Mailboxes left over (the pool is full) keep waiting with their _ready_since; the
        # count is what they held when marked ready, less what was taken (never below 0).
        if ready:
            self._ready_messages = max(0, self._ready_messages - taken)
            self._free_units(now)  # arms _cap_timer: if the units just sent block, they go stale
            for waiting in self._units.values():
                waiting.urgent = True  # their completions free the places we wait for
        else:
            self._ready_messages = 0
            self._interactive_ready = False
        self.stats.in_flight = self.in_flight_total

    def _submit(self, unit: Unit[Mailbox]) -> None:
        unit.seq = seq = self.cap.submitted(self.loop.now)
        self._units[seq] = unit
        self.stats.pool_queue_depth = self.cap.in_pool
        self.loop.wait_cap = _COMPLETION_LATENCY
        self.pool.submit(self._run_unit, unit)

    def _free_units(self, now: float) -> int:
        """Units that may be submitted now under the cap; arms a timer when there are none."""
        free, wait = self.cap.free(now)
        if free <= 0 and self._cap_timer is None:
            # A finishing unit flushes again; this timer covers units that turn stale instead.
            self._cap_timer = self.loop.call_later(wait, self._cap_check)
        return free

    def _cap_check(self) -> None:
        self._cap_timer = None
        self.flush()

    def _linger_over(self) -> None:
        self._linger_timer = None
        self.flush(force=True)

    # -- loop thread: completions ------------------------------------------------------------
    def _unit_done(self, unit: Unit[Mailbox], done: UnitDone[Mailbox]) -> None:
        stats = self.stats
        del self._units[unit.seq]
        self.cap.finished(unit.seq, done.cpu_seconds, done.handler_seconds, self.loop.now)
        stats.pool_gil_bound = int(self.cap.capped)
        stats.pool_queue_depth = self.cap.in_pool
        if not self._units:
            self.loop.wait_cap = None
        handled = 0
        freed = 0
        per_connection_limit = self.per_connection_limit
        per_connection_bytes = self.per_connection_bytes
        for box, count, close_code, replied in done.finished:
            handled += count
            box.in_flight -= count
            freed += box.unit_bytes
            box.unit_bytes = 0
            box.unit = None
            box.interactive = replied
            if box.inbox:
                self._mark_ready(box)  # closed or not: what was received is still handled
            if box.closed:
                continue
            reader = box.reader
            if close_code:
                reader.close(close_code, "invalid JSON")
            if (box.paused and not box.held and box.in_flight < per_connection_limit
                    and box.inbox_bytes < per_connection_bytes):
                box.paused = False
                reader.pause_reading(False)
            reader.messages_done(count)
        self.budget.used -= freed
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
        if freed:
            self.cost_per_byte = 0.8 * self.cost_per_byte + 0.2 * done.handler_seconds / freed
        if self._globally_paused:
            self.resume_held()

    def resume_held(self) -> None:
        """Resume the connections held for the total bound or the memory budget, once both
        allow it (after a completion, and when the budget recovers)."""
        if (not self._globally_paused or self.in_flight_total > self.total_resume
                or self.budget.over):
            return
        paused, self._globally_paused = self._globally_paused, []
        for box in paused:
            box.held = False
            if (box.paused and not box.closed and box.in_flight < self.per_connection_limit
                    and box.inbox_bytes + box.unit_bytes < self.per_connection_bytes):
                box.paused = False
                box.reader.pause_reading(False)

    @property
    def idle(self) -> bool:
        return self.in_flight_total == 0 and not self._units

    def shutdown(self, wait: bool) -> None:
        for timer in (self._linger_timer, self._cap_timer):
            if timer is not None:
                timer.cancel()
        self._linger_timer = self._cap_timer = None
        self.pool.shutdown(wait=wait, cancel_futures=not wait)

    # -- pool threads -----------------------------------------------------------------------
    def _run_unit(self, unit: Unit[Mailbox]) -> None:
        unit.run(self.handler, self.decode, self.close_on_invalid, self._log_rate_limited,
                 self._report)

    def _report(self, unit: Unit[Mailbox], done: UnitDone[Mailbox]) -> None:
        loop = self.loop
        loop.call_soon_threadsafe(self._unit_done, unit, done, wake=False)
        # After queueing (see the module docstring): the loop sets `urgent` before it checks
        # its queue for the last time before sleeping.
        if unit.urgent:
            loop.wake_soon()

    def _log_rate_limited(self, fmt: str, *args: object) -> None:
        # A client streaming garbage must not turn into a log flood: one line a second at most.
        now = time.monotonic()
        if now - self._last_error_log >= 1.0:
            self._last_error_log = now
            logger.warning(fmt, *args)
