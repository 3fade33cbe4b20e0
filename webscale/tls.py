"""TLS: the server context factory and the one shim that turns "would block" into "wait for X".

How this works: accepted sockets are wrapped with `do_handshake_on_connect=False` and stay
non-blocking; the connection drives `do_handshake()` from readiness events. Every read, write and
handshake step goes through `tls_step`-style helpers here, which map `SSLWantReadError`,
`SSLWantWriteError` and `BlockingIOError` to WANT_READ or WANT_WRITE, so no other module needs to
know which exception means what (curio/io.py does the same). Plain sockets (--no-tls) go through
the same helpers: they raise only BlockingIOError.

After a TLS read, OpenSSL may hold decrypted bytes the selector cannot see: callers check
`pending_plaintext()` and read again instead of waiting for readiness that will never come.
"""

from __future__ import annotations

import enum
import socket
import ssl
from pathlib import Path

from .http import PeerCertificate


class Want(enum.Enum):
    READ = "read"
    WRITE = "write"


def make_server_context(cert: Path, key: Path) -> ssl.SSLContext:
    """The one place a server SSLContext is built: TLS >= 1.2, ALPN http/1.1, no compression."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    ctx.load_cert_chain(str(cert), str(key))
    ctx.set_alpn_protocols(["http/1.1"])
    # No session tickets' state to keep per connection beyond OpenSSL's defaults; disabling
    # renegotiation (TLS 1.2) closes a CPU-exhaustion vector a client could otherwise use.
    ctx.options |= ssl.OP_NO_COMPRESSION | ssl.OP_NO_RENEGOTIATION
    # ECDHE only, AEAD ciphers first (OpenSSL's TLS 1.3 suites are already AEAD-only).
    ctx.set_ciphers("ECDHE+AESGCM:ECDHE+CHACHA20")
    return ctx


def wrap(ctx: ssl.SSLContext | None, sock: socket.socket) -> socket.socket:
    sock.setblocking(False)
    if ctx is None:
        return sock
    return ctx.wrap_socket(sock, server_side=True, do_handshake_on_connect=False)


def handshake_step(sock: socket.socket) -> Want | None:
    """Advance the TLS handshake; None when it is complete. Raises ssl.SSLError/OSError."""
    assert isinstance(sock, ssl.SSLSocket)
    try:
        sock.do_handshake()
    except ssl.SSLWantReadError:
        return Want.READ
    except ssl.SSLWantWriteError:
        return Want.WRITE
    return None


def recv(sock: socket.socket, size: int) -> bytes | Want:
    """Read up to `size` bytes; b"" is end of stream. Raises OSError on a broken connection."""
    try:
        return sock.recv(size)
    except (ssl.SSLWantReadError, BlockingIOError, InterruptedError):
        return Want.READ
    except ssl.SSLWantWriteError:
        return Want.WRITE
    except ssl.SSLZeroReturnError:
        return b""  # the peer sent close_notify: a clean end of stream


def send(sock: socket.socket, data: bytes) -> int | Want:
    """Write `data`; the count written, or what to wait for. A TLS write is retried with the same
    bytes after a Want (OpenSSL requires it; the context allows a moved buffer)."""
    try:
        return sock.send(data)
    except (ssl.SSLWantWriteError, BlockingIOError, InterruptedError):
        return Want.WRITE
    except ssl.SSLWantReadError:
        return Want.READ


def pending_plaintext(sock: socket.socket) -> int:
    """Decrypted bytes OpenSSL holds that the selector cannot see."""
    if isinstance(sock, ssl.SSLSocket):
        return sock.pending()
    return 0


def peer_certificate(sock: socket.socket) -> PeerCertificate | None:
    """The verified client certificate's identity, or None (no certificate, or not asked for)."""
    if not isinstance(sock, ssl.SSLSocket):
        return None
    cert = sock.getpeercert()
    return PeerCertificate.from_ssl_dict(cert) if cert else None


def is_tls(sock: socket.socket) -> bool:
    return isinstance(sock, ssl.SSLSocket)
