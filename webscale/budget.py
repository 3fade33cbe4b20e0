"""The memory budget: bytes buffered on behalf of clients, bounded server-wide.

How this works: whatever the server holds because a client sent it, or has yet to read it, is
charged to one `MemoryBudget` (--max-buffered-bytes): partial messages being reassembled
(inflated bytes with permessage-deflate, plus a fixed overhead per fragment), complete messages
waiting in a mailbox or running in the pool, and replies queued for a client's socket. Only the
loop thread changes `used` (a pool thread's finished messages are released when the loop applies
the completion the dispatcher already queues), so there is no lock; the hot paths add and
subtract inline and compare with `limit`.

Past `limit` the budget is *over*, and connections that would add to it stop being read
(backpressure): one holding a partial message is held at its next readable event, one whose
mailbox holds more than `OVER_BUDGET_ALLOWANCE` is paused by the dispatcher at its next message.
A connection with little in flight (a device sending a small message now and then) keeps going.
The `MemoryGuard` then looks every `CHECK_SECONDS` until `used` is back under `resume_at` (7/8
of the limit), when the connections held are read again, a few each check as the headroom
allows. If meanwhile `used` has not gone down for
`SHED_AFTER_SECONDS` (a partial message cannot shrink while its connection is not read, a
handler may be stuck, a client may have stopped reading), the connections holding the most are
closed, biggest first, until the estimate is under `resume_at`: with 1009 when most of what they
hold is a partial message, 1008 otherwise. What they held is dropped at once (their queued
replies and unhandled messages too).

What is not counted: kernel socket buffers, OpenSSL's record buffers, zlib's windows with
permessage-deflate, and each connection's fixed cost (~18 KB of Python objects): those scale with
--max-connections, not with what clients send.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any, Protocol

from .rejections import log_rejection

logger = logging.getLogger(__name__)

# A mailbox may hold this much while the budget is over before its connection is paused: small
# messages from well-behaved clients keep flowing while the big holders wait.
OVER_BUDGET_ALLOWANCE = 64 * 1024
CHECK_SECONDS = 0.1
SHED_AFTER_SECONDS = 0.5
# Held connections are let go a few at a time, this much headroom each (what one may read in a
# readiness event: eight 16 KiB TLS records), so that they do not all read in one loop turn.
RELEASE_ALLOWANCE = 128 * 1024


def physical_memory() -> int | None:
    """Bytes of RAM this process may use: the machine's, or its cgroup's limit when lower."""
    try:
        total: int | None = os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):
        total = None
    for path in ("/sys/fs/cgroup/memory.max", "/sys/fs/cgroup/memory/memory.limit_in_bytes"):
        try:
            text = Path(path).read_text().strip()
        except OSError:
            continue
        if text.isdigit() and (total is None or int(text) < total):
            total = int(text)
    return total


def default_max_buffered_bytes() -> int:
    """A quarter of memory (256 MiB on a 1 GB Raspberry Pi 4); 256 MiB when unknown."""
    memory = physical_memory()
    return memory // 4 if memory else 256 << 20


class Holdable(Protocol):
    """A connection the budget stopped reading (connection.Connection implements it)."""

    def release_budget_hold(self) -> None: ...


class MemoryBudget:
    """Bytes buffered for clients, server-wide (loop thread only; see the module docstring)."""

    __slots__ = ("limit", "resume_at", "used", "over", "held", "on_over")

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.resume_at = limit - limit // 8
        self.used = 0
        self.over = False
        # Connections held (not read) until the budget recovers; a dict keeps their order.
        self.held: dict[Holdable, None] = {}
        self.on_over: Callable[[], None] | None = None

    def charge(self, size: int) -> None:
        """Add `size` bytes (negative: release); hot paths do the same inline."""
        self.used += size
        if self.used > self.limit and not self.over:
            self.went_over()

    def went_over(self) -> None:
        """`used` crossed `limit`: start holding adders and let the guard watch."""
        self.over = True
        if self.on_over is not None:
            self.on_over()

    def hold(self, conn: Holdable) -> None:
        self.held[conn] = None

    def forget(self, conn: Holdable) -> None:
        self.held.pop(conn, None)

    def recovered(self) -> None:
        """Back under `resume_at`: read held connections again, as many as the headroom
        allows (RELEASE_ALLOWANCE each, at least one); the guard lets the rest go later."""
        self.over = False
        count = max(1, (self.resume_at - self.used) // RELEASE_ALLOWANCE)
        held = self.held
        while held and count:
            conn = next(iter(held))
            del held[conn]
            conn.release_budget_hold()
            count -= 1

    @classmethod
    def unlimited(cls) -> MemoryBudget:
        """For a protocol or connection made without a server (tests, tools)."""
        return cls(1 << 62)


# (connection, bytes of its partial message, other bytes it holds that closing it would free)
Holding = tuple[Any, int, int]


class MemoryGuard:
    """Watches an over budget: resumes held connections, or closes the biggest holders."""

    def __init__(self, budget: MemoryBudget, loop: Any, holders: Callable[[], Iterable[Holding]],
                 shed: Callable[[Any, int], None],
                 on_recovered: Iterable[Callable[[], None]] = ()) -> None:
        self.budget = budget
        self.loop = loop
        self.holders = holders
        self.shed = shed
        self.on_recovered = list(on_recovered)
        self.timer: Any = None
        self.mark = 0           # `used` at the start of the current window
        self.mark_time = 0.0
        budget.on_over = self._went_over

    def _went_over(self) -> None:
        budget = self.budget
        log_rejection(logger, "memory budget exceeded: %d bytes buffered, limit %d; holding back "
                      "the connections that add to it", budget.used, budget.limit)
        if self.timer is None:
            self.mark, self.mark_time = budget.used, self.loop.time()
            self.timer = self.loop.call_later(CHECK_SECONDS, self.check)

    def check(self) -> None:
        self.timer = None
        budget = self.budget
        if budget.used > budget.resume_at:
            now = self.loop.time()
            if budget.used < self.mark:
                self.mark, self.mark_time = budget.used, now  # draining: give it time
            elif now - self.mark_time >= SHED_AFTER_SECONDS:
                self._shed_biggest()
                self.mark, self.mark_time = budget.used, now
        if budget.used <= budget.resume_at:
            budget.recovered()
            for callback in self.on_recovered:
                callback()
            if not budget.held:
                return
        self.timer = self.loop.call_later(CHECK_SECONDS, self.check)

    def _shed_biggest(self) -> None:
        budget = self.budget
        excess = budget.used - budget.resume_at
        ranked = sorted(((partial + other, partial, conn)
                         for conn, partial, other in self.holders() if partial + other > 0),
                        key=lambda item: item[0], reverse=True)
        closed = 0
        for held, partial, conn in ranked:
            if excess <= 0:
                break
            self.shed(conn, 1009 if partial * 2 >= held else 1008)
            excess -= held
            closed += 1
        logger.warning("memory budget: %d bytes buffered (limit %d) and not draining: closed the "
                       "%d connection(s) holding the most", budget.used, budget.limit, closed)

    def cancel(self) -> None:
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None
