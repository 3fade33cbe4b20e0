"""What runs in the pool: a unit of batches, decoded and handled in order, and its report.

How this works: the dispatcher (dispatch.py, loop thread) packs ready mailboxes into a `Unit`, each
with its batch of messages as an immutable tuple, and submits `Unit.run` to the pool. A pool
thread decodes each message (the generated decoder of the message type), calls the handler with
the connection's handle, times each message for the handler-latency histogram, and reports one
`UnitDone` back, whatever happens: a handler's exception is counted and logged, and even a
BaseException (SystemExit from a handler, MemoryError) reports every message as handled, or the
mailboxes would never get another unit and the in-flight counts never drain. Nothing here
touches a socket or loop state; `report` hands the result to the loop.
"""

from __future__ import annotations

import bisect
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Generic, Protocol, TypeVar

from .errors import DecodeError
from .handle import ConnectionHandle
from .stats import HANDLER_BOUNDS

logger = logging.getLogger("webscale.dispatch")

Handler = Callable[[ConnectionHandle, Any], object]
Decoder = Callable[[str | bytes], Any]


class Box(Protocol):
    """What a unit needs of a mailbox: its connection's handle."""

    @property
    def handle(self) -> ConnectionHandle: ...


B = TypeVar("B", bound=Box)


@dataclass(frozen=True, slots=True)
class UnitDone(Generic[B]):
    """What a pool thread reports for one unit: totals, and per mailbox what it finished."""

    # (mailbox, messages handled, close code, whether the handler replied)
    finished: tuple[tuple[B, int, int, bool], ...]
    decoded: int
    decode_errors: int
    handler_errors: int
    handler_buckets: tuple[int, ...]
    handler_seconds: float
    cpu_seconds: float  # the pool thread's CPU time for the unit


class Unit(Generic[B]):
    """Batches of several mailboxes. `urgent` is set by the loop thread while the unit runs;
    the pool thread reads it after queueing the completion (dispatch.py's docstring)."""

    __slots__ = ("seq", "batches", "urgent")

    def __init__(self) -> None:
        self.seq = 0
        self.batches: list[tuple[B, tuple[str | bytes, ...]]] = []
        self.urgent = False

    def run(self, handler: Handler | None, decode: Decoder | None, close_on_invalid: bool,
            log_decode_error: Callable[..., None],
            report: Callable[[Unit[B], UnitDone[B]], None]) -> None:
        """Pool thread: handle every batch in order, then `report` (always, see above)."""
        decoded = decode_errors = handler_errors = 0
        buckets = [0] * (len(HANDLER_BOUNDS) + 1)
        spent = 0.0
        clock = time.perf_counter
        bucket_of = bisect.bisect_left
        bounds = HANDLER_BOUNDS
        cpu_started = time.thread_time()
        finished: list[tuple[B, int, int, bool]] = []
        batches = self.batches
        try:
            for box, batch in batches:
                close_code = 0
                handle = box.handle
                sent_before = handle.sent
                for data in batch:
                    started = clock()
                    message: Any = data
                    if decode is not None:
                        try:
                            message = decode(data)
                            decoded += 1
                        except DecodeError as exc:
                            decode_errors += 1
                            log_decode_error("conn %d: undecodable message: %s",
                                             handle.conn_id, exc)
                            if close_on_invalid:
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
                    buckets[bucket_of(bounds, elapsed)] += 1
                finished.append((box, len(batch), close_code, handle.sent != sent_before))
        except BaseException:
            # Not a handler's Exception (those are counted above): logged, counted, and the
            # unit's messages still count as handled below.
            handler_errors += 1
            logger.exception("pool unit %d failed", self.seq)
            raise
        finally:
            for box, batch in batches[len(finished):]:
                finished.append((box, len(batch), 0, False))
            report(self, UnitDone(tuple(finished), decoded, decode_errors, handler_errors,
                                  tuple(buckets), spent, time.thread_time() - cpu_started))
