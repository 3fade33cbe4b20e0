"""The server side of one connection, sans-I/O: bytes in, events and bytes out.

How this works: a connection starts in REQUEST_HEAD. Bytes are buffered until h11 has parsed a
complete request head within `max_header_bytes` and `max_headers` (else 431, or 400 for a
malformed head). A WebSocket upgrade is then handed, bytes and all, to a `wsproto.WSConnection`,
which owns the WebSocket protocol; any other request surfaces as `HttpRequest` for the server to
answer with `respond_http`, after which the connection closes. In OPEN, wsproto's events become
ours: pings are answered here (wsproto does not), fragments are reassembled under
`max_message_size` (wsproto has no limit; too big closes with 1009, RFC 6455 §7.4.1), and the
close handshake is completed with the right code.

This module never touches sockets, threads or clocks: the connection layer feeds it, sends what
`data_to_send()` returns, and closes the transport once `transport_should_close` is true.
"""

from __future__ import annotations

import enum
import logging
from dataclasses import dataclass
from typing import cast

import h11
from wsproto import ConnectionType, WSConnection
from wsproto.connection import Connection as WsFrameConnection
from wsproto.connection import ConnectionState as WsState
from wsproto.events import (
    AcceptConnection,
    BytesMessage,
    CloseConnection,
    Ping,
    Pong,
    Request,
    TextMessage,
)
from wsproto.extensions import Extension
from wsproto.utilities import RemoteProtocolError

from . import fastmask
from .deflate import NegotiatedDeflate
from .states import check_move

fastmask.install()

logger = logging.getLogger(__name__)


class Phase(enum.Enum):
    REQUEST_HEAD = "request-head"   # reading the HTTP request head
    HTTP_RESPONSE = "http-response"  # a plain HTTP request is being answered, then close
    OPEN = "open"                   # WebSocket established
    FAILING = "failing"             # the peer broke the protocol: replies to what it sent
                                    # before still go out, then fail_now() sends the close
    CLOSING = "closing"             # our close frame sent, waiting for the peer's
    CLOSED = "closed"               # nothing more to read or send; drop the transport


_ALLOWED: dict[Phase, frozenset[Phase]] = {
    Phase.REQUEST_HEAD: frozenset({Phase.HTTP_RESPONSE, Phase.OPEN, Phase.CLOSED}),
    Phase.HTTP_RESPONSE: frozenset({Phase.CLOSED}),
    Phase.OPEN: frozenset({Phase.FAILING, Phase.CLOSING, Phase.CLOSED}),
    Phase.FAILING: frozenset({Phase.CLOSED}),
    Phase.CLOSING: frozenset({Phase.CLOSED}),
    Phase.CLOSED: frozenset(),
}


@dataclass(frozen=True, slots=True)
class ProtocolLimits:
    max_message_size: int = 1 << 20
    max_header_bytes: int = 16 * 1024
    max_headers: int = 100
    compression: bool = False
    deflate_window_bits: int = 15


# -- events out ------------------------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class HttpRequest:
    """A plain (non-upgrade) HTTP request: answer it with respond_http()."""
    method: str
    target: str


@dataclass(frozen=True, slots=True)
class Upgraded:
    """The WebSocket handshake completed."""
    target: str


@dataclass(frozen=True, slots=True)
class MessageReceived:
    data: str | bytes


@dataclass(frozen=True, slots=True)
class PongReceived:
    payload: bytes


@dataclass(frozen=True, slots=True)
class Closed:
    """The WebSocket is closed: `code` is the close code that ended it (1006: no close frame)."""
    code: int
    reason: str
    by_peer: bool


@dataclass(frozen=True, slots=True)
class HandshakeFailed:
    """The request was refused (bad head or bad upgrade); an HTTP error is on its way."""
    status: int
    reason: str


Event = HttpRequest | Upgraded | MessageReceived | PongReceived | Closed | HandshakeFailed

_REASONS = {200: "OK", 400: "Bad Request", 404: "Not Found", 405: "Method Not Allowed",
            426: "Upgrade Required", 431: "Request Header Fields Too Large",
            500: "Internal Server Error", 503: "Service Unavailable"}


# What the peer reads in our close frame when it broke the protocol (RFC 6455 §7.4.1).
_CLOSE_REASONS = {1002: "protocol error", 1007: "invalid message data", 1009: "message too big"}


def _is_upgrade(request: h11.Request) -> bool:
    for name, value in request.headers:
        if name == b"upgrade" and value.lower() == b"websocket":
            return True
    return False


class ServerProtocol:
    __slots__ = ("limits", "phase", "_head", "_h11", "_ws", "_out", "_parts", "_part_bytes",
                 "_discarding", "_close_code", "conn_id", "refuse_status")

    def __init__(self, limits: ProtocolLimits, conn_id: int = 0, refuse_status: int = 0) -> None:
        """`refuse_status` (e.g. 503 when at --max-connections): answer any upgrade with it."""
        self.limits = limits
        self.conn_id = conn_id
        self.refuse_status = refuse_status
        self.phase = Phase.REQUEST_HEAD
        self._head = bytearray()
        self._h11: h11.Connection | None = h11.Connection(
            h11.SERVER, max_incomplete_event_size=limits.max_header_bytes)
        self._ws: WsFrameConnection | None = None
        self._out: list[bytes] = []
        self._parts: list[str | bytes] = []
        self._part_bytes = 0
        self._discarding = False
        self._close_code = 0

    # -- state ----------------------------------------------------------------------------
    def _move(self, to: Phase, why: str) -> None:
        self.phase = check_move(_ALLOWED, self.phase, to, why, self.conn_id, logger)

    @property
    def transport_should_close(self) -> bool:
        """Once the output is flushed, drop the TCP connection."""
        return self.phase is Phase.CLOSED

    def data_to_send(self) -> bytes:
        if not self._out:
            return b""
        out = self._out
        data = out[0] if len(out) == 1 else b"".join(out)
        out.clear()
        return data

    @property
    def local_close_code(self) -> int:
        """The code of the close frame we sent (0 if none)."""
        return self._close_code

    @property
    def has_output(self) -> bool:
        return bool(self._out)

    # -- input ----------------------------------------------------------------------------
    def receive_data(self, data: bytes) -> list[Event]:
        """Feed bytes from the peer (b"" at end of stream); return what they caused."""
        phase = self.phase
        if phase is Phase.OPEN or phase is Phase.CLOSING:
            return self._receive_ws(data)
        if phase is Phase.REQUEST_HEAD:
            return self._receive_head(data)
        return []  # answering plain HTTP or closed: further input is ignored

    def _receive_head(self, data: bytes) -> list[Event]:
        assert self._h11 is not None
        if not data:
            self._move(Phase.CLOSED, "end of stream before a request")
            return [Closed(1006, "end of stream during the request head", True)]
        self._head += data
        self._h11.receive_data(data)
        try:
            event = self._h11.next_event()
        except h11.RemoteProtocolError as exc:
            status = exc.error_status_hint
            return [self._refuse(status if status in _REASONS else 400, str(exc))]
        if event is h11.NEED_DATA:
            return []
        if not isinstance(event, h11.Request):
            return [self._refuse(400, "not an HTTP request")]
        if len(event.headers) > self.limits.max_headers:
            return [self._refuse(431, f"more than {self.limits.max_headers} headers")]
        # h11 bounds only an *incomplete* head; a whole oversized head that arrived in one read
        # (up to --read-chunk-bytes) would pass, so measure what it parsed as well.
        if len(self._head) - len(self._h11.trailing_data[0]) > self.limits.max_header_bytes:
            return [self._refuse(431, f"request head over {self.limits.max_header_bytes} bytes")]
        target = event.target.decode("latin-1")
        if not _is_upgrade(event):
            self._move(Phase.HTTP_RESPONSE, "plain HTTP request")
            self._h11 = None
            return [HttpRequest(event.method.decode("latin-1"), target)]
        if self.refuse_status:
            return [self._refuse(self.refuse_status, "upgrade refused")]
        return self._upgrade(target)

    def _upgrade(self, target: str) -> list[Event]:
        assert self._h11 is not None
        # Bytes the client sent after its request head (frames it did not wait to send).
        # wsproto's server handshake drops them, so they are fed in after the accept.
        trailing = bytes(self._h11.trailing_data[0])
        ws = WSConnection(ConnectionType.SERVER)
        try:
            ws.receive_data(bytes(self._head))
            request = next((e for e in ws.events() if isinstance(e, Request)), None)
        except (RemoteProtocolError, ValueError) as exc:
            # wsproto decodes header values unguarded: a non-ASCII token or a Host that is not
            # IDNA raises UnicodeError (a ValueError). Either way the request is malformed.
            return [self._refuse(400, str(exc))]
        if request is None:
            return [self._refuse(400, "incomplete WebSocket upgrade request")]
        extensions: list[Extension] = []
        if self.limits.compression and request.extensions:
            extensions.append(NegotiatedDeflate(
                client_max_window_bits=self.limits.deflate_window_bits,
                server_max_window_bits=self.limits.deflate_window_bits))
        try:
            accept = ws.send(AcceptConnection(extensions=extensions))
        except ValueError as exc:  # a deflate offer such as client_max_window_bits=abc
            return [self._refuse(400, f"bad Sec-WebSocket-Extensions: {exc}")]
        self._out.append(accept)
        # Keep only the frame-level connection: the WSConnection wrapper would keep wsproto's
        # whole handshake (an h11.Connection, the request's headers, two deques) alive for the
        # life of the connection, several KiB per idle client.
        self._ws = ws.connection
        self._h11 = None
        self._head = bytearray()
        self._move(Phase.OPEN, "upgrade accepted")
        if not trailing:
            return [Upgraded(target)]
        ws.receive_data(trailing)
        return [Upgraded(target), *self._drain_ws_events()]

    def _refuse(self, status: int, reason: str) -> HandshakeFailed:
        self.respond_http(status, f"{_REASONS.get(status, 'Error')}\n".encode())
        return HandshakeFailed(status, reason)

    def _receive_ws(self, data: bytes) -> list[Event]:
        ws = self._ws
        assert ws is not None
        ws.receive_data(data or None)
        return self._drain_ws_events()

    def _drain_ws_events(self) -> list[Event]:
        ws = self._ws
        assert ws is not None
        out: list[Event] = []
        for event in ws.events():
            kind = type(event)
            if kind is TextMessage or kind is BytesMessage:
                message = self._collect(event)  # type: ignore[arg-type]
                if message is not None:
                    out.append(message)
            elif kind is Ping:
                if ws.state is WsState.OPEN:
                    self._out.append(ws.send(cast(Ping, event).response()))
            elif kind is Pong:
                out.append(PongReceived(bytes(cast(Pong, event).payload)))
            elif kind is CloseConnection:
                out.append(self._on_close(event))  # type: ignore[arg-type]
                break
        return out

    def _collect(self, event: TextMessage | BytesMessage) -> MessageReceived | None:
        if self._discarding or self.phase is Phase.CLOSED:
            return None
        # wsproto hands bytes (not bytearray) for binary frames; say so for the type checker.
        data = cast(str | bytes, event.data)
        size = len(data) + self._part_bytes
        if size > self.limits.max_message_size:
            self._discarding = True
            self._parts.clear()
            self._part_bytes = 0
            self.close(1009, "message too big")
            return None
        if event.message_finished:
            if self._parts:
                self._parts.append(data)
                joined: str | bytes = ("".join(cast(list[str], self._parts))
                                       if isinstance(data, str)
                                       else b"".join(cast(list[bytes], self._parts)))
                self._parts.clear()
                self._part_bytes = 0
                return MessageReceived(joined)
            return MessageReceived(data)
        self._parts.append(data)
        self._part_bytes = size
        return None

    def _on_close(self, event: CloseConnection) -> Closed:
        ws = self._ws
        assert ws is not None
        state = ws.state
        if state is WsState.REMOTE_CLOSING:
            # The peer started the close: echo its code (RFC 6455 §5.5.1) and drop TCP.
            self._out.append(ws.send(event.response()))
            self._move(Phase.CLOSED, f"peer close {event.code}")
            return Closed(event.code, event.reason or "", True)
        if state is WsState.CLOSED:
            # Either the reply to our close, or end of stream (wsproto reports 1006).
            by_peer = event.code == 1006 and self._close_code == 0
            code = self._close_code or event.code
            if self.phase is not Phase.CLOSED:
                self._move(Phase.CLOSED, f"close complete {event.code}")
            return Closed(code, event.reason or "", by_peer)
        # Still OPEN/LOCAL_CLOSING: wsproto found a protocol violation (ParseFailed) and reports
        # the code to fail the connection with (1002, 1007, ...). Nothing more is read. The
        # close frame waits in FAILING until the replies to messages received before the
        # violation are out (the connection calls fail_now()), so none of them is lost.
        self._close_code = self._close_code or event.code
        if state is WsState.OPEN:
            self._move(Phase.FAILING, f"protocol error {event.code}")
        else:
            self._move(Phase.CLOSED, f"protocol error {event.code} while closing")
        return Closed(event.code, event.reason or "", False)

    def fail_now(self) -> None:
        """Send the close frame of a protocol failure (FAILING); then drop the transport."""
        if self.phase is not Phase.FAILING:
            return
        assert self._ws is not None
        # wsproto's reason is a parser message; the peer gets a fixed phrase instead.
        code = self._close_code
        self._out.append(self._ws.send(CloseConnection(code, _CLOSE_REASONS.get(code, ""))))
        self._move(Phase.CLOSED, f"failed with {code}")

    # -- output ---------------------------------------------------------------------------
    def send_message(self, data: str | bytes) -> bool:
        """Queue a message; False when the connection can no longer send."""
        ws = self._ws
        phase = self.phase
        if ((phase is not Phase.OPEN and phase is not Phase.FAILING) or ws is None
                or ws.state is not WsState.OPEN):
            return False
        if isinstance(data, str):
            self._out.append(ws.send(TextMessage(data=data)))
        else:
            self._out.append(ws.send(BytesMessage(data=data)))
        return True

    def send_ping(self, payload: bytes) -> bool:
        ws = self._ws
        if self.phase is not Phase.OPEN or ws is None or ws.state is not WsState.OPEN:
            return False
        self._out.append(ws.send(Ping(payload=payload)))
        return True

    def close(self, code: int = 1000, reason: str = "") -> None:
        """Start the close handshake (or, before the upgrade, just close)."""
        if self.phase is Phase.OPEN:
            assert self._ws is not None
            if self._ws.state is WsState.OPEN:
                self._out.append(self._ws.send(CloseConnection(code, reason)))
            self._close_code = code
            self._move(Phase.CLOSING, f"local close {code}")
        elif self.phase is Phase.FAILING:
            self.fail_now()  # the protocol error's code is the one the peer must see
        elif self.phase is Phase.REQUEST_HEAD:
            self._move(Phase.CLOSED, f"local close {code} before upgrade")

    def abort(self) -> None:
        """Give up on the peer (timeout, reset): nothing more is sent or read."""
        if self.phase is not Phase.CLOSED:
            self._move(Phase.CLOSED, "abort")

    def respond_http(self, status: int, body: bytes,
                     content_type: bytes = b"text/plain; charset=utf-8",
                     extra_headers: tuple[tuple[bytes, bytes], ...] = (),
                     head_only: bool = False) -> None:
        """Answer a plain HTTP request (or refuse an upgrade) and close afterwards."""
        if self.phase is Phase.CLOSED:
            return
        head = (f"HTTP/1.1 {status} {_REASONS.get(status, 'Error')}\r\n"
                f"Content-Length: {len(body)}\r\n").encode("latin-1")
        headers = b"".join(b"%s: %s\r\n" % pair for pair in
                           ((b"Content-Type", content_type), (b"Connection", b"close"),
                            (b"Cache-Control", b"no-store"), *extra_headers))
        self._out.append(head + headers + b"\r\n" + (b"" if head_only else body))
        self._h11 = None
        self._head = bytearray()
        if self.phase is not Phase.HTTP_RESPONSE:
            self._move(Phase.HTTP_RESPONSE, f"respond {status}")
        self._move(Phase.CLOSED, f"responded {status}")


__all__ = ["Closed", "Event", "HandshakeFailed", "HttpRequest", "MessageReceived", "Phase",
           "PongReceived", "ProtocolLimits", "ServerProtocol", "Upgraded"]
