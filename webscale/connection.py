"""One client connection: the socket on one side, the sans-I/O protocol on the other.

How this works: the loop calls `on_readable`/`on_writable`. While the TLS handshake runs, those
drive `tls.handshake_step`; afterwards reads feed `ServerProtocol.receive_data`, and the events it
returns go to the connection's owner (a small `Owner` Protocol the server implements): a plain
request is answered with the `Response` value `owner.route()` returns, an upgrade request is
decided by `owner.upgrade_requested()` (now or later, from the pool: it then calls
`accept_upgrade()` or `respond()`), messages go to `owner.on_message()`. Whatever the protocol
wants sent is flushed. The connection never knows the server: it gets the loop, the socket, its
protocol, its settings and its owner when it is made (curio's kernel: no part has direct linkage
to the kernel class), and tests drive it over a socketpair with a fake owner.

The connection tracks only its transport (`Transport`): TLS handshake, open, closed. What the
bytes mean (request head, WebSocket, closing) is the protocol's phase, the one state machine of
that life. The socket is registered for exactly what the connection waits for: READ unless
reading is paused (backpressure, or an upgrade waiting for its decision), WRITE only while the
outbound buffer is non-empty (or TLS needs it). Timers bound the handshake, detect dead peers
(ping/pong) and idle ones, and bound the close handshake.

Four parts of the class live in their own modules: `transport.Interest` (the transport state,
the selector interest and why reading is paused), `outbound.Outbound` (the queue of bytes for the
socket, slow readers, handlers waiting for room), `keepalive.Deadlines` (the handshake,
keepalive, idle and close timers) and `endings.Endings` (close, abort, shedding, a lost peer,
releasing what the connection holds). A connection holding a partial message while the server's
memory budget is over is held (not read) until it recovers, or closed by the budget's guard
(`shed`).
"""

from __future__ import annotations

import logging
import socket
import ssl
import threading
from typing import TYPE_CHECKING, Any, Protocol

from . import tls
from .budget import MemoryBudget
from .config import ConnectionSettings
from .http import PeerCertificate, Request, Response
from .endings import Endings
from .keepalive import Deadlines
from .loop import EventLoop, Timer
from .outbound import Outbound
from .protocol import (
    BacklogPending,
    Closed,
    Event,
    HandshakeFailed,
    MessageReceived,
    Phase,
    PongReceived,
    RequestReceived,
    ServerProtocol,
)
from .rejections import log_rejection, peer
from .stats import Stats
from .transport import _PARSING_BACKLOG, Interest, Transport

logger = logging.getLogger(__name__)


class Owner(Protocol):
    """What a connection asks of whoever owns it (server.Server implements it)."""

    def route(self, request: Request) -> Response:
        """The answer to a plain HTTP request (a pure function of the request)."""
        ...

    def upgrade_requested(self, conn: Connection, request: Request) -> None:
        """Decide an upgrade: call `conn.accept_upgrade()` or `conn.respond(...)`, now or later
        from the loop thread."""
        ...

    def on_message(self, conn: Connection, data: str | bytes) -> None:
        """A complete WebSocket message."""
        ...

    def on_closed(self, conn: Connection) -> None:
        """The transport is closed; `conn.close_code` says how a WebSocket ended (0: none)."""
        ...

    def tls_failed(self, conn: Connection, reason: str, error: BaseException) -> None:
        """The TLS handshake failed (already counted); `reason` is `tls.failure_reason`'s.
        The transport closes right after."""
        ...


# Reads per readiness event before yielding to other connections (fairness under load).
_READS_PER_EVENT = 8

# Close codes of a peer's fault (RFC 6455 §7.4.1), logged as rejections when we fail with them.
_FAILURES = frozenset({1002, 1003, 1007, 1009})


class Connection(Interest, Outbound, Deadlines, Endings):
    __slots__ = ("conn_id", "loop", "sock", "address", "proto", "settings", "owner", "stats",
                 "transport", "out", "out_bytes", "interest", "tls_want", "read_wants_write",
                 "write_wants_read", "reading_paused", "upgrade_pending", "websocket",
                 "handshake_timer", "keepalive_timer", "close_timer", "awaiting_pong",
                 "ping_sent_at", "last_recv", "ping_count", "close_code", "outstanding",
                 "peer_cert", "budget", "out_accounted", "sent_bytes", "drain_timer",
                 "drain_mark", "send_waiters")

    if TYPE_CHECKING:  # the whole Owner; endings.Endings declares only what it uses of it
        owner: Owner

    def __init__(self, loop: EventLoop, sock: socket.socket, protocol: ServerProtocol,
                 settings: ConnectionSettings, owner: Owner, stats: Stats,
                 address: Any = None, budget: MemoryBudget | None = None) -> None:
        self.conn_id = protocol.conn_id
        self.loop = loop
        self.sock = sock
        self.address = address
        self.proto = protocol
        self.settings = settings
        self.owner = owner
        self.stats = stats
        self.transport = Transport.TLS_HANDSHAKE if tls.is_tls(sock) else Transport.OPEN
        # A list, not a deque: it rarely holds more than one chunk, and an empty deque costs
        # ~740 bytes against a list's 56, per idle connection.
        self.out: list[bytes | bytearray] = []
        self.out_bytes = 0
        self.out_accounted = 0  # of out_bytes, what the memory budget has been charged
        self.sent_bytes = 0     # ever taken by the socket: a slow reader's progress
        self.budget = budget if budget is not None else MemoryBudget.unlimited()
        self.drain_timer: Timer | None = None  # armed while out_bytes > outbound_limit_bytes
        self.drain_mark = 0
        self.send_waiters: list[tuple[int, threading.Event]] | None = None
        self.interest = 0
        self.tls_want: tls.Want | None = tls.Want.READ
        self.read_wants_write = False
        self.write_wants_read = False
        self.reading_paused = 0       # why not: _PAUSED_BY_DISPATCHER, _HELD_BY_BUDGET, ...
        self.upgrade_pending = False  # the owner is deciding an upgrade: read nothing more
        self.websocket = False        # the upgrade was accepted (a handle exists)
        # Coarse timers (loop.call_coarse): deadlines of seconds need no better than 100 ms.
        self.handshake_timer: Timer | None = loop.call_coarse(settings.handshake_timeout,
                                                              self._handshake_timed_out)
        self.keepalive_timer: Timer | None = None
        self.close_timer: Timer | None = None
        self.awaiting_pong = b""
        self.ping_sent_at = 0.0
        self.last_recv = loop.now
        self.ping_count = 0
        self.close_code = 0
        self.outstanding = 0  # messages given to the owner and not yet handled
        self.peer_cert: PeerCertificate | None = None

    def start(self) -> None:
        self._update_interest()

    @property
    def is_websocket(self) -> bool:
        """An accepted WebSocket that is not closing yet."""
        return self.proto.phase is Phase.OPEN

    # -- selector callbacks -----------------------------------------------------------------
    def on_readable(self) -> None:
        try:
            transport = self.transport
            if transport is not Transport.OPEN:
                if transport is Transport.TLS_HANDSHAKE:
                    self._drive_handshake()
                return
            if self.write_wants_read:
                self.write_wants_read = False
                self._flush()
            # (read_wants_write is served by on_writable; the flush may have closed us.)
            if not self.reading_paused and not self.upgrade_pending and not self.closed:
                if self.budget.over and self.proto.partial_bytes:
                    self._hold_for_budget()
                else:
                    self._read()
        except Exception as exc:  # the boundary: one connection fails, not all
            self._fail_unexpectedly(exc)

    def on_writable(self) -> None:
        try:
            transport = self.transport
            if transport is not Transport.OPEN:
                if transport is Transport.TLS_HANDSHAKE:
                    self._drive_handshake()
                return
            if self.read_wants_write:
                self.read_wants_write = False
                self._read()
            self._flush()
        except Exception as exc:  # the boundary, as in on_readable
            self._fail_unexpectedly(exc)

    # -- TLS handshake ----------------------------------------------------------------------
    def _drive_handshake(self) -> None:
        try:
            want = tls.handshake_step(self.sock)
        except (ssl.SSLError, OSError) as exc:
            reason = tls.failure_reason(exc)
            self.stats.count_tls_failure(reason)
            self.owner.tls_failed(self, reason, exc)
            self._close_transport()
            return
        self.tls_want = want
        if want is None:
            self.peer_cert = tls.peer_certificate(self.sock)
            self._enter(Transport.OPEN, "TLS handshake complete")
            self._update_interest()
            # The client's request may already sit decrypted inside OpenSSL.
            self._read()
        else:
            self._update_interest()

    # -- reading ----------------------------------------------------------------------------
    def _read(self) -> None:
        sock = self.sock
        proto = self.proto
        stats = self.stats
        chunk = self.settings.read_chunk_bytes
        for _ in range(_READS_PER_EVENT):
            try:
                data = tls.recv(sock, chunk)
            except (ssl.SSLError, OSError) as exc:
                self._peer_gone(exc)
                return
            if data is tls.Want.READ:
                break
            if data is tls.Want.WRITE:
                self.read_wants_write = True
                break
            size = len(data)
            stats.bytes_in += size
            self.last_recv = self.loop.now
            events = proto.receive_data(data)
            if events:
                self._on_events(events)
            if (not size or self.reading_paused or self.upgrade_pending
                    or self.transport is Transport.CLOSED):
                break
            if size < chunk:
                # Probably drained: a TLS read returns at most one record, and at one message
                # per second the next is not there yet. Asking again would cost a syscall and
                # an SSLWantReadError per message; level-triggered epoll reports anything
                # left in the kernel on the next iteration, and a short read leaves nothing
                # decrypted inside OpenSSL (chunk > tls.MAX_RECORD_PLAINTEXT, config checks).
                break
        else:
            # Read budget spent: let other connections run. Bytes still in the kernel wake the
            # selector again; bytes OpenSSL already decrypted would not, so re-queue for those.
            if tls.pending_plaintext(sock):
                self.loop.call_soon(self.on_readable)
        if self.out or proto.has_output or proto.phase is Phase.CLOSED:
            self._flush()

    def _on_events(self, events: list[Event]) -> None:
        for event in events:
            kind = type(event)
            if kind is MessageReceived:
                self.stats.messages_received += 1
                self.outstanding += 1
                self.owner.on_message(self, event.data)  # type: ignore[union-attr]
            elif kind is PongReceived:
                if event.payload == self.awaiting_pong:  # type: ignore[union-attr]
                    self.awaiting_pong = b""
            elif kind is RequestReceived:
                self._on_request(event)  # type: ignore[arg-type]
            elif kind is Closed:
                self._on_closed(event)  # type: ignore[arg-type]
            elif kind is HandshakeFailed:
                self.stats.ws_handshake_failures += 1
                log_rejection(logger, "conn %d: refused a request from %s with %d: %s",
                              self.conn_id, peer(self.address),
                              event.status, event.reason)  # type: ignore[union-attr]
            elif kind is BacklogPending:
                # Many tiny frames in one read: read nothing more, parse the rest on the next
                # turn of the loop, so that other clients are served in between.
                if not self.reading_paused & _PARSING_BACKLOG:
                    self._set_paused(self.reading_paused | _PARSING_BACKLOG)
                    # call_soon from a call_soon: after this turn's readiness events and
                    # callbacks, so a connection parses at most EVENTS_PER_CALL a turn.
                    self.loop.call_soon(self.loop.call_soon, self._parse_backlog)
        phase = self.proto.phase
        if phase is Phase.CLOSING:
            self._arm_close_timer()
        elif phase is Phase.FAILING:
            # A protocol error: the close frame goes out once the pool has answered what came
            # before it (messages_done), or after --close-timeout at the latest.
            if self.outstanding == 0:
                self.proto.fail_now()
            else:
                self._arm_close_timer()

    def _on_request(self, event: RequestReceived) -> None:
        request = Request(event.method, event.target, event.headers, event.upgrade,
                          self.address, self.peer_cert)
        if not event.upgrade:
            self.stats.http_requests += 1
            self.proto.respond(self.owner.route(request), head_only=event.method == "HEAD")
            return
        self.upgrade_pending = True
        self._update_interest()
        self.owner.upgrade_requested(self, request)

    def _parse_backlog(self) -> None:
        if self.closed:
            return
        try:
            events = self.proto.parse_backlog()
            if events:
                self._on_events(events)
            if self.proto.backlog and not self.closed:
                self.loop.call_soon(self._parse_backlog)  # (we run from call_soon: next turn)
            else:
                self._set_paused(self.reading_paused & ~_PARSING_BACKLOG)
            if not self.closed and (self.out or self.proto.has_output
                                    or self.proto.phase is Phase.CLOSED):
                self._flush()
        except Exception as exc:  # the boundary, as in on_readable
            self._fail_unexpectedly(exc)

    def accept_upgrade(self) -> None:
        """The owner accepts the pending upgrade: 101, then the WebSocket (loop thread)."""
        if not self.upgrade_pending or self.closed:
            return
        self.upgrade_pending = False
        if self.handshake_timer is not None:
            self.handshake_timer.cancel()
            self.handshake_timer = None
        events = self.proto.accept_upgrade()
        if self.proto.phase is Phase.OPEN or self.proto.phase is Phase.FAILING:
            self.websocket = True
            if logger.isEnabledFor(logging.DEBUG):
                logger.debug("conn %d: WebSocket open from %s, extensions: %s", self.conn_id,
                             self.address, ", ".join(self.proto.extensions) or "none")
            self._arm_keepalive()
        if events:
            self._on_events(events)
        self._after_decision()

    def respond(self, response: Response) -> None:
        """Answer the pending upgrade with `response` (a refusal); the connection then closes."""
        if self.closed:
            return
        self.upgrade_pending = False
        self.proto.respond(response)
        self._after_decision()

    def _after_decision(self) -> None:
        if self.closed:
            return
        self._flush()
        if not self.closed and tls.pending_plaintext(self.sock):
            self.loop.call_soon(self.on_readable)

    def _on_closed(self, event: Closed) -> None:
        self._record_close(event.code)
        if not event.by_peer and event.code in _FAILURES:
            log_rejection(logger, "conn %d: failing %s with %d: %s", self.conn_id,
                          peer(self.address), event.code, event.reason)
        elif logger.isEnabledFor(logging.DEBUG):
            logger.debug("conn %d: closed %d %r by %s", self.conn_id, event.code, event.reason,
                         "peer" if event.by_peer else "server")

    # -- called by the dispatcher and handles (loop thread) ----------------------------------
    def messages_done(self, count: int) -> None:
        """The owner finished `count` of the messages it was given (their replies are out)."""
        self.outstanding -= count
        if self.outstanding == 0 and self.proto.phase is Phase.FAILING and not self.closed:
            self.proto.fail_now()
            self._flush()

    def send_message(self, data: str | bytes) -> None:
        """Send a message if the WebSocket is still open (a handler's reply)."""
        if self.closed:
            return
        if self.proto.send_message(data):
            self.stats.messages_out += 1
            self._flush()
