"""Connection in-process over a socketpair, with a fake owner (websockets tests its sync layer so).

The test thread plays both sides: it runs the real EventLoop one iteration at a time and talks to
the connection through the other end of a `socket.socketpair()` with literal bytes. The owner is
a stand-in that records what the connection asks of it, which is all a connection knows of the
server.
"""

from __future__ import annotations

import contextlib
import socket
import ssl
import struct
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from webscale import tls
from webscale.connection import Connection, ConnectionSettings, Transport
from webscale.http import Request, Response
from webscale.loop import EventLoop
from webscale.protocol import ProtocolLimits, ServerProtocol
from webscale.stats import Stats

KEY = b"dGhlIHNhbXBsZSBub25jZQ=="
UPGRADE = (b"GET /ingest?site=7 HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\n"
           b"Connection: Upgrade\r\nSec-WebSocket-Key: " + KEY + b"\r\n"
           b"Sec-WebSocket-Version: 13\r\nOrigin: https://app.example\r\n\r\n")


def masked(opcode: int, payload: bytes, mask: bytes = b"\x01\x02\x03\x04") -> bytes:
    assert len(payload) < 126
    body = bytes(b ^ mask[i % 4] for i, b in enumerate(payload))
    return bytes([0x80 | opcode, 0x80 | len(payload)]) + mask + body


class FakeOwner:
    def __init__(self, decide: str = "later") -> None:
        self.decide = decide
        self.requests: list[Request] = []
        self.upgrades: list[tuple[Connection, Request]] = []
        self.messages: list[str | bytes] = []
        self.closed: list[Connection] = []
        self.tls_failures: list[str] = []

    def route(self, request: Request) -> Response:
        self.requests.append(request)
        return Response.text(200, f"you asked for {request.path}")

    def upgrade_requested(self, conn: Connection, request: Request) -> None:
        self.upgrades.append((conn, request))
        if self.decide == "accept":
            conn.accept_upgrade()

    def on_message(self, conn: Connection, data: str | bytes) -> None:
        self.messages.append(data)

    def on_closed(self, conn: Connection) -> None:
        self.closed.append(conn)

    def tls_failed(self, conn: Connection, reason: str, error: BaseException) -> None:
        self.tls_failures.append(reason)


class Harness:
    def __init__(self, owner: FakeOwner, settings: ConnectionSettings) -> None:
        self.loop = EventLoop()
        self.server_sock, self.client = socket.socketpair()
        self.client.settimeout(5)
        self.server_sock.setblocking(False)
        self.owner = owner
        self.stats = Stats()
        self.conn = Connection(self.loop, self.server_sock,
                               ServerProtocol(ProtocolLimits(max_message_size=1000), 1),
                               settings, owner, self.stats, ("127.0.0.9", 4242))
        self.conn.start()

    def run_until(self, predicate: Callable[[], object], seconds: float = 5.0) -> None:
        end = time.monotonic() + seconds
        while not predicate():
            if time.monotonic() > end:
                raise AssertionError("timed out driving the loop")
            self.loop.run_once(max_wait=0.01)

    def read(self, count: int) -> bytes:
        data = b""
        while len(data) < count:
            self.loop.run_once(max_wait=0.01)
            self.client.settimeout(0.01)
            try:
                chunk = self.client.recv(65536)
            except TimeoutError:
                continue
            if not chunk:
                break
            data += chunk
        return data

    def read_head(self) -> bytes:
        data = b""
        end = time.monotonic() + 5
        while b"\r\n\r\n" not in data and time.monotonic() < end:
            data += self.read(1)
        return data

    def close(self) -> None:
        self.client.close()
        if not self.conn.closed:
            self.conn.abort()
        self.loop.close()


@pytest.fixture
def make() -> Iterator[Callable[..., Harness]]:
    made: list[Harness] = []

    def factory(decide: str = "later", **settings: Any) -> Harness:
        harness = Harness(FakeOwner(decide), ConnectionSettings(**settings))
        made.append(harness)
        return harness

    yield factory
    for harness in made:
        harness.close()


def test_plain_request_is_routed_and_answered_then_closed(make: Callable[..., Harness]) -> None:
    h = make()
    h.client.sendall(b"GET /healthz?x=1 HTTP/1.1\r\nHost: x\r\nX-Probe: yes\r\n\r\n")
    h.run_until(lambda: h.owner.closed)
    request = h.owner.requests[0]
    assert (request.method, request.path, request.query) == ("GET", "/healthz", "x=1")
    assert request.headers.get("x-probe") == "yes" and not request.upgrade
    assert request.remote_address == ("127.0.0.9", 4242)
    answer = h.client.recv(4096)
    assert answer.startswith(b"HTTP/1.1 200 OK\r\n")
    assert answer.endswith(b"you asked for /healthz\n")
    assert h.client.recv(4096) == b""  # closed after the answer
    assert h.conn.transport is Transport.CLOSED and h.stats.http_requests == 1


def test_upgrade_waits_for_the_owner_then_opens(make: Callable[..., Harness]) -> None:
    h = make()
    h.client.sendall(UPGRADE + masked(0x1, b"early"))  # a frame sent before the 101
    h.run_until(lambda: h.owner.upgrades)
    conn, request = h.owner.upgrades[0]
    assert (request.path, request.query, request.upgrade) == ("/ingest", "site=7", True)
    assert request.headers["origin"] == "https://app.example"
    for _ in range(5):
        h.loop.run_once(max_wait=0.01)
    h.client.settimeout(0.05)
    with pytest.raises(TimeoutError):
        h.client.recv(1)  # nothing is answered while the owner decides
    assert h.owner.messages == []  # ... and nothing after the head is read
    conn.accept_upgrade()
    assert h.read_head().startswith(b"HTTP/1.1 101 ")
    h.run_until(lambda: h.owner.messages)
    assert h.owner.messages == ["early"]
    h.client.sendall(masked(0x2, b"\x00\x01"))
    h.run_until(lambda: len(h.owner.messages) == 2)
    assert h.owner.messages[1] == b"\x00\x01" and h.conn.outstanding == 2


def test_refused_upgrade_gets_the_owners_answer(make: Callable[..., Harness]) -> None:
    h = make()
    h.client.sendall(UPGRADE)
    h.run_until(lambda: h.owner.upgrades)
    h.owner.upgrades[0][0].respond(Response.text(403))
    h.run_until(lambda: h.owner.closed)
    assert h.client.recv(4096).startswith(b"HTTP/1.1 403 Forbidden\r\n")
    assert h.owner.messages == [] and not h.conn.websocket


def opened(make: Callable[..., Harness], **settings: Any) -> Harness:
    h = make("accept", **settings)
    h.client.sendall(UPGRADE)
    assert h.read_head().startswith(b"HTTP/1.1 101 ")
    return h


def test_reply_and_clean_close(make: Callable[..., Harness]) -> None:
    h = opened(make)
    h.conn.send_message("hello")
    assert h.read(7) == b"\x81\x05hello"
    h.conn.close(1000, "bye")
    assert h.read(7) == b"\x88\x05" + struct.pack("!H", 1000) + b"bye"
    h.client.sendall(masked(0x8, struct.pack("!H", 1000)))
    h.run_until(lambda: h.owner.closed)
    assert h.conn.close_code == 1000 and h.stats.closes_by_code[1000] == 1


def test_backpressure_stops_reading_until_resumed(make: Callable[..., Harness]) -> None:
    h = opened(make)
    h.conn.pause_reading(True)
    h.client.sendall(masked(0x1, b"held"))
    for _ in range(10):
        h.loop.run_once(max_wait=0.01)
    assert h.owner.messages == [] and h.stats.paused_connections == 1
    h.conn.pause_reading(False)
    h.run_until(lambda: h.owner.messages == ["held"])
    assert h.stats.paused_connections == 0


def test_protocol_error_closes_only_after_earlier_messages_are_done(
        make: Callable[..., Harness]) -> None:
    h = opened(make)
    bad = bytes([0x83, 0x80]) + b"\x00\x00\x00\x00"  # reserved opcode 3
    h.client.sendall(masked(0x1, b"first") + bad)
    h.run_until(lambda: h.owner.messages == ["first"])
    for _ in range(5):
        h.loop.run_once(max_wait=0.01)
    h.client.settimeout(0.05)
    with pytest.raises(TimeoutError):
        h.client.recv(1)  # the close frame waits for the reply to "first"
    h.conn.send_message("reply")
    h.conn.messages_done(1)
    data = h.read(7 + 4 + len(b"protocol error"))
    assert data.startswith(b"\x81\x05reply\x88")
    assert struct.unpack("!H", data[9:11])[0] == 1002


def test_handshake_timeout_drops_a_silent_client(make: Callable[..., Harness]) -> None:
    h = make(handshake_timeout=0.05)
    h.run_until(lambda: h.owner.closed, seconds=2)
    assert h.stats.handshake_timeouts == 1
    assert h.client.recv(1) == b""


def test_keepalive_pings_and_drops_a_silent_peer(make: Callable[..., Harness]) -> None:
    h = opened(make, ping_interval=0.05, ping_timeout=0.05)
    assert h.read(6)[:2] == b"\x89\x04"  # a ping with a 4-byte payload
    h.run_until(lambda: h.owner.closed, seconds=2)
    assert h.conn.close_code == 1011


def test_end_of_stream_is_a_1006(make: Callable[..., Harness]) -> None:
    h = opened(make)
    h.client.shutdown(socket.SHUT_WR)
    h.run_until(lambda: h.owner.closed)
    assert h.conn.close_code == 1006


def test_a_failed_client_certificate_check_is_counted_and_reported(certs: Path) -> None:
    """TLS over the socketpair: the client presents no certificate to a server that requires
    one; the connection counts the failure by reason, tells its owner, and closes."""
    ctx = tls.make_server_context(certs / "server.pem", certs / "server.key",
                                  client_ca=certs / "ca.pem")
    server_sock, client_sock = socket.socketpair()
    owner = FakeOwner()
    stats = Stats()
    loop = EventLoop()
    conn = Connection(loop, tls.wrap(ctx, server_sock),
                      ServerProtocol(ProtocolLimits(), 1), ConnectionSettings(), owner, stats,
                      ("127.0.0.9", 4242))
    conn.start()

    def client() -> None:
        client_ctx = ssl.create_default_context(cafile=str(certs / "ca.pem"))
        client_ctx.maximum_version = ssl.TLSVersion.TLSv1_2  # fails inside the handshake
        client_sock.settimeout(5)
        with contextlib.suppress(OSError), \
                client_ctx.wrap_socket(client_sock, server_hostname="localhost"):
            pass

    thread = threading.Thread(target=client)
    thread.start()
    try:
        end = time.monotonic() + 5
        while not owner.closed and time.monotonic() < end:
            loop.run_once(max_wait=0.01)
    finally:
        thread.join(5)
        client_sock.close()
        loop.close()
    assert owner.tls_failures == ["no_certificate"] and owner.closed == [conn]
    assert stats.tls_handshake_failures == 1
    assert stats.tls_handshake_failures_by_reason["no_certificate"] == 1
    assert owner.upgrades == [] and owner.requests == []
