"""One client connection: socket <-> TLS <-> the sans-I/O protocol in `protocol.py`.

How this works: a connection walks CONNECTING (non-blocking TCP connect) -> TLS_HANDSHAKE
(`do_handshake` driven by readiness) -> WS_HANDSHAKE (upgrade request out, 101 checked) -> OPEN
(frames out on a timer, control frames answered) -> CLOSING (our close 1000 sent) -> CLOSED. Any
error before OPEN ends in FAILED with a short reason ("connect: ECONNREFUSED", "tls: ...",
"handshake: status 426", "timeout: tls_handshake"); after OPEN it is a drop. Every transition goes
through `_set_state`, which rejects impossible moves.

Writes go through one outbound buffer; EVENT_WRITE is registered only while it is non-empty. A
message counts as written once its last byte is accepted by the socket (or by OpenSSL, which then
owns it). A send that comes due while the buffer still holds an earlier frame waits for the buffer
to drain: that wait is the lateness we measure, and it grows exactly when the server stops reading.
"""

from __future__ import annotations

import enum
import logging
import socket
import ssl
import struct
import time
from collections import deque
from collections.abc import Callable

from bench_client.errors import ConnectError, FrameError, HandshakeError
from bench_client.loop import READ, WRITE, EventLoop, Timer
from bench_client.metrics import WorkerMetrics
from bench_client.payload import MessageTemplate
from bench_client.protocol import (
    OPCODE_CLOSE,
    OPCODE_PING,
    OPCODE_PONG,
    ClientHandshake,
    FrameReader,
    close_code,
    encode_close,
    encode_control,
)
from bench_client.transport import Target, connect_result, errno_name, start_connect

logger = logging.getLogger(__name__)

RECV_SIZE = 65536
# Pings a connection waits for at once (one a second: 8 s without an answer); the oldest is
# given up on as lost when another is due.
MAX_PINGS_IN_FLIGHT = 8
# Large enough to hand several TLS records to OpenSSL per call, small enough to bound the copy.
WRITE_CHUNK = 65536


class State(enum.Enum):
    CONNECTING = "connecting"
    TLS_HANDSHAKE = "tls_handshake"
    WS_HANDSHAKE = "ws_handshake"
    OPEN = "open"
    CLOSING = "closing"
    CLOSED = "closed"
    FAILED = "failed"


_ALLOWED = {
    State.CONNECTING: {State.TLS_HANDSHAKE, State.WS_HANDSHAKE, State.FAILED},
    State.TLS_HANDSHAKE: {State.WS_HANDSHAKE, State.FAILED},
    State.WS_HANDSHAKE: {State.OPEN, State.FAILED},
    State.OPEN: {State.CLOSING, State.FAILED, State.CLOSED},
    State.CLOSING: {State.CLOSED, State.FAILED},
    State.CLOSED: set(),
    State.FAILED: set(),
}

_DONE = (State.CLOSED, State.FAILED)


class ClientConnection:
    def __init__(
        self,
        client_id: int,
        loop: EventLoop,
        target: Target,
        metrics: WorkerMetrics,
        template: MessageTemplate,
        on_open: Callable[[ClientConnection], None],
        on_done: Callable[[ClientConnection], None],
    ) -> None:
        self.client_id = client_id
        self.loop = loop
        self.target = target
        self.metrics = metrics
        self.template = template
        self._on_open = on_open
        self._on_done = on_done
        self.state = State.CONNECTING
        self.opened = False
        self.sock: socket.socket | None = None
        self._interest = 0
        self._outbound = bytearray()
        self._tls_retry_length = 0  # OpenSSL wants a retried write repeated with the same length
        self._bytes_accepted = 0
        self._bytes_queued = 0
        self._message_ends: deque[int] = deque()
        self._due: deque[float] = deque()  # scheduled times of sends waiting for the buffer
        self._seq = 0
        self._deadline: Timer | None = None
        self._send_timer: Timer | None = None
        self._ping_timer: Timer | None = None
        self._pings_in_flight: dict[int, float] = {}  # token -> monotonic time sent
        self._ping_token = 0
        self._handshake: ClientHandshake | None = None
        self._reader = FrameReader()

    # -- state --------------------------------------------------------------------------------

    def _set_state(self, new: State) -> None:
        if new not in _ALLOWED[self.state]:
            raise RuntimeError(f"connection {self.client_id}: {self.state.name} -> {new.name}")
        if logger.isEnabledFor(logging.DEBUG):
            logger.debug("conn %d: %s -> %s", self.client_id, self.state.name, new.name)
        self.state = new

    @property
    def done(self) -> bool:
        return self.state in _DONE

    def _fail(self, reason: str) -> None:
        if self.done:
            return
        established = self.state in (State.OPEN, State.CLOSING)
        if self.state is State.CLOSING:
            # our close was sent; losing the socket now is an unanswered close, not a failure
            self.metrics.closed_unanswered += 1
        else:
            self.metrics.record_failure(reason, established)
        if logger.isEnabledFor(logging.DEBUG):
            logger.debug("conn %d failed in %s: %s", self.client_id, self.state.name, reason)
        self._set_state(State.FAILED)
        self._teardown()

    def _teardown(self) -> None:
        for timer in (self._deadline, self._send_timer, self._ping_timer):
            if timer is not None:
                timer.cancel()
        # A pong comes before the server's close reply (it answers in order), so a ping still
        # unanswered when the connection ends was never going to be answered.
        for token in list(self._pings_in_flight):
            self._ping_lost(token)
        if self.sock is not None:
            self.loop.unregister(self.sock.fileno())
            self.sock.close()
        self._outbound = bytearray()
        self._due.clear()
        self._on_done(self)

    def _want(self, events: int) -> None:
        if events != self._interest and self.sock is not None:
            self.loop.modify(self.sock.fileno(), events, self)
            self._interest = events

    # -- connect and handshakes ---------------------------------------------------------------

    def start(self, source_addr: str | None) -> None:
        self.metrics.attempted += 1
        self._deadline = self.loop.call_later(self.target.handshake_timeout, self._on_deadline)
        try:
            self.sock = start_connect(self.target.address, source_addr)
        except ConnectError as exc:
            self._fail(str(exc))
            return
        self._interest = WRITE
        self.loop.register(self.sock.fileno(), WRITE, self)

    def _on_deadline(self) -> None:
        self._deadline = None
        if self.state in (State.CONNECTING, State.TLS_HANDSHAKE, State.WS_HANDSHAKE):
            self._fail(f"timeout: {self.state.value}")

    def _connected(self) -> None:
        assert self.sock is not None
        try:
            connect_result(self.sock)
        except ConnectError as exc:
            self._fail(str(exc))
            return
        if self.target.tls is None:
            self._set_state(State.WS_HANDSHAKE)
            self._send_upgrade()
            return
        # The SSLSocket takes over the same fd, so the selector registration stays valid.
        try:
            self.sock = self.target.tls.wrap_socket(
                self.sock, server_hostname=self.target.host, do_handshake_on_connect=False
            )
        except (OSError, ssl.SSLError) as exc:
            self._fail(f"tls: {exc}")
            return
        self._set_state(State.TLS_HANDSHAKE)
        self._tls_step()

    def _tls_step(self) -> None:
        assert isinstance(self.sock, ssl.SSLSocket)
        try:
            self.sock.do_handshake()
        except ssl.SSLWantReadError:
            self._want(READ)
            return
        except ssl.SSLWantWriteError:
            self._want(WRITE)
            return
        except ssl.SSLCertVerificationError as exc:
            self._fail(f"tls: {exc.verify_message}")
            return
        except ssl.SSLError as exc:
            self._fail(f"tls: {exc.reason or exc}")
            return
        except OSError as exc:
            self._fail(f"tls: {errno_name(exc)}")
            return
        self._set_state(State.WS_HANDSHAKE)
        self._send_upgrade()

    def _send_upgrade(self) -> None:
        target = self.target
        self._handshake = ClientHandshake(
            target.host, target.port, target.path, 443 if target.tls else 80
        )
        self._outbound += self._handshake.request
        self._bytes_queued += len(self._handshake.request)
        self._want(READ)
        self._flush()

    def _opened(self, leftover: bytes) -> None:
        assert self._deadline is not None
        self._deadline.cancel()
        self._deadline = None
        self._handshake = None
        self._set_state(State.OPEN)
        self.opened = True
        self.metrics.established += 1
        self.metrics.last_established_at = time.monotonic()
        self._on_open(self)
        if leftover:
            self._on_frames(leftover)

    # -- sending ------------------------------------------------------------------------------

    def start_sending(self, first_at: float, interval: float) -> None:
        """Send one message at `first_at`, then every `interval` seconds until closed."""
        self._send_timer = self.loop.call_at(first_at, lambda: self._send_tick(first_at, interval))

    def _send_tick(self, scheduled: float, interval: float) -> None:
        if self.state is not State.OPEN:
            return
        self.metrics.messages_scheduled += 1
        if self._outbound:
            self._due.append(scheduled)
        else:
            self._write_message(scheduled)
            self._flush()
        following = scheduled + interval
        self._send_timer = self.loop.call_at(
            following, lambda: self._send_tick(following, interval))

    def _write_message(self, scheduled: float) -> None:
        now = time.monotonic()
        self.metrics.lateness.record(now - scheduled)
        self._seq += 1
        self._bytes_queued += self.template.write_frame(
            self._outbound, self.client_id, self._seq, time.time()
        )
        self._message_ends.append(self._bytes_queued)

    def _queue_control(self, frame: bytes) -> None:
        self._outbound += frame
        self._bytes_queued += len(frame)

    def start_pinging(self, interval: float) -> None:
        self._ping_timer = self.loop.call_later(interval, lambda: self._ping_tick(interval))

    def _ping_tick(self, interval: float) -> None:
        if self.state is not State.OPEN:
            return
        self._ping_token += 1
        if len(self._pings_in_flight) >= MAX_PINGS_IN_FLIGHT:
            self._ping_lost(min(self._pings_in_flight))  # stop waiting for the oldest
        self._pings_in_flight[self._ping_token] = time.monotonic()
        self._queue_control(encode_control(OPCODE_PING, struct.pack("!Q", self._ping_token)))
        self.metrics.pings_sent += 1
        self._flush()
        self._ping_timer = self.loop.call_later(interval, lambda: self._ping_tick(interval))

    def _ping_lost(self, token: int) -> None:
        """Give up on a ping: count it lost, and record the time it waited as its round trip
        (a lower bound), so the RTT percentiles show the stall instead of leaving it out."""
        sent_at = self._pings_in_flight.pop(token)
        self.metrics.pings_lost += 1
        self.metrics.ping_rtt.record(time.monotonic() - sent_at)

    def _flush(self) -> None:
        sock = self.sock
        assert sock is not None
        metrics = self.metrics
        while True:
            outbound = self._outbound
            while outbound:
                length = self._tls_retry_length or min(len(outbound), WRITE_CHUNK)
                try:
                    sent = sock.send(outbound if length == len(outbound) else outbound[:length])
                except (ssl.SSLWantWriteError, ssl.SSLWantReadError, BlockingIOError):
                    if isinstance(sock, ssl.SSLSocket):
                        self._tls_retry_length = length
                    self._want(READ | WRITE)
                    return
                except OSError as exc:
                    self._fail(f"send: {errno_name(exc)}")
                    return
                self._tls_retry_length = 0
                del outbound[:sent]
                self._bytes_accepted += sent
                metrics.bytes_written += sent
                ends = self._message_ends
                while ends and ends[0] <= self._bytes_accepted:
                    ends.popleft()
                    metrics.messages_written += 1
            if not self._due or self.state is not State.OPEN:
                break
            self._write_message(self._due.popleft())
        self._want(READ)

    # -- receiving ----------------------------------------------------------------------------

    def on_writable(self) -> None:
        if self.state is State.CONNECTING:
            self._connected()
        elif self.state is State.TLS_HANDSHAKE:
            self._tls_step()
        elif not self.done:
            self._flush()

    def on_readable(self) -> None:
        state = self.state
        if state is State.TLS_HANDSHAKE:
            self._tls_step()
        elif state in (State.WS_HANDSHAKE, State.OPEN, State.CLOSING):
            self._read()
            if not self.done and self._outbound:
                self._flush()  # an SSL write may have been waiting for a read

    def _read(self) -> None:
        sock = self.sock
        assert sock is not None
        # Read until the socket (and OpenSSL's buffer, which the selector cannot see) is empty.
        # The server sends us little (pongs, closes), so this loop is short.
        while not self.done:
            try:
                data = sock.recv(RECV_SIZE)
            except (ssl.SSLWantReadError, ssl.SSLWantWriteError, BlockingIOError):
                return
            except ssl.SSLError as exc:
                self._fail(f"tls: {exc.reason or exc}")
                return
            except OSError as exc:
                self._fail(f"recv: {errno_name(exc)}")
                return
            if not data:
                self._eof()
                return
            if self.state is State.WS_HANDSHAKE:
                assert self._handshake is not None
                try:
                    leftover = self._handshake.receive(data)
                except HandshakeError as exc:
                    self._fail(f"handshake: {exc}")
                    return
                if leftover is not None:
                    self._opened(leftover)
            else:
                self._on_frames(data)

    def _eof(self) -> None:
        if self.state is State.WS_HANDSHAKE:
            self._fail("handshake: connection closed by server")
        elif self.state is State.OPEN:
            self._fail("dropped: connection closed without close frame")
        else:
            self._fail("eof")

    def _on_frames(self, data: bytes) -> None:
        before = self._reader.messages_received
        try:
            controls = self._reader.receive(data)
        except FrameError as exc:
            self._fail(f"protocol: {exc}")
            return
        self.metrics.messages_received += self._reader.messages_received - before
        for frame in controls:
            if frame.opcode == OPCODE_PING:
                if self.state is State.OPEN:
                    self._queue_control(encode_control(OPCODE_PONG, frame.payload))
            elif frame.opcode == OPCODE_PONG:
                if len(frame.payload) == 8:
                    sent_at = self._pings_in_flight.pop(struct.unpack("!Q", frame.payload)[0], None)
                    if sent_at is not None:
                        self.metrics.ping_rtt.record(time.monotonic() - sent_at)
                        self.metrics.pongs_received += 1
            elif frame.opcode == OPCODE_CLOSE:
                self._on_close_frame(close_code(frame.payload))
                return

    def _on_close_frame(self, code: int) -> None:
        if self.state is State.CLOSING:
            self.metrics.closed_clean += 1
            self._set_state(State.CLOSED)
            self._teardown()
            return
        # The server closed first: answer (RFC 6455 §5.5.1) and count the drop.
        self._queue_control(encode_close(code if code != 1005 else 1000))
        self._flush()
        self._fail(f"dropped: server closed with {code}")

    # -- closing ------------------------------------------------------------------------------

    def start_close(self) -> None:
        """Stop sending and send close 1000 behind any frame already in the buffer."""
        if self.state is State.OPEN:
            for timer in (self._send_timer, self._ping_timer):
                if timer is not None:
                    timer.cancel()
            self._due.clear()
            self._set_state(State.CLOSING)
            self._queue_control(encode_close(1000))
            self._flush()
        elif not self.done:
            self._fail("stopped: not established before the end of the run")

    def abort(self) -> None:
        """Close the socket now (the close reply did not come in time)."""
        if self.state is State.CLOSING:
            self.metrics.closed_unanswered += 1
            self._set_state(State.CLOSED)
            self._teardown()
        elif not self.done:
            self._fail("stopped: aborted")
