"""A connection's deadlines: the handshake, keepalive pings and their pongs, idleness, the close.

How this works: all but the close are coarse timers (`EventLoop.call_coarse`, 100 ms ticks that
every connection shares): deadlines of seconds need no better, and 5,000 connections pinged every
20 s then cost ten wake-ups a second instead of 250. A connection has at most one keepalive timer
armed, for the next of: its pong's deadline, its next ping, its idle deadline. The close timer
(--close-timeout) is a precise one: it bounds the close handshake, and a protocol failure's wait
for the pool to answer what came before it.

`Deadlines` is a part of `connection.Connection` (a mixin over its slots, loop thread only).
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any

from .config import ConnectionSettings
from .loop import EventLoop, Timer
from .protocol import Phase, ServerProtocol
from .stats import Stats

logger = logging.getLogger("webscale.connection")


class Deadlines:
    # No slots of its own: the connection's hold everything, so it keeps no __dict__. (Hidden
    # from the type checker, which would otherwise refuse the assignments to those slots.)
    if not TYPE_CHECKING:
        __slots__ = ()


    if TYPE_CHECKING:  # what it uses of connection.Connection, which defines all of these
        conn_id: int
        address: Any
        loop: EventLoop
        proto: ServerProtocol
        settings: ConnectionSettings
        stats: Stats
        websocket: bool
        handshake_timer: Timer | None
        keepalive_timer: Timer | None
        close_timer: Timer | None
        awaiting_pong: bytes
        ping_sent_at: float
        last_recv: float
        ping_count: int

        @property
        def closed(self) -> bool: ...

        transport: Any  # connection.Transport

        def _close_transport(self) -> None: ...

        def _flush(self) -> None: ...

        def _record_close(self, code: int) -> None: ...

        def close(self, code: int = 1000, reason: str = "") -> None: ...

    def _handshake_timed_out(self) -> None:
        self.handshake_timer = None
        if not self.websocket and not self.closed:
            self.stats.handshake_timeouts += 1
            if logger.isEnabledFor(logging.DEBUG):
                logger.debug("conn %d: handshake timed out in %s/%s", self.conn_id,
                             self.transport.value, self.proto.phase.value)
            self.proto.abort()
            self._close_transport()

    def _arm_keepalive(self, delay: float | None = None) -> None:
        settings = self.settings
        if delay is None:
            delay = settings.ping_interval or settings.idle_timeout
        if delay > 0:
            self.keepalive_timer = self.loop.call_coarse(delay, self._keepalive)

    def _keepalive(self) -> None:
        """Every --ping-interval: drop a peer whose pong is overdue or that is idle, else ping."""
        self.keepalive_timer = None
        if self.proto.phase is not Phase.OPEN or self.closed:
            return
        settings = self.settings
        now = self.loop.now
        if self.awaiting_pong and now - self.ping_sent_at >= settings.ping_timeout > 0:
            logger.info("conn %d: no pong from %s within %.1fs, dropping", self.conn_id,
                        self.address, settings.ping_timeout)
            self._record_close(1011)
            self.proto.abort()
            self._close_transport()
            return
        if settings.idle_timeout and now - self.last_recv >= settings.idle_timeout:
            self.close(1001, "idle timeout")
            return
        if settings.ping_interval and not self.awaiting_pong:
            self.ping_count += 1
            payload = self.ping_count.to_bytes(4, "big")
            if self.proto.send_ping(payload):
                self.awaiting_pong = payload
                self.ping_sent_at = now
                self._flush()
        # Back at the next of: the pong's deadline, the next ping, the idle deadline.
        delays = []
        if settings.ping_interval:
            delays.append(settings.ping_timeout if self.awaiting_pong and settings.ping_timeout
                          else settings.ping_interval)
        if settings.idle_timeout:
            delays.append(settings.idle_timeout - (now - self.last_recv))
        if delays:
            self._arm_keepalive(max(0.0, min(delays)))

    def _arm_close_timer(self) -> None:
        if self.close_timer is None:
            self.close_timer = self.loop.call_later(self.settings.close_timeout,
                                                    self._close_timed_out)

    def _close_timed_out(self) -> None:
        self.close_timer = None
        if self.closed:
            return
        if self.proto.phase is Phase.FAILING:
            self.proto.fail_now()  # the pool is still busy with earlier messages: stop waiting
            self._flush()
            return
        self._record_close(self.proto.local_close_code or 1006)
        self.proto.abort()
        self._close_transport()
