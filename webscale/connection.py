"""One client connection: the socket on one side, the sans-I/O protocol on the other.

How this works: the loop calls `on_readable`/`on_writable`. While the TLS handshake runs, those
drive `tls.handshake_step`; afterwards reads feed `ServerProtocol.receive_data` and the events it
returns are acted on here (messages to the dispatcher, HTTP requests to the server's routes, close
codes to the stats), then whatever the protocol wants sent is flushed. The socket is registered
for exactly what the connection waits for: READ unless backpressure paused it, WRITE only while
the outbound buffer is non-empty (or TLS needs it). Timers bound the handshake, detect dead peers
(ping/pong) and idle ones, and bound the close handshake.

States (ConnState) move only through `_enter`, which rejects impossible moves:
    TLS_HANDSHAKE -> HTTP -> OPEN -> CLOSING -> CLOSED   (any state may go straight to CLOSED)
"""

from __future__ import annotations

import enum
import errno
import logging
import socket
import ssl
from typing import TYPE_CHECKING, cast

from . import tls
from .dispatch import ConnectionHandle
from .states import check_move
from .loop import EVENT_READ, EVENT_WRITE, Timer
from .protocol import (
    Closed,
    HandshakeFailed,
    HttpRequest,
    MessageReceived,
    Phase,
    PongReceived,
    ServerProtocol,
    Upgraded,
)

if TYPE_CHECKING:
    from .protocol import Event
    from .server import Server

logger = logging.getLogger(__name__)


class ConnState(enum.Enum):
    TLS_HANDSHAKE = "tls-handshake"
    HTTP = "http"
    OPEN = "open"
    CLOSING = "closing"
    CLOSED = "closed"


_ALLOWED: dict[ConnState, frozenset[ConnState]] = {
    ConnState.TLS_HANDSHAKE: frozenset({ConnState.HTTP, ConnState.CLOSED}),
    ConnState.HTTP: frozenset({ConnState.OPEN, ConnState.CLOSING, ConnState.CLOSED}),
    ConnState.OPEN: frozenset({ConnState.CLOSING, ConnState.CLOSED}),
    ConnState.CLOSING: frozenset({ConnState.CLOSED}),
    ConnState.CLOSED: frozenset(),
}

# Reads per readiness event before yielding to other connections (fairness under load).
_READS_PER_EVENT = 8
# Errors that mean "the peer went away"; anything else is logged as unexpected.
_PEER_GONE = (ConnectionError, ssl.SSLEOFError, TimeoutError)


class Connection:
    __slots__ = ("conn_id", "server", "loop", "sock", "address", "proto", "state", "out",
                 "out_bytes", "interest", "tls_want", "read_wants_write", "write_wants_read",
                 "reading_paused", "inbox", "in_flight", "batch_running", "handle",
                 "handshake_timer", "keepalive_timer", "pong_timer", "close_timer",
                 "awaiting_pong", "last_recv", "ping_count", "close_code")

    def __init__(self, server: Server, sock: socket.socket, address: object,
                 conn_id: int, refuse_status: int = 0) -> None:
        self.conn_id = conn_id
        self.server = server
        self.loop = server.loop
        self.sock = sock
        self.address = address
        self.proto = ServerProtocol(server.protocol_limits, conn_id, refuse_status)
        self.state = ConnState.TLS_HANDSHAKE if tls.is_tls(sock) else ConnState.HTTP
        # A list, not a deque: it rarely holds more than one chunk, and an empty deque costs
        # ~740 bytes against a list's 56, per idle connection.
        self.out: list[bytes] = []
        self.out_bytes = 0
        self.interest = 0
        self.tls_want: tls.Want | None = tls.Want.READ
        self.read_wants_write = False
        self.write_wants_read = False
        self.reading_paused = False
        self.inbox: list[str | bytes] = []
        self.in_flight = 0
        self.batch_running = False
        self.handle: ConnectionHandle | None = None
        self.handshake_timer: Timer | None = self.loop.call_later(
            server.config.handshake_timeout, self._handshake_timed_out)
        self.keepalive_timer: Timer | None = None
        self.pong_timer: Timer | None = None
        self.close_timer: Timer | None = None
        self.awaiting_pong = b""
        self.last_recv = self.loop.now
        self.ping_count = 0
        self.close_code = 0

    def start(self) -> None:
        self._update_interest()

    # -- state ------------------------------------------------------------------------------
    def _enter(self, to: ConnState, why: str) -> None:
        self.state = check_move(_ALLOWED, self.state, to, why, self.conn_id, logger)

    @property
    def closed(self) -> bool:
        # A method, not an inline test: mypy would keep the state narrowed across _flush().
        return self.state is ConnState.CLOSED

    # -- selector callbacks -----------------------------------------------------------------
    def on_readable(self) -> None:
        if self.state is ConnState.CLOSED:
            return
        try:
            if self.state is ConnState.TLS_HANDSHAKE:
                self._drive_handshake()
                return
            if self.write_wants_read:
                self.write_wants_read = False
                self._flush()
            # (read_wants_write is served by on_writable; the flush may have closed us.)
            if not self.reading_paused and not self.closed:
                self._read()
        except Exception as exc:  # the boundary: one connection fails, not all
            self._fail_unexpectedly(exc)

    def on_writable(self) -> None:
        if self.state is ConnState.CLOSED:
            return
        try:
            if self.state is ConnState.TLS_HANDSHAKE:
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
            self.server.stats.tls_handshake_failures += 1
            if logger.isEnabledFor(logging.DEBUG):
                logger.debug("conn %d: TLS handshake failed: %s", self.conn_id, exc)
            self._close_transport()
            return
        self.tls_want = want
        if want is None:
            self._enter(ConnState.HTTP, "TLS handshake complete")
            self._update_interest()
            # The client's request may already sit decrypted inside OpenSSL.
            self._read()
        else:
            self._update_interest()

    # -- reading ----------------------------------------------------------------------------
    def _read(self) -> None:
        sock = self.sock
        proto = self.proto
        stats = self.server.stats
        chunk = self.server.config.read_chunk_bytes
        for _ in range(_READS_PER_EVENT):
            try:
                data = tls.recv(sock, chunk)
            except _PEER_GONE as exc:
                self._peer_gone(exc)
                return
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
            if not size or self.state is ConnState.CLOSED or self.reading_paused:
                break
            if size < chunk and not tls.pending_plaintext(sock):
                # Probably drained: a TLS read returns at most one record, and at one message
                # per second the next is not there yet. Asking again would cost a syscall and
                # an SSLWantReadError per message; level-triggered epoll reports anything
                # left in the kernel on the next iteration.
                break
        else:
            # Read budget spent: let other connections run. Bytes still in the kernel wake the
            # selector again; bytes OpenSSL already decrypted would not, so re-queue for those.
            if tls.pending_plaintext(sock):
                self.loop.call_soon(self.on_readable)
        if self.state is not ConnState.CLOSED:
            self._flush()

    def _on_events(self, events: list[Event]) -> None:
        server = self.server
        for event in events:
            kind = type(event)
            if kind is MessageReceived:
                server.stats.messages_received += 1
                server.dispatcher.submit(self, event.data)  # type: ignore[union-attr]
            elif kind is PongReceived:
                if event.payload == self.awaiting_pong:  # type: ignore[union-attr]
                    self.awaiting_pong = b""
                    if self.pong_timer is not None:
                        self.pong_timer.cancel()
                        self.pong_timer = None
            elif kind is Upgraded:
                self._on_upgraded()
            elif kind is HttpRequest:
                server.stats.http_requests += 1
                server.respond_http(self, cast(HttpRequest, event))
            elif kind is Closed:
                self._on_closed(cast(Closed, event))
            elif kind is HandshakeFailed:
                if self.proto.refuse_status and event.status == self.proto.refuse_status:  # type: ignore[union-attr]
                    server.stats.connections_rejected += 1
                else:
                    server.stats.ws_handshake_failures += 1
                if logger.isEnabledFor(logging.DEBUG):
                    logger.debug("conn %d: handshake refused %d: %s", self.conn_id,
                                 event.status, event.reason)  # type: ignore[union-attr]
        phase = self.proto.phase
        if phase is Phase.CLOSING and self.state is ConnState.OPEN:
            self._enter(ConnState.CLOSING, "protocol closing")
            self._arm_close_timer()
        elif phase is Phase.FAILING:
            # A protocol error: the close frame goes out once the pool has answered what came
            # before it (batch_done), or after --close-timeout at the latest.
            if self.in_flight == 0:
                self.proto.fail_now()
            else:
                self._arm_close_timer()

    def _on_upgraded(self) -> None:
        self._enter(ConnState.OPEN, "WebSocket upgrade")
        if self.handshake_timer is not None:
            self.handshake_timer.cancel()
            self.handshake_timer = None
        self.handle = ConnectionHandle(self.loop, self, self.address)
        self._arm_keepalive()

    def _on_closed(self, event: Closed) -> None:
        self._record_close(event.code)
        if logger.isEnabledFor(logging.DEBUG):
            logger.debug("conn %d: closed %d %r by %s", self.conn_id, event.code, event.reason,
                         "peer" if event.by_peer else "server")

    # -- writing ----------------------------------------------------------------------------
    def _flush(self) -> None:
        proto = self.proto
        if proto.has_output:
            data = proto.data_to_send()
            self.out.append(data)
            self.out_bytes += len(data)
        out = self.out
        sock = self.sock
        stats = self.server.stats
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
            self.out_bytes -= sent
            if sent == len(chunk):
                del out[0]
            else:
                out[0] = chunk[sent:]
        if self.out_bytes > self.server.config.outbound_limit_bytes:
            self._slow_consumer()
            return
        if not out and proto.transport_should_close:
            self._close_transport()
            return
        self._update_interest()

    def _slow_consumer(self) -> None:
        logger.info("conn %d: closing a client that does not read (%d bytes queued)",
                    self.conn_id, self.out_bytes)
        self._record_close(1008)
        self.proto.abort()
        self._close_transport()

    def _update_interest(self) -> None:
        state = self.state
        if state is ConnState.CLOSED:
            return
        if state is ConnState.TLS_HANDSHAKE:
            want = EVENT_WRITE if self.tls_want is tls.Want.WRITE else EVENT_READ
        else:
            want = 0
            if not self.reading_paused or self.write_wants_read:
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

    # -- called by the dispatcher and handles (loop thread) ----------------------------------
    def apply_backpressure(self, paused: bool) -> None:
        if paused == self.reading_paused or self.state is ConnState.CLOSED:
            return
        self.reading_paused = paused
        self.server.stats.paused_connections += 1 if paused else -1
        self._update_interest()
        if not paused and tls.pending_plaintext(self.sock):
            self.loop.call_soon(self.on_readable)

    def batch_done(self) -> None:
        """The pool finished a batch of this connection's messages (their replies are out)."""
        if (self.in_flight == 0 and self.proto.phase is Phase.FAILING
                and self.state is not ConnState.CLOSED):
            self.proto.fail_now()
            self._flush()

    def send_from_handler(self, data: str | bytes) -> None:
        if self.state is not ConnState.OPEN:
            return
        if self.proto.send_message(data):
            self.server.stats.messages_out += 1
            self._flush()

    def close_from_handler(self, code: int, reason: str) -> None:
        self.close(code, reason)

    def close(self, code: int, reason: str = "") -> None:
        """Start a clean close: a close frame when open, otherwise just drop the socket."""
        if self.state is ConnState.OPEN:
            self.proto.close(code, reason)
            self._enter(ConnState.CLOSING, f"server close {code}")
            self._arm_close_timer()
            self._flush()
        elif self.state in (ConnState.TLS_HANDSHAKE, ConnState.HTTP):
            self.proto.abort()
            self._close_transport()

    # -- timers -----------------------------------------------------------------------------
    def _handshake_timed_out(self) -> None:
        self.handshake_timer = None
        if self.state in (ConnState.TLS_HANDSHAKE, ConnState.HTTP):
            self.server.stats.handshake_timeouts += 1
            if logger.isEnabledFor(logging.DEBUG):
                logger.debug("conn %d: handshake timed out in %s", self.conn_id, self.state.value)
            self.proto.abort()
            self._close_transport()

    def _arm_keepalive(self) -> None:
        config = self.server.config
        period = config.ping_interval or config.idle_timeout
        if period > 0:
            self.keepalive_timer = self.loop.call_later(period, self._keepalive)

    def _keepalive(self) -> None:
        self.keepalive_timer = None
        if self.state is not ConnState.OPEN:
            return
        config = self.server.config
        if config.idle_timeout and self.loop.now - self.last_recv >= config.idle_timeout:
            self.close(1001, "idle timeout")
            return
        if config.ping_interval and not self.awaiting_pong:
            self.ping_count += 1
            payload = self.ping_count.to_bytes(4, "big")
            if self.proto.send_ping(payload):
                self.awaiting_pong = payload
                if config.ping_timeout:
                    self.pong_timer = self.loop.call_later(config.ping_timeout, self._pong_missed)
                self._flush()
        self._arm_keepalive()

    def _pong_missed(self) -> None:
        self.pong_timer = None
        if self.awaiting_pong and self.state is ConnState.OPEN:
            logger.info("conn %d: no pong within %.1fs, dropping", self.conn_id,
                        self.server.config.ping_timeout)
            self._record_close(1011)
            self.proto.abort()
            self._close_transport()

    def _arm_close_timer(self) -> None:
        if self.close_timer is None:
            self.close_timer = self.loop.call_later(self.server.config.close_timeout,
                                                    self._close_timed_out)

    def _close_timed_out(self) -> None:
        self.close_timer = None
        if self.proto.phase is Phase.FAILING:
            self.proto.fail_now()  # the pool is still busy with earlier messages: stop waiting
            self._flush()
            return
        if self.state is not ConnState.CLOSED:
            self._record_close(self.proto.local_close_code or 1006)
            self.proto.abort()
            self._close_transport()

    def _record_close(self, code: int) -> None:
        """Count how a WebSocket ended, once per connection (closes by code in /stats)."""
        if not self.close_code and self.handle is not None:
            self.close_code = code
            self.server.stats.closes_by_code[code] += 1

    # -- endings ----------------------------------------------------------------------------
    def _peer_gone(self, exc: BaseException) -> None:
        if logger.isEnabledFor(logging.DEBUG):
            logger.debug("conn %d: connection lost in %s: %r", self.conn_id, self.state.value, exc)
        self._record_close(self.proto.local_close_code or 1006)
        self.proto.abort()
        self._close_transport()

    def _fail_unexpectedly(self, exc: BaseException) -> None:
        # A bug of ours, not the peer's fault: log it fully, tell the peer only 1011.
        logger.error("conn %d: unexpected error in %s", self.conn_id, self.state.value,
                     exc_info=exc)
        if self.state is ConnState.CLOSED:
            return
        if self.state is ConnState.OPEN:
            try:
                self.proto.close(1011, "internal error")
                data = self.proto.data_to_send()
                tls.send(self.sock, data)
            except Exception as close_exc:  # best effort on the way out; the cause is logged above
                logger.debug("conn %d: 1011 close frame not sent: %r", self.conn_id, close_exc)
        self._record_close(1011)
        self.proto.abort()
        self._close_transport()

    def _close_transport(self) -> None:
        if self.state is ConnState.CLOSED:
            return
        self._enter(ConnState.CLOSED, "transport closed")
        for timer in (self.handshake_timer, self.keepalive_timer, self.pong_timer,
                      self.close_timer):
            if timer is not None:
                timer.cancel()
        self.handshake_timer = self.keepalive_timer = self.pong_timer = self.close_timer = None
        if self.interest:
            try:
                self.loop.unregister(self.sock)
            except (KeyError, ValueError):
                pass
            self.interest = 0
        if self.reading_paused:
            self.reading_paused = False
            self.server.stats.paused_connections -= 1
        try:
            self.sock.close()
        except OSError as exc:
            if exc.errno != errno.EBADF:
                logger.debug("conn %d: close: %r", self.conn_id, exc)
        self.out.clear()
        self.out_bytes = 0
        self.server.connection_closed(self)
