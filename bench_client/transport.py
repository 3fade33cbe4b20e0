"""Socket-level helpers for connections: the target, non-blocking connect, error naming.

How this works: `start_connect` makes a non-blocking TCP socket, optionally binds it to a source
address with IP_BIND_ADDRESS_NO_PORT (so the kernel picks the port at connect time per
(source, destination) pair, which is what lets 16 loopback sources carry more than ~28k
connections to one port), and starts the connect. Failures become `ConnectError` with a short
reason such as "connect: ECONNREFUSED", the form the report groups failures by.

IP_BIND_ADDRESS_NO_PORT is Linux-only (4.2+). Elsewhere it is not set (its number, 24 on Linux,
is some other option there) and the port is chosen at bind time, so all the connections from
one source address share one ephemeral port range; `source_binding_note` says so at start.
"""

from __future__ import annotations

import errno
import socket
import ssl
import sys
from dataclasses import dataclass

from bench_client.errors import ConnectError

# Linux's value where a Python lacks the constant; None off Linux: never set there.
IP_BIND_ADDRESS_NO_PORT: int | None = getattr(
    socket, "IP_BIND_ADDRESS_NO_PORT", 24 if sys.platform.startswith("linux") else None)


@dataclass(frozen=True, slots=True)
class Target:
    """Where every connection of a worker goes, and how."""

    host: str
    port: int
    path: str
    address: tuple[str, int]  # resolved once by the parent
    tls: ssl.SSLContext | None
    handshake_timeout: float


def errno_name(exc: OSError) -> str:
    if exc.errno is not None and exc.errno in errno.errorcode:
        return errno.errorcode[exc.errno]
    return type(exc).__name__


def start_connect(address: tuple[str, int], source_addr: str | None) -> socket.socket:
    """A non-blocking socket whose connect to `address` is under way (or already done)."""
    try:
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    except OSError as exc:
        raise ConnectError(f"socket: {errno_name(exc)}") from None
    try:
        sock.setblocking(False)
        # small control frames (pings, closes) should not wait for Nagle
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        if source_addr is not None:
            if IP_BIND_ADDRESS_NO_PORT is not None:
                sock.setsockopt(socket.IPPROTO_IP, IP_BIND_ADDRESS_NO_PORT, 1)
            sock.bind((source_addr, 0))
        err = sock.connect_ex(address)
    except OSError as exc:
        sock.close()
        raise ConnectError(f"connect: {errno_name(exc)}") from None
    if err not in (0, errno.EINPROGRESS):
        sock.close()
        raise ConnectError(f"connect: {errno.errorcode.get(err, str(err))}")
    return sock


def source_binding_note() -> str | None:
    """What --source-addrs cannot do on this platform, for a warning at start; None on Linux."""
    if IP_BIND_ADDRESS_NO_PORT is not None:
        return None
    return ("--source-addrs: IP_BIND_ADDRESS_NO_PORT is Linux-only, so here each connection's "
            "port is chosen when it binds its source address: one source address carries at "
            "most one ephemeral port range of connections in all (16,384 on macOS by default), "
            "not one per destination")


def connect_result(sock: socket.socket) -> None:
    """Raise ConnectError if the non-blocking connect on `sock` failed."""
    err = sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
    if err:
        raise ConnectError(f"connect: {errno.errorcode.get(err, str(err))}")
