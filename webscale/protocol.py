"""The server side of one connection, sans-I/O: bytes in, events and bytes out.

How this works: a connection starts in REQUEST_HEAD. Bytes are buffered until a complete request
head has arrived (upgrade.HeadReader: within `max_header_bytes` and `max_headers`, else 431;
parsed strictly per RFC 9112 and RFC 6455 §4.2.1, else 400; an upgrade validated by a
`wsproto.WSConnection`, which also writes the 101). The head surfaces as `RequestReceived` and the
connection's owner answers it: a plain request with `respond()` (then the connection closes), an
upgrade with `accept_upgrade()` or `respond()` (a refusal). Until then the protocol waits in
AWAITING_RESPONSE / UPGRADE_PENDING; bytes that came after the head are kept and fed in after the
accept.

From then on the WebSocket is wsproto's frame state machine, `FrameProtocol` (framing, masking,
fragmentation rules, UTF-8 and close-code validation, extensions; frames.py specialises its header
parse and whole text messages), fed whole reads; its frames are taken in bulk and become our events
(events.py) directly, without wsproto's `Connection` wrapper: that wrapper's own OPEN/CLOSING state
would be a second copy of our phase, and its per-frame generator and event objects cost ~2.5 us of
the ~10 us a 10 KB message takes. Pings are answered here. Fragments are reassembled under
`max_message_size` (wsproto has no limit), counted in bytes as they came on the wire (text is
measured encoded; with permessage-deflate, inflated bytes, bounded in deflate.py before they are
made) plus `FRAGMENT_OVERHEAD` for every frame before a message's last, zero-length ones included:
each costs parsing whatever it holds, so a message of empty fragments reaches the cap too instead
of never. The pieces are kept in one buffer (reassembly.py), charged to the server's memory budget
(budget.py). Too big fails the connection with 1009 (RFC 6455 §7.4.1) and nothing more is parsed;
at most EVENTS_PER_CALL frames are parsed per call, the rest on the loop's next turn
(`parse_backlog`). The close handshake is completed with the right code. A protocol violation
(wsproto's ParseFailed) parks the connection in FAILING until the pool has answered what came
before it (`fail_now()` then sends the close frame).

This is the one state machine of a connection's HTTP and WebSocket life; the connection layer
only tracks its transport. This module never touches sockets, threads or clocks: the connection
feeds it, sends what `data_to_send()` returns, and drops the transport once
`transport_should_close` is true.
"""

from __future__ import annotations

import enum
import logging
from dataclasses import dataclass
from typing import TYPE_CHECKING, cast

from wsproto import WSConnection
from wsproto.events import AcceptConnection
from wsproto.extensions import Extension
from wsproto.frame_protocol import FrameProtocol, Opcode, ParseFailed

from .budget import MemoryBudget
from .deflate import NegotiatedDeflate
from .events import (
    BACKLOG,
    BacklogPending,
    Closed,
    Event,
    HandshakeFailed,
    MessageReceived,
    PongReceived,
    RequestReceived,
)
from .frames import server_frames
from .http import Response
from .reassembly import Reassembly
from .states import check_move
from .upgrade import HeadReader, HeadRefused

logger = logging.getLogger(__name__)


class Phase(enum.Enum):
    REQUEST_HEAD = "request-head"            # reading the HTTP request head
    AWAITING_RESPONSE = "awaiting-response"  # a plain HTTP request waits for respond()
    UPGRADE_PENDING = "upgrade-pending"      # an upgrade waits for accept_upgrade()/respond()
    OPEN = "open"                            # WebSocket established
    FAILING = "failing"                      # the peer broke the protocol: replies to what it
                                             # sent before still go out, then fail_now()
    CLOSING = "closing"                      # our close frame sent, waiting for the peer's
    CLOSED = "closed"                        # nothing more to read or send; drop the transport


_ALLOWED: dict[Phase, frozenset[Phase]] = {
    Phase.REQUEST_HEAD: frozenset({Phase.AWAITING_RESPONSE, Phase.UPGRADE_PENDING,
                                   Phase.CLOSED}),
    Phase.AWAITING_RESPONSE: frozenset({Phase.CLOSED}),
    Phase.UPGRADE_PENDING: frozenset({Phase.OPEN, Phase.CLOSED}),
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


# Frames parsed per call at most. wsproto spends ~8 us on a frame whatever it holds, so one
# 16 KiB TLS record of empty frames (2,700 of them) would hold the loop for 20 ms and eight
# reads of them a sixth of a second; past this many (about 1 ms) the rest waits in wsproto's
# buffer for parse_backlog(), which the connection calls on the loop's next turn.
EVENTS_PER_CALL = 128

_TEXT, _BINARY, _PING, _PONG, _CLOSE = (Opcode.TEXT, Opcode.BINARY, Opcode.PING, Opcode.PONG,
                                        Opcode.CLOSE)

# What the peer reads in our close frame when it broke the protocol (RFC 6455 §7.4.1).
_CLOSE_REASONS = {1002: "protocol error", 1007: "invalid message data", 1008: "memory budget",
                  1009: "message too big"}


class ServerProtocol(Reassembly):
    __slots__ = ("limits", "phase", "_reader", "_handshake", "_ws", "_out", "_partial",
                 "_part_bytes", "_discarding", "_close_code", "_pending_input", "conn_id",
                 "extensions", "_budget", "_deflate", "_partial_text", "backlog")

    if TYPE_CHECKING:  # the whole limits; reassembly.Reassembly declares only what it reads
        limits: ProtocolLimits

    def __init__(self, limits: ProtocolLimits, conn_id: int = 0,
                 budget: MemoryBudget | None = None) -> None:
        self.limits = limits
        self.conn_id = conn_id
        self._budget = budget if budget is not None else MemoryBudget.unlimited()
        self._deflate: NegotiatedDeflate | None = None
        self.phase = Phase.REQUEST_HEAD
        self._reader: HeadReader | None = HeadReader(limits.max_header_bytes, limits.max_headers)
        self._handshake: WSConnection | None = None  # only while an upgrade is pending
        self._ws: FrameProtocol | None = None
        self._out: list[bytes | bytearray] = []
        # The message being reassembled, as its bytes on the wire (text encoded again): one
        # buffer, so that a piece costs no Python object however small it is.
        self._partial: bytearray | None = None
        self._partial_text = False
        self._part_bytes = 0  # as charged: its bytes + FRAGMENT_OVERHEAD a frame before its last
        self._discarding = False  # a message was refused: nothing more is collected
        self.backlog = False  # frames left unparsed after EVENTS_PER_CALL
        self._close_code = 0
        self._pending_input = b""  # bytes after the head, fed in once the upgrade is accepted
        self.extensions: tuple[str, ...] = ()  # negotiated, for the connection's debug log

    # -- state ----------------------------------------------------------------------------
    def _move(self, to: Phase, why: str) -> None:
        self.phase = check_move(_ALLOWED, self.phase, to, why, self.conn_id, logger)
        if to is Phase.FAILING or to is Phase.CLOSED:
            self.drop_partial()
        if to is not Phase.OPEN and self._deflate is not None:
            # Closing or failing: inflate nothing more (a bomb sent after our close frame
            # would otherwise still cost loop CPU), and so take no more messages.
            self._deflate.stop()
            self._discarding = True
            self.drop_partial()

    @property
    def transport_should_close(self) -> bool:
        """Once the output is flushed, drop the TCP connection."""
        return self.phase is Phase.CLOSED

    @property
    def is_open(self) -> bool:
        """The WebSocket is established and not closing: messages may be sent."""
        return self.phase is Phase.OPEN

    def data_to_send(self) -> bytes | bytearray:
        out = self._out
        if not out:
            return b""
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
            if not data:
                return self._end_of_stream()
            ws = self._ws
            assert ws is not None
            ws.receive_bytes(data)
            return self._drain_ws_events()
        if phase is Phase.REQUEST_HEAD:
            return self._receive_head(data)
        if phase is Phase.UPGRADE_PENDING:
            if not data:
                self._move(Phase.CLOSED, "end of stream before the upgrade was answered")
                return [Closed(1006, "end of stream before the upgrade was answered", True)]
            self._pending_input += data
        return []  # answering plain HTTP, or closed: further input is ignored

    def _receive_head(self, data: bytes) -> list[Event]:
        reader = self._reader
        assert reader is not None
        if not data:
            why = ("end of stream during the request head" if reader.started
                   else "closed before sending a request")
            self._move(Phase.CLOSED, why)
            return [Closed(1006, why, True)]
        result = reader.feed(data)
        if result is None:
            return []
        if isinstance(result, HeadRefused):
            return [self._refuse(result.status, result.reason)]
        self._reader = None
        if result.handshake is None:
            self._move(Phase.AWAITING_RESPONSE, "plain HTTP request")
        else:
            self._handshake = result.handshake
            self._pending_input = result.trailing
            self._move(Phase.UPGRADE_PENDING, "upgrade requested")
        return [result.request]

    def accept_upgrade(self) -> list[Event]:
        """Answer the pending upgrade with 101; return the events of bytes sent after the head."""
        ws = self._handshake
        if self.phase is not Phase.UPGRADE_PENDING or ws is None:
            return []
        extensions: list[Extension] = []
        if self.limits.compression:
            extensions.append(NegotiatedDeflate(
                client_max_window_bits=self.limits.deflate_window_bits,
                server_max_window_bits=self.limits.deflate_window_bits,
                max_message_size=self.limits.max_message_size))
        try:
            accept = ws.send(AcceptConnection(extensions=extensions))
        except ValueError as exc:  # a deflate offer such as client_max_window_bits=abc
            return [self._refuse(400, f"bad Sec-WebSocket-Extensions: {exc}")]
        self._out.append(accept)
        # wsproto's frame state machine with the extensions the handshake agreed to; the
        # WSConnection (an h11.Connection, the request's headers) is dropped: several KiB per
        # idle client.
        self._ws = server_frames(extensions)
        self._handshake = None
        self.extensions = tuple(ext.name for ext in extensions if ext.enabled())
        for ext in extensions:
            if isinstance(ext, NegotiatedDeflate) and ext.enabled():
                self._deflate = ext
        self._move(Phase.OPEN, "upgrade accepted")
        pending, self._pending_input = self._pending_input, b""
        if not pending:
            return []
        self._ws.receive_bytes(pending)
        return self._drain_ws_events()

    def respond(self, response: Response, head_only: bool = False) -> None:
        """Answer a plain request, or refuse a pending upgrade; the connection closes after."""
        if self.phase not in (Phase.AWAITING_RESPONSE, Phase.UPGRADE_PENDING,
                              Phase.REQUEST_HEAD):
            return
        self._out.append(response.serialize(head_only))
        self._reader = None
        self._handshake = None
        self._pending_input = b""
        self._move(Phase.CLOSED, f"responded {response.status}")

    def _refuse(self, status: int, reason: str) -> HandshakeFailed:
        self.respond(Response.text(status))
        return HandshakeFailed(status, reason)

    def parse_backlog(self) -> list[Event]:
        """Parse what a previous call left in wsproto's buffer (after BacklogPending)."""
        if self.backlog and (self.phase is Phase.OPEN or self.phase is Phase.CLOSING):
            return self._drain_ws_events()
        self.backlog = False
        return []

    def _drain_ws_events(self) -> list[Event]:
        ws = self._ws
        assert ws is not None
        out: list[Event] = []
        self.backlog = False
        parsed = 0
        try:
            for frame in ws.received_frames():
                parsed += 1
                opcode = frame.opcode
                if opcode is _TEXT or opcode is _BINARY:
                    message = None if self._discarding or self.phase is Phase.CLOSED else \
                        self._collect(cast(str | bytes, frame.payload), frame.frame_finished,
                                      frame.message_finished)
                    if message is not None:
                        out.append(message)
                    elif self._discarding and self.phase is Phase.FAILING:
                        # Refused as too big: parse nothing more (zero-length fragments cost
                        # CPU however little they hold), fail with 1009 once earlier replies
                        # are out.
                        out.append(Closed(1009, "message too big", False))
                        break
                elif opcode is _PING:
                    if self.phase is Phase.OPEN:
                        self._out.append(ws.pong(cast(bytes, frame.payload)))
                elif opcode is _PONG:
                    out.append(PongReceived(bytes(cast(bytes, frame.payload))))
                elif opcode is _CLOSE:
                    code, reason = cast(tuple[int, str], frame.payload)
                    out.append(self._on_close(code, reason))
                    break
                if parsed >= EVENTS_PER_CALL:
                    self.backlog = True
                    out.append(BACKLOG)
                    break
        except ParseFailed as exc:
            out.append(self._on_violation(exc.code, str(exc)))
        return out

    def _too_big(self) -> None:
        """Refuse the message: fail with 1009 (close() when already closing)."""
        self.drop_partial()
        if self.phase is Phase.OPEN:
            self._close_code = 1009
            self._move(Phase.FAILING, "message too big")
        self._discarding = True

    def fail(self, code: int) -> None:
        """Fail the connection with `code` (the memory budget's 1008/1009): nothing more is
        parsed, what it held is dropped, and the close frame goes out with fail_now()."""
        self.drop_partial()
        self._discarding = True
        if self.phase is Phase.OPEN:
            self._close_code = code
            self._move(Phase.FAILING, f"failed with {code}")

    def _on_close(self, code: int, reason: str) -> Closed:
        """The peer's close frame (wsproto checked its code and reason)."""
        ws = self._ws
        assert ws is not None
        if self.phase is Phase.OPEN:
            # The peer started the close: echo its code (RFC 6455 §5.5.1) and drop TCP.
            self._out.append(ws.close(code, reason))
            self._move(Phase.CLOSED, f"peer close {code}")
            return Closed(code, reason or "", True)
        # CLOSING: the reply to our close.
        self._move(Phase.CLOSED, f"close complete {code}")
        return Closed(self._close_code or code, reason or "", False)

    def _end_of_stream(self) -> list[Event]:
        """The transport ended without a close frame (1006) or after ours went unanswered."""
        self._move(Phase.CLOSED, "end of stream")
        return [Closed(self._close_code or 1006, "", self._close_code == 0)]

    def _on_violation(self, code: int, reason: str) -> Closed:
        """wsproto found a protocol violation and says which code to fail with (1002, 1007...).

        Nothing more is read. In OPEN the close frame waits in FAILING until the replies to
        messages received before the violation are out (the connection calls fail_now()), so
        none of them is lost; while closing, the transport just goes."""
        self._close_code = self._close_code or code
        if self.phase is Phase.OPEN:
            self._move(Phase.FAILING, f"protocol error {code}")
        else:
            self._move(Phase.CLOSED, f"protocol error {code} while closing")
        return Closed(code, reason, False)

    def fail_now(self) -> None:
        """Send the close frame of a protocol failure (FAILING); then drop the transport."""
        if self.phase is not Phase.FAILING:
            return
        assert self._ws is not None
        # wsproto's reason is a parser message; the peer gets a fixed phrase instead.
        code = self._close_code
        self._out.append(self._ws.close(code, _CLOSE_REASONS.get(code, "")))
        self._move(Phase.CLOSED, f"failed with {code}")

    # -- output ---------------------------------------------------------------------------
    def send_message(self, data: str | bytes) -> bool:
        """Queue a message; False when the connection can no longer send."""
        phase = self.phase
        ws = self._ws
        if (phase is not Phase.OPEN and phase is not Phase.FAILING) or ws is None:
            return False
        self._out.append(ws.send_data(data, True))
        return True

    def send_ping(self, payload: bytes) -> bool:
        ws = self._ws
        if self.phase is not Phase.OPEN or ws is None:
            return False
        self._out.append(ws.ping(payload))
        return True

    def close(self, code: int = 1000, reason: str = "") -> None:
        """Start the close handshake (or, before the upgrade, just close)."""
        phase = self.phase
        if phase is Phase.OPEN:
            assert self._ws is not None
            self._out.append(self._ws.close(code, reason))
            self._close_code = code
            self._move(Phase.CLOSING, f"local close {code}")
        elif phase is Phase.FAILING:
            self.fail_now()  # the protocol error's code is the one the peer must see
        elif phase is not Phase.CLOSING and phase is not Phase.CLOSED:
            self._move(Phase.CLOSED, f"local close {code} before upgrade")

    def abort(self) -> None:
        """Give up on the peer (timeout, reset): nothing more is sent or read."""
        if self.phase is not Phase.CLOSED:
            self._move(Phase.CLOSED, "abort")


__all__ = ["BACKLOG", "EVENTS_PER_CALL", "BacklogPending", "Closed", "Event", "HandshakeFailed",
           "MessageReceived", "Phase", "PongReceived", "ProtocolLimits", "RequestReceived",
           "ServerProtocol"]
