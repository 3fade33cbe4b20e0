"""A connection's transport: its state, and what it waits for from the selector.

How this works: the transport is in TLS_HANDSHAKE, OPEN or CLOSED (what the bytes mean is the
protocol's phase, not this). The socket is registered for exactly what the connection waits
for: while the TLS handshake runs, what OpenSSL asked for; afterwards READ unless reading is
paused or an upgrade waits for its decision, WRITE only while the outbound buffer is non-empty
(or TLS needs it). Reading is paused for any of three reasons, kept as bits so that one ending
does not resume a connection another still holds: the dispatcher's backpressure (its mailbox is
full), the memory budget (it holds a partial message while the budget is over), and a backlog
of frames waiting in the protocol's buffer. Resuming re-queues a read when OpenSSL already holds
decrypted bytes, which the selector would never report.

`Interest` is a part of `connection.Connection` (a mixin over its slots, loop thread only).
"""

from __future__ import annotations

import enum
import logging
import socket
from typing import TYPE_CHECKING

from . import tls
from .budget import MemoryBudget
from .loop import EVENT_READ, EVENT_WRITE, EventLoop
from .states import check_move
from .stats import Stats

logger = logging.getLogger("webscale.connection")


class Transport(enum.Enum):
    TLS_HANDSHAKE = "tls-handshake"
    OPEN = "open"      # bytes flow; the protocol's phase says what they mean
    CLOSED = "closed"


_ALLOWED: dict[Transport, frozenset[Transport]] = {
    Transport.TLS_HANDSHAKE: frozenset({Transport.OPEN, Transport.CLOSED}),
    Transport.OPEN: frozenset({Transport.CLOSED}),
    Transport.CLOSED: frozenset(),
}


# Why reading is paused (`reading_paused` is a set of these bits; truthy while any is set).
_PAUSED_BY_DISPATCHER = 1  # its mailbox is full (dispatch.py)
_HELD_BY_BUDGET = 2        # it holds a partial message while the memory budget is over
_PARSING_BACKLOG = 4       # frames wait in the protocol's buffer (protocol.EVENTS_PER_CALL)

class Interest:
    # No slots of its own: the connection's hold everything, so it keeps no __dict__. (Hidden
    # from the type checker, which would otherwise refuse the assignments to those slots.)
    if not TYPE_CHECKING:
        __slots__ = ()

    if TYPE_CHECKING:  # what it uses of connection.Connection, which defines all of these
        conn_id: int
        loop: EventLoop
        sock: socket.socket
        stats: Stats
        budget: MemoryBudget
        transport: Transport
        interest: int
        tls_want: tls.Want | None
        reading_paused: int
        upgrade_pending: bool
        read_wants_write: bool
        write_wants_read: bool
        out: list[bytes | bytearray]

        def on_readable(self) -> None: ...

        def on_writable(self) -> None: ...

    def _enter(self, to: Transport, why: str) -> None:
        self.transport = check_move(_ALLOWED, self.transport, to, why, self.conn_id, logger)

    def _enter_closed(self, why: str) -> None:
        self._enter(Transport.CLOSED, why)

    @property
    def closed(self) -> bool:
        # A method, not an inline test: mypy would keep the state narrowed across _flush().
        return self.transport is Transport.CLOSED

    def _update_interest(self) -> None:
        transport = self.transport
        if transport is Transport.CLOSED:
            return
        if transport is Transport.TLS_HANDSHAKE:
            want = EVENT_WRITE if self.tls_want is tls.Want.WRITE else EVENT_READ
        else:
            want = 0
            if not (self.reading_paused or self.upgrade_pending) or self.write_wants_read:
                want = EVENT_READ
            if self.out or self.read_wants_write:
                want |= EVENT_WRITE
        if want == self.interest:
            return
        if self.interest == 0:
            self.loop.register(self.sock, want, self)
        elif want == 0:
            self.loop.unregister(self.sock)
        else:
            self.loop.modify(self.sock, want, self)
        self.interest = want

    def pause_reading(self, paused: bool) -> None:
        """Backpressure from the dispatcher: stop (or resume) reading this client."""
        flags = self.reading_paused
        self._set_paused(flags | _PAUSED_BY_DISPATCHER if paused
                         else flags & ~_PAUSED_BY_DISPATCHER)

    def _hold_for_budget(self) -> None:
        """Over the memory budget with a partial message: read nothing until it recovers."""
        self._set_paused(self.reading_paused | _HELD_BY_BUDGET)
        self.budget.hold(self)

    def release_budget_hold(self) -> None:
        """The memory budget recovered: read this client again."""
        self._set_paused(self.reading_paused & ~_HELD_BY_BUDGET)

    def _set_paused(self, flags: int) -> None:
        was = self.reading_paused
        if flags == was or self.closed:
            return
        self.reading_paused = flags
        if bool(flags) == bool(was):
            return
        self.stats.paused_connections += 1 if flags else -1
        self._update_interest()
        if not flags and tls.pending_plaintext(self.sock):
            self.loop.call_soon(self.on_readable)
