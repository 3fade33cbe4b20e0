"""What a request head must be: an upgrade parsed strictly (RFC 6455 §4.2.1, RFC 9112).

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

import h11


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
