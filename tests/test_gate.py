"""The gate before TLS (gate.py), with real sockets from several 127.0.0.x source addresses
(Linux routes all of 127/8 to the loopback interface): per-address limits, the handshake-rate
bucket, the handshaking share under a flood of idle sockets, and the PROXY protocol end to end.
"""

from __future__ import annotations

import asyncio
import json
import select
import socket
import ssl
import struct
import time
from collections.abc import Callable
from typing import Any

import pytest
from helpers import UNIT, ServerProcess, client_ssl_context, wait_for
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import WebSocketException

from webscale.proxy_protocol import V2_SIGNATURE

StartServer = Callable[..., ServerProcess]
WHOAMI = ("--decode", "none", "--handler", "server_handlers:peer_address")
# What a client sees when the server closes its TCP connection before or during TLS.
REFUSED = (OSError, ssl.SSLError, EOFError, WebSocketException)


async def open_ws(server: ServerProcess, *, source: str | None = None,
                  sock: socket.socket | None = None) -> ClientConnection:
    ctx = client_ssl_context(server.cafile)  # type: ignore[arg-type]
    where: dict[str, Any] = {"sock": sock} if sock is not None else {"local_addr": (source, 0)}
    return await connect(server.url, ssl=ctx, open_timeout=5 * UNIT, **where)


async def whoami(ws: ClientConnection) -> list[Any]:
    await ws.send("who am I?")
    return json.loads(await asyncio.wait_for(ws.recv(), 5 * UNIT))  # type: ignore[no-any-return]


async def refused(server: ServerProcess, **where: Any) -> bool:
    """True when the server closes the connection instead of upgrading it (promptly: a
    refusal, not a timeout)."""
    started = time.monotonic()
    try:
        ws = await open_ws(server, **where)
    except REFUSED as exc:
        assert not isinstance(exc, TimeoutError), "timed out instead of being refused"
        assert time.monotonic() - started < 3 * UNIT
        return True
    await ws.close()
    return False


def by_reason(server: ServerProcess) -> dict[str, int]:
    return server.stats()["connections_rejected_by_reason"]  # type: ignore[no-any-return]


# -- per-address limits ---------------------------------------------------------------------
def test_connections_per_address(server_factory: StartServer) -> None:
    server = server_factory(*WHOAMI, "--max-connections-per-ip", "3")

    async def main() -> None:
        limited = [await open_ws(server, source="127.0.0.2") for _ in range(3)]
        assert await refused(server, source="127.0.0.2")  # the fourth from that address
        others = [await open_ws(server, source="127.0.0.3") for _ in range(3)]  # unaffected
        assert (await whoami(others[0]))[0] == "127.0.0.3"
        for ws in limited:
            assert (await whoami(ws))[0] == "127.0.0.2"
        await limited[0].close()  # its count is released when it closes ...
        await asyncio.to_thread(wait_for, lambda: server.stats()["websockets_open"] == 5,
                                what="the closed connection to be released")
        again = await open_ws(server, source="127.0.0.2")  # ... so that address may connect
        assert (await whoami(again))[0] == "127.0.0.2"
        assert await refused(server, source="127.0.0.2")
        for ws in [again, *limited[1:], *others]:
            await ws.close()

    asyncio.run(main())
    stats = wait_for(lambda: (s := server.stats())["connections_open"] == 0 and s,
                     what="every connection to close")
    # Every address's count went back to 0 and its entry with it: the table is empty.
    assert stats["per_address_tracked"] == {"connections": 0, "buckets": 0}
    assert stats["connections_rejected_by_reason"]["per_ip_connections"] == 2
    assert stats["connections_rejected"] == 2
    assert stats["tls_handshake_failures"] == 0  # refused before TLS: nothing to fail
    assert "refused a connection from 127.0.0.2:" in server.stderr()
    assert "per_ip_connections" in server.stderr()
    status, body = server.admin_get("/metrics")
    assert status == 200
    assert b'webscale_connections_rejected_total{reason="per_ip_connections"} 2' in body


def test_handshake_rate_per_address(server_factory: StartServer) -> None:
    # 0.5 per second: a burst of one, then one every 2 s.
    server = server_factory(*WHOAMI, "--max-handshakes-per-ip-per-s", "0.5")

    async def main() -> float:
        first = await open_ws(server, source="127.0.0.4")
        granted = time.monotonic()
        assert await refused(server, source="127.0.0.4")
        other = await open_ws(server, source="127.0.0.5")  # its own bucket
        assert (await whoami(other))[0] == "127.0.0.5"
        # The token comes back 2 s after the first one was taken.
        while await refused(server, source="127.0.0.4"):
            assert time.monotonic() - granted < 6 * UNIT, "the bucket never refilled"
            await asyncio.sleep(0.2)
        waited = time.monotonic() - granted
        for ws in (first, other):
            await ws.close()
        return waited

    waited = asyncio.run(main())
    assert waited >= 1.5  # not before the token was due (2 s, less scheduling slack)
    assert by_reason(server)["per_ip_handshake_rate"] >= 2


# -- the handshaking share --------------------------------------------------------------------
def test_idle_sockets_cannot_lock_out_new_clients(server_factory: StartServer) -> None:
    """Issue 12: 1,300 idle TCP sockets from one address against --max-connections 1000 made
    every new connection fail. Scaled down: 300 against 100, whose share is 64 handshaking."""
    server = server_factory(*WHOAMI, "--max-connections", "100")
    flood = 300
    idle = [socket.create_connection((server.host, server.port), timeout=5 * UNIT,
                                     source_address=("127.0.0.6", 0)) for _ in range(flood)]
    try:
        wait_for(lambda: server.stats()["connections_total"] >= flood, 10,
                 what="the idle sockets to be accepted")
        # /healthz for the balancer, and a new client, while the idle sockets stay open.
        assert server.http_get("/healthz") == (200, b"ok\n")

        async def client() -> list[Any]:
            ws = await open_ws(server, source="127.0.0.1")
            try:
                return await whoami(ws)
            finally:
                await ws.close()

        assert asyncio.run(client())[0] == "127.0.0.1"
        stats = server.stats()
        assert stats["connections_handshaking"] <= 64
        # Every idle socket past the share pushed out an older one.
        assert stats["connections_rejected_by_reason"]["handshake_share"] >= flood - 64
        closed = sum(1 for sock in idle if _closed_by_peer(sock))
        assert closed >= flood - 64, f"only {closed} idle sockets were dropped"
        assert "handshake_share" in server.stderr()
    finally:
        for sock in idle:
            sock.close()


def _closed_by_peer(sock: socket.socket) -> bool:
    readable, _, _ = select.select([sock], [], [], 0)
    if not readable:
        return False
    try:
        return sock.recv(1) == b""
    except ConnectionResetError:
        return True


# -- the PROXY protocol -----------------------------------------------------------------------
BALANCER = "127.0.0.7"


def v1(client: str, port: int) -> bytes:
    family = "TCP6" if ":" in client else "TCP4"
    destination = "::1" if ":" in client else "127.0.0.1"
    return f"PROXY {family} {client} {destination} {port} 8443\r\n".encode()


def v2(client: str | None, port: int = 0) -> bytes:
    if client is None:  # LOCAL: the balancer's own connection
        return V2_SIGNATURE + b"\x20\x00\x00\x00"
    if ":" in client:
        block = (socket.inet_pton(socket.AF_INET6, client)
                 + socket.inet_pton(socket.AF_INET6, "::1") + struct.pack("!HH", port, 8443))
        return V2_SIGNATURE + b"\x21\x21" + struct.pack("!H", len(block)) + block
    block = socket.inet_aton(client) + socket.inet_aton("127.0.0.1") + struct.pack("!HH", port,
                                                                                     8443)
    return V2_SIGNATURE + b"\x21\x11" + struct.pack("!H", len(block)) + block


def from_source(server: ServerProcess, source: str, first_bytes: bytes = b"",
                split: int = 0) -> socket.socket:
    """A TCP connection from `source` that has sent `first_bytes` (in `split` + 1 writes)."""
    sock = socket.create_connection((server.host, server.port), timeout=5 * UNIT,
                                    source_address=(source, 0))
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    step = max(1, len(first_bytes) // (split + 1))
    for start in range(0, len(first_bytes), step):
        sock.sendall(first_bytes[start:start + step])
        if split:
            time.sleep(0.05)  # separate segments: the server must wait for the rest
    return sock


def closed_without_reply(sock: socket.socket) -> bool:
    try:
        return sock.recv(1024) == b""
    except ConnectionResetError:
        return True
    finally:
        sock.close()


@pytest.fixture
def proxied(server_factory: StartServer) -> ServerProcess:
    return server_factory(*WHOAMI, "--proxy-protocol-from", f"{BALANCER}/32",
                          "--proxy-protocol-from", "192.0.2.0/24",
                          "--max-connections-per-ip", "1", "--handshake-timeout", "2")


def test_proxy_headers_name_the_client(proxied: ServerProcess) -> None:
    server = proxied

    async def main() -> None:
        held = []
        for header, client in [(v1("203.0.113.5", 40000), ["203.0.113.5", 40000]),
                               (v2("203.0.113.6", 40001), ["203.0.113.6", 40001]),
                               (v1("2001:db8::5", 5000), ["2001:db8::5", 5000]),
                               (v2("2001:db8:0:1::6", 6000), ["2001:db8:0:1::6", 6000])]:
            ws = await open_ws(server, sock=from_source(server, BALANCER, header))
            assert await whoami(ws) == client
            held.append(ws)
        # A header delivered in pieces is waited for, not misread.
        ws = await open_ws(server, sock=from_source(server, BALANCER, v1("198.51.100.9", 1234),
                                                    split=3))
        assert await whoami(ws) == ["198.51.100.9", 1234]
        held.append(ws)
        # Per-address limits count the client, not the balancer: a second connection for
        # 203.0.113.5 is refused, while the balancer itself carries five.
        assert await refused(server, sock=from_source(server, BALANCER, v2("203.0.113.5", 1)))
        # The balancer's own connections (LOCAL, UNKNOWN) keep its address and are not limited.
        local = [await open_ws(server, sock=from_source(server, BALANCER, v2(None)))
                 for _ in range(2)]
        unknown = await open_ws(server, sock=from_source(server, BALANCER,
                                                         b"PROXY UNKNOWN\r\n"))
        for ws in [*local, unknown]:
            assert (await whoami(ws))[0] == BALANCER
        # A direct client (an address not listed) is served as itself.
        direct = await open_ws(server, source="127.0.0.9")
        assert (await whoami(direct))[0] == "127.0.0.9"
        for ws in [*held, *local, unknown, direct]:
            await ws.close()

    asyncio.run(main())
    stats = server.stats()
    assert stats["connections_rejected_by_reason"]["per_ip_connections"] == 1
    assert stats["connections_rejected_by_reason"]["proxy_header"] == 0
    assert "refused a connection from 203.0.113.5:1: per_ip_connections" in server.stderr()


def test_bad_or_untrusted_proxy_headers_are_closed_before_tls(proxied: ServerProcess) -> None:
    server = proxied
    bad = [b"PROXY TCP4 203.0.113.5 nonsense\r\n", b"PROXY TCP4 1.2.3.4 5.6.7.8 1 99999\r\n",
           V2_SIGNATURE + b"\x21\x12\x00\x0c" + b"\x00" * 12,  # UDP
           b"\x16\x03\x01\x00\x05hello"]  # TLS straight away: the balancer forgot the header
    for first_bytes in bad:
        assert closed_without_reply(from_source(server, BALANCER, first_bytes)), first_bytes
    # A header from an address not listed: a client trying to name its own address.
    assert closed_without_reply(from_source(server, "127.0.0.8", v1("203.0.113.77", 1)))
    assert closed_without_reply(from_source(server, "127.0.0.8", v2("203.0.113.77", 1)))
    # A listed balancer that sends nothing is closed at --handshake-timeout (2 s here).
    silent = from_source(server, BALANCER)
    started = time.monotonic()
    assert closed_without_reply(silent)
    assert 1.5 <= time.monotonic() - started < 5 * UNIT
    reasons = by_reason(server)
    assert reasons["proxy_header"] == len(bad) + 1
    assert reasons["proxy_untrusted"] == 2
    stats = server.stats()
    assert stats["tls_handshake_failures"] == 0 and stats["connections_open"] == 0
    log = server.stderr()
    assert f"refused a connection from {BALANCER}:" in log
    assert "refused a connection from 127.0.0.8:" in log and "proxy_untrusted" in log
