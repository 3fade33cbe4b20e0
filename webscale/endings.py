"""How a connection ends: a clean close, an abort, the memory budget's shedding, a lost peer, a bug.

How this works: `close()` starts the close handshake when a WebSocket is open (the close timer
in keepalive.py bounds it) and drops anything else at once; `abort()` drops it now (the server is
exiting). `shed()` is the memory budget's guard closing a client that holds too much: what it
holds is dropped and the close frame follows the reply already on its way. A peer that vanished
(`_peer_gone`) and an error of ours (`_fail_unexpectedly`: logged in full, the peer told only
1011) end in `_close_transport`, which releases everything the connection holds (timers, the
selector registration, the paused count, the socket, its bytes in the memory budget, handlers
waiting for room) and tells the owner. How each WebSocket ended is counted once per connection
(closes by code in /stats).

`Endings` is a part of `connection.Connection` (a mixin over its slots, loop thread only).
"""

from __future__ import annotations

import errno
import logging
import socket
import threading
from typing import TYPE_CHECKING, Any, Protocol

from . import tls
from .budget import MemoryBudget
from .loop import EventLoop, Timer
from .protocol import Phase, ServerProtocol
from .rejections import log_rejection, peer
from .stats import Stats

logger = logging.getLogger("webscale.connection")


class _Told(Protocol):
    """What endings need of the connection's owner (connection.Owner has it)."""

    def on_closed(self, conn: Any) -> None: ...


class Endings:
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
        owner: _Told
        stats: Stats
        budget: MemoryBudget
        out: list[bytes | bytearray]
        out_bytes: int
        out_accounted: int
        drain_timer: Timer | None
        send_waiters: list[tuple[int, threading.Event]] | None
        handshake_timer: Timer | None
        keepalive_timer: Timer | None
        close_timer: Timer | None
        interest: int
        reading_paused: int
        websocket: bool
        close_code: int

        @property
        def closed(self) -> bool: ...

        def _enter_closed(self, why: str) -> None: ...

        def _flush(self) -> None: ...

        def _drop_queued_output(self) -> None: ...

        def _arm_close_timer(self) -> None: ...

        def release_budget_hold(self) -> None: ...

    def shed(self, code: int) -> None:
        """The memory budget's guard closes this client (1008/1009): what it holds is dropped,
        reading stops, and the close frame follows the reply already on its way."""
        if self.closed:
            return
        phase = self.proto.phase
        if phase is not Phase.OPEN and phase is not Phase.FAILING:
            # Closing already (its close frame queued behind what it holds), or not a
            # WebSocket: let it go now.
            self.proto.abort()
            self._close_transport()
            return
        log_rejection(logger, "conn %d: closing %s with %d to recover memory: %d bytes of a "
                      "partial message, %d queued for it", self.conn_id, peer(self.address),
                      code, self.proto.partial_bytes, self.out_bytes)
        self.stats.memory_sheds += 1
        self.budget.forget(self)
        self._record_close(code)
        self._drop_queued_output()
        # Failed at once, not after the replies to what came before (handlers still running
        # for it would queue more): the close frame follows the reply already on its way.
        self.proto.fail(code)
        self.proto.fail_now()
        self.proto.drop_partial()
        self._arm_close_timer()
        self._flush()

    def close(self, code: int = 1000, reason: str = "") -> None:
        """Start a clean close: a close frame when open, otherwise just drop the socket."""
        if self.closed:
            return
        phase = self.proto.phase
        if phase is Phase.OPEN or phase is Phase.FAILING:
            self.proto.close(code, reason)
            self._arm_close_timer()
            self._flush()
        elif phase is not Phase.CLOSING:
            self.proto.abort()
            self._close_transport()

    def abort(self) -> None:
        """Drop the connection now, without a close handshake (the server is exiting)."""
        self.proto.abort()
        self._close_transport()

    def _record_close(self, code: int) -> None:
        """Count how a WebSocket ended, once per connection (closes by code in /stats)."""
        if not self.close_code and self.websocket:
            self.close_code = code
            self.stats.closes_by_code[code] += 1

    def _peer_gone(self, exc: BaseException) -> None:
        if logger.isEnabledFor(logging.DEBUG):
            logger.debug("conn %d: connection lost in %s: %r", self.conn_id,
                         self.proto.phase.value, exc)
        self._record_close(self.proto.local_close_code or 1006)
        self.proto.abort()
        self._close_transport()

    def _fail_unexpectedly(self, exc: BaseException) -> None:
        # A bug of ours, not the peer's fault: log it fully, tell the peer only 1011.
        logger.error("conn %d: unexpected error in %s", self.conn_id, self.proto.phase.value,
                     exc_info=exc)
        if self.closed:
            return
        if self.proto.phase is Phase.OPEN:
            try:
                self.proto.close(1011, "internal error")
                tls.send(self.sock, self.proto.data_to_send())
            except Exception as close_exc:  # best effort on the way out; the cause is logged above
                logger.debug("conn %d: 1011 close frame not sent: %r", self.conn_id, close_exc)
        self._record_close(1011)
        self.proto.abort()
        self._close_transport()

    def _close_transport(self) -> None:
        if self.closed:
            return
        self._enter_closed("transport closed")
        for timer in (self.handshake_timer, self.keepalive_timer, self.close_timer):
            if timer is not None:
                timer.cancel()
        self.handshake_timer = self.keepalive_timer = self.close_timer = None
        if self.interest:
            try:
                self.loop.unregister(self.sock)
            except (KeyError, ValueError):
                pass
            self.interest = 0
        if self.reading_paused:
            self.reading_paused = 0
            self.stats.paused_connections -= 1
        try:
            self.sock.close()
        except OSError as exc:
            if exc.errno != errno.EBADF:
                logger.debug("conn %d: close: %r", self.conn_id, exc)
        self.out.clear()
        self.out_bytes = 0
        self.proto.drop_partial()
        self.budget.used -= self.out_accounted
        self.out_accounted = 0
        self.budget.forget(self)
        if self.drain_timer is not None:
            self.drain_timer.cancel()
            self.drain_timer = None
        if self.send_waiters is not None:
            for _, waiter in self.send_waiters:
                waiter.set()
            self.send_waiters = None
        self.owner.on_closed(self)
