"""Reading a request head: within limits, parsed strictly, an upgrade validated by wsproto.

How this works: `HeadReader.feed()` buffers bytes until h11 has parsed a complete request head
within `max_header_bytes` and `max_headers` (else 431, or 400 for a malformed head), checks it
strictly (below), and for a WebSocket upgrade lets a `wsproto.WSConnection` validate it (key,
version, ...); it returns the head, what came after it, and that handshake, or a refusal.
ServerProtocol (protocol.py) acts on the result; nothing here does I/O.

What a request head must be: an upgrade parsed strictly (RFC 6455 §4.2.1, RFC 9112).

h11 parses leniently where RFC 9112 allows a recipient to (bare LF line endings, obs-fold
unfolded into a space, HTTP/1.0), and wsproto checks only the headers a handshake needs. A
WebSocket server has no reason to accept more: a proxy in front may read the same bytes another
way (request smuggling), and a body after an upgrade head would be read as WebSocket frames. So
any request head with a bare LF or obs-fold is refused, and an upgrade must also be HTTP/1.1 with
an origin-form target ("/path?query"), no body (no Transfer-Encoding, no Content-Length but 0) and
exactly one Sec-WebSocket-Key of 16 bytes in base64 (RFC 6455 §4.2.1 item 5). Plain requests
(health checks) may still be HTTP/1.0: load balancers send that.
"""

from __future__ import annotations

import base64
import binascii
from dataclasses import dataclass

import h11
from wsproto import ConnectionType, WSConnection
from wsproto.events import Request
from wsproto.utilities import RemoteProtocolError

from .events import RequestReceived
from .http import REASONS, Headers


@dataclass(frozen=True, slots=True)
class HeadRefused:
    """The head cannot be served: answer `status` and close."""
    status: int
    reason: str


@dataclass(frozen=True, slots=True)
class HeadRead:
    """A complete head; for an upgrade, wsproto's validated handshake (it writes the 101)."""
    request: RequestReceived
    trailing: bytes  # bytes the client sent after the head
    handshake: WSConnection | None


class HeadReader:
    __slots__ = ("_head", "_h11", "_max_bytes", "_max_headers")

    def __init__(self, max_header_bytes: int, max_headers: int) -> None:
        self._head = bytearray()
        self._h11 = h11.Connection(h11.SERVER, max_incomplete_event_size=max_header_bytes)
        self._max_bytes = max_header_bytes
        self._max_headers = max_headers

    @property
    def started(self) -> bool:
        """Some of a head arrived."""
        return bool(self._head)

    def feed(self, data: bytes) -> HeadRead | HeadRefused | None:
        """Bytes from the client; None until the head is complete."""
        self._head += data
        self._h11.receive_data(data)
        try:
            event = self._h11.next_event()
        except h11.RemoteProtocolError as exc:
            status = exc.error_status_hint
            return HeadRefused(status if status in REASONS else 400, str(exc))
        if event is h11.NEED_DATA:
            return None
        if not isinstance(event, h11.Request):
            return HeadRefused(400, "not an HTTP request")
        if len(event.headers) > self._max_headers:
            return HeadRefused(431, f"more than {self._max_headers} headers")
        # h11 bounds only an *incomplete* head; a whole oversized head that arrived in one read
        # (up to --read-chunk-bytes) would pass, so measure what it parsed as well.
        trailing = bytes(self._h11.trailing_data[0])
        raw = bytes(self._head[:len(self._head) - len(trailing)])
        if len(raw) > self._max_bytes:
            return HeadRefused(431, f"request head over {self._max_bytes} bytes")
        upgrade = is_upgrade(event)
        problem = malformed_head(raw) or (improper_upgrade(event) if upgrade else None)
        if problem is not None:
            return HeadRefused(400, problem)
        received = RequestReceived(event.method.decode("latin-1"),
                                   event.target.decode("latin-1"),
                                   Headers.from_raw(list(event.headers)), upgrade)
        if not upgrade:
            return HeadRead(received, trailing, None)
        ws = WSConnection(ConnectionType.SERVER)
        try:
            ws.receive_data(raw)
            request = next((e for e in ws.events() if isinstance(e, Request)), None)
        except (RemoteProtocolError, ValueError) as exc:
            # wsproto decodes header values unguarded: a non-ASCII token or a Host that is not
            # IDNA raises UnicodeError (a ValueError). Either way the request is malformed.
            return HeadRefused(400, str(exc))
        if request is None:
            return HeadRefused(400, "incomplete WebSocket upgrade request")
        return HeadRead(received, trailing, ws)


def is_upgrade(request: h11.Request) -> bool:
    """The request asks for a WebSocket (RFC 6455 §4.2.1 item 3); wsproto checks the rest."""
    for name, value in request.headers:
        if name == b"upgrade" and value.lower() == b"websocket":
            return True
    return False


def malformed_head(raw: bytes) -> str | None:
    """RFC 9112 §2.2 and §5.2, which h11 accepts: a bare LF line ending, or obs-fold."""
    if raw.count(b"\n") != raw.count(b"\r\n"):
        return "bare LF in the request head"
    if b"\r\n " in raw or b"\r\n\t" in raw:
        return "obs-fold in the request head"
    return None


def improper_upgrade(request: h11.Request) -> str | None:
    """What RFC 6455 §4.2.1 and RFC 9112 forbid in an upgrade and wsproto lets through."""
    if request.http_version != b"1.1":
        return f"WebSocket upgrade over HTTP/{request.http_version.decode()}"
    if not request.target.startswith(b"/"):
        return "WebSocket upgrade to a target that is not origin-form"  # RFC 9112 §3.2.1
    keys = []
    for name, value in request.headers:
        if name == b"transfer-encoding":
            return "WebSocket upgrade with a body (Transfer-Encoding)"
        if name == b"content-length" and value.strip() != b"0":
            return "WebSocket upgrade with a body (Content-Length)"
        if name == b"sec-websocket-key":
            keys.append(value)
    if len(keys) > 1:
        return "more than one Sec-WebSocket-Key"
    if keys:  # a missing key is wsproto's to report
        try:
            key = base64.b64decode(keys[0], validate=True)
        except (binascii.Error, ValueError):
            key = b""
        if len(key) != 16:
            return "Sec-WebSocket-Key is not 16 base64-encoded bytes"
    return None
