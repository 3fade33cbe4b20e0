"""A connection's outbound side: the queue of bytes for its socket, and slow readers.

How this works: what the protocol wants sent is appended to `out` and written until the socket
would block (`_flush`); the loop's WRITE interest is kept while anything is queued. Replies queue
there when the client reads slower than handlers write. One big reply is not a slow reader: a
client is judged by what it fails to drain over time. While more than --outbound-limit-bytes are
queued, it must take at least that many bytes every --slow-reader-timeout seconds; one that does
not is closed with 1008, its queued replies dropped (all but the one already on its way) so that
the close frame reaches it next. Handlers that would rather wait than overrun a client use
`handle.send(data, timeout=...)`, which waits while the queue is over its high-water mark
(`notify_when_drained`). What is queued is charged to the server's memory budget (budget.py)
after each flush.

`Outbound` is a part of `connection.Connection` (a mixin over its slots, loop thread only): the
queue's state lives in the connection's own slots, so an idle connection pays for no extra
object.
"""

from __future__ import annotations

import logging
import socket
import ssl
import threading
from typing import TYPE_CHECKING, Any

from . import tls
from .budget import MemoryBudget
from .config import ConnectionSettings
from .loop import EventLoop, Timer
from .protocol import Phase, ServerProtocol
from .rejections import log_rejection, peer
from .stats import Stats

logger = logging.getLogger("webscale.connection")


class Outbound:
    # No slots of its own: the connection's hold everything, so it keeps no __dict__. (Hidden
    # from the type checker, which would otherwise refuse the assignments to those slots.)
    if not TYPE_CHECKING:
        __slots__ = ()


    if TYPE_CHECKING:  # what it uses of connection.Connection, which defines all of these
        conn_id: int
        address: Any
        loop: EventLoop
        sock: socket.socket
        proto: ServerProtocol
        settings: ConnectionSettings
        stats: Stats
        budget: MemoryBudget
        out: list[bytes | bytearray]
        out_bytes: int
        out_accounted: int
        sent_bytes: int
        drain_timer: Timer | None
        drain_mark: int
        send_waiters: list[tuple[int, threading.Event]] | None
        write_wants_read: bool

        @property
        def closed(self) -> bool: ...

        def _peer_gone(self, exc: BaseException) -> None: ...

        def _close_transport(self) -> None: ...

        def _update_interest(self) -> None: ...

        def _record_close(self, code: int) -> None: ...

        def _arm_close_timer(self) -> None: ...

        def shed(self, code: int) -> None: ...

    def _flush(self) -> None:
        proto = self.proto
        if proto.has_output:
            data = proto.data_to_send()
            self.out.append(data)
            self.out_bytes += len(data)
        out = self.out
        sock = self.sock
        stats = self.stats
        while out:
            chunk = out[0]
            try:
                sent = tls.send(sock, chunk)
            except (ssl.SSLError, OSError) as exc:
                self._peer_gone(exc)
                return
            if sent is tls.Want.WRITE:
                break
            if sent is tls.Want.READ:
                self.write_wants_read = True
                break
            stats.bytes_out += sent
            self.sent_bytes += sent
            self.out_bytes -= sent
            if sent == len(chunk):
                del out[0]
            else:
                out[0] = chunk[sent:]
        if self.out_bytes != self.out_accounted:
            self._outbound_changed()
        if not out and proto.transport_should_close:
            self._close_transport()
            return
        self._update_interest()

    def _outbound_changed(self) -> None:
        """After a flush left a different amount queued: charge the budget, watch the reader,
        wake handlers waiting for room."""
        out_bytes = self.out_bytes
        budget = self.budget
        budget.used += out_bytes - self.out_accounted
        self.out_accounted = out_bytes
        if budget.used > budget.limit and not budget.over:
            budget.went_over()
        if out_bytes > self.settings.outbound_limit_bytes:
            if budget.over and (self.proto.phase is Phase.OPEN
                                or self.proto.phase is Phase.FAILING):
                # No memory to wait for a slow reader with: close it now (a handler flooding
                # a client that does not read would queue a second's worth meanwhile).
                self.shed(1008)
                return
            if self.drain_timer is None:
                self.drain_mark = self.sent_bytes
                self.drain_timer = self.loop.call_later(self.settings.slow_reader_timeout,
                                                        self._drain_check)
        elif self.drain_timer is not None:
            self.drain_timer.cancel()
            self.drain_timer = None
        if self.send_waiters is not None:
            self._wake_send_waiters()

    def _drain_check(self) -> None:
        """--slow-reader-timeout after the queue went over the limit: did the client take at
        least --outbound-limit-bytes meanwhile?"""
        self.drain_timer = None
        limit = self.settings.outbound_limit_bytes
        if self.closed or self.out_bytes <= limit:
            return
        taken = self.sent_bytes - self.drain_mark
        if taken >= limit:  # reading, only slower than replies come: watch the next period
            self.drain_mark = self.sent_bytes
            self.drain_timer = self.loop.call_later(self.settings.slow_reader_timeout,
                                                    self._drain_check)
            return
        self._slow_reader(taken)

    def _slow_reader(self, taken: int) -> None:
        log_rejection(logger, "conn %d: closing a slow reader at %s with 1008: %d bytes queued, "
                      "%d taken in %.1fs", self.conn_id, peer(self.address), self.out_bytes,
                      taken, self.settings.slow_reader_timeout)
        self._record_close(1008)
        self._drop_queued_output()
        if self.proto.phase is Phase.CLOSING:
            return  # our close frame is queued already; the close timer bounds the wait
        self.proto.close(1008, "slow reader")
        self._arm_close_timer()
        self._flush()

    def _drop_queued_output(self) -> None:
        """Drop every queued reply but the first, which may be on its way (partly sent, or
        inside OpenSSL after a want-write): the close frame that follows then reaches the
        client as soon as it reads that far."""
        out = self.out
        if len(out) > 1:
            del out[1:]
            self.out_bytes = len(out[0])

    def _wake_send_waiters(self) -> None:
        waiters = self.send_waiters
        assert waiters is not None
        out_bytes = self.out_bytes
        still = [(level, waiter) for level, waiter in waiters if out_bytes > level]
        if len(still) != len(waiters):
            for level, waiter in waiters:
                if out_bytes <= level:
                    waiter.set()
            self.send_waiters = still or None

    def notify_when_drained(self, waiter: threading.Event, level: int) -> None:
        """Set `waiter` once no more than `level` bytes are queued, or the connection closed
        (a handle's timed send; everything it queued before is applied by now)."""
        if self.closed or self.out_bytes <= level:
            waiter.set()
            return
        if self.send_waiters is None:
            self.send_waiters = []
        self.send_waiters.append((level, waiter))
