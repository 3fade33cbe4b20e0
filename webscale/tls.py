"""TLS: the server context factory and the one shim that turns "would block" into "wait for X".

How this works: accepted sockets are wrapped with `do_handshake_on_connect=False` and stay
non-blocking; the connection drives `do_handshake()` from readiness events. Every read, write and
handshake step goes through `tls_step`-style helpers here, which map `SSLWantReadError`,
`SSLWantWriteError` and `BlockingIOError` to WANT_READ or WANT_WRITE, so no other module needs to
know which exception means what (curio/io.py does the same). Plain sockets (--no-tls) go through
the same helpers: they raise only BlockingIOError.

After a TLS read, OpenSSL may hold decrypted bytes the selector cannot see: callers check
`pending_plaintext()` and read again instead of waiting for readiness that will never come.

Client certificates (mutual TLS): with a client CA the context asks every client for a
certificate and OpenSSL verifies it against that CA during the handshake (chain, validity dates,
the clientAuth purpose); a client without one fails the handshake when one is required.
`failure_reason()` sorts a failed handshake into a few reasons for /stats and the logs.
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


def make_server_context(cert: Path, key: Path, client_ca: Path | None = None,
                        client_cert_required: bool = True) -> ssl.SSLContext:
    """The one place a server SSLContext is built: TLS >= 1.2, ALPN http/1.1, no compression.

    With `client_ca`, clients are asked for a certificate signed by it: without one the
    handshake fails when `client_cert_required`, and succeeds otherwise (a certificate that is
    presented is always verified: one from another CA fails either way)."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    ctx.load_cert_chain(str(cert), str(key))
    if client_ca is not None:
        ctx.load_verify_locations(cafile=str(client_ca))
        ctx.verify_mode = ssl.CERT_REQUIRED if client_cert_required else ssl.CERT_OPTIONAL
    ctx.set_alpn_protocols(["http/1.1"])
    # No session tickets' state to keep per connection beyond OpenSSL's defaults; disabling
    # renegotiation (TLS 1.2) closes a CPU-exhaustion vector a client could otherwise use.
    ctx.options |= ssl.OP_NO_COMPRESSION | ssl.OP_NO_RENEGOTIATION
    # ECDHE only, AEAD ciphers first (OpenSSL's TLS 1.3 suites are already AEAD-only).
    ctx.set_ciphers("ECDHE+AESGCM:ECDHE+CHACHA20")
    return ctx


# Why a handshake failed, as /stats and /metrics count it (tls_handshake_failures_by_reason).
FAILURE_REASONS = ("no_certificate", "unknown_ca", "bad_certificate", "other")
# X.509 verify results (OpenSSL's X509_V_ERR_*) that mean "not signed by a CA we trust":
# unable to get issuer certificate (2), self-signed leaf (18), self-signed certificate in the
# chain (19), unable to get the issuer locally (20), unable to verify the leaf's signature (21).
_UNKNOWN_CA_CODES = frozenset({2, 18, 19, 20, 21})


def failure_reason(exc: BaseException) -> str:
    """Sort a failed server handshake: no client certificate, one from a CA we do not trust, one
    we reject for another reason (expired, wrong purpose, bad signature), or anything else (a
    scanner, a client that closed, a client that does not trust *our* certificate)."""
    if isinstance(exc, ssl.SSLCertVerificationError):
        return "unknown_ca" if exc.verify_code in _UNKNOWN_CA_CODES else "bad_certificate"
    if isinstance(exc, ssl.SSLError) and exc.reason == "PEER_DID_NOT_RETURN_A_CERTIFICATE":
        return "no_certificate"
    return "other"


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
    """Read up to `size` bytes; b"" is end of stream. Raises OSError on a broken connection.

    A TLS read returns at most one record's plaintext (16 KiB at most), so with `size` above
    that nothing decrypted is left inside OpenSSL when fewer than `size` bytes come back."""
    try:
        # SSLSocket.read skips recv()'s flag checks: one Python frame less per message.
        return sock.read(size) if type(sock) is ssl.SSLSocket else sock.recv(size)
    except (ssl.SSLWantReadError, BlockingIOError, InterruptedError):
        return Want.READ
    except ssl.SSLWantWriteError:
        return Want.WRITE
    except ssl.SSLZeroReturnError:
        return b""  # the peer sent close_notify: a clean end of stream


def send(sock: socket.socket, data: bytes | bytearray) -> int | Want:
    """Write `data`; the count written, or what to wait for. A TLS write is retried with the same
    bytes after a Want (OpenSSL requires it; the context allows a moved buffer)."""
    try:
        return sock.send(data)
    except (ssl.SSLWantWriteError, BlockingIOError, InterruptedError):
        return Want.WRITE
    except ssl.SSLWantReadError:
        return Want.READ


# A TLS record carries at most this much plaintext (RFC 8446 §5.1).
MAX_RECORD_PLAINTEXT = 16384


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
