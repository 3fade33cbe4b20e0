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
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

from helpers import client_frame
from webscale import tls
from webscale import SendTimeout
from webscale.budget import MemoryBudget
from webscale.config import Config, ConnectionSettings
from webscale.connection import Connection, Transport
from webscale.handle import ConnectionHandle
from webscale.http import Request, Response
from webscale.loop import EventLoop
from webscale.protocol import EVENTS_PER_CALL, ProtocolLimits, ServerProtocol
from webscale.stats import Stats

KEY = b"dGhlIHNhbXBsZSBub25jZQ=="
UPGRADE = (b"GET /ingest?site=7 HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\n"
           b"Connection: Upgrade\r\nSec-WebSocket-Key: " + KEY + b"\r\n"
           b"Sec-WebSocket-Version: 13\r\nOrigin: https://app.example\r\n\r\n")


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
    def __init__(self, owner: FakeOwner, settings: ConnectionSettings,
                 budget: MemoryBudget | None = None) -> None:
        self.loop = EventLoop()
        self.server_sock, self.client = socket.socketpair()
        self.client.settimeout(5)
        self.server_sock.setblocking(False)
        self.owner = owner
        self.stats = Stats()
        self.budget = budget or MemoryBudget.unlimited()
        self.unread = b""
        self.conn = Connection(self.loop, self.server_sock,
                               ServerProtocol(ProtocolLimits(max_message_size=1000), 1,
                                              self.budget),
                               settings, owner, self.stats, ("127.0.0.9", 4242), self.budget)
        self.conn.start()

    def run_until(self, predicate: Callable[[], object], seconds: float = 5.0) -> None:
        end = time.monotonic() + seconds
        while not predicate():
            if time.monotonic() > end:
                raise AssertionError("timed out driving the loop")
            self.loop.run_once(max_wait=0.01)

    def read(self, count: int) -> bytes:
        """Exactly `count` bytes from the client's end (fewer at end of stream)."""
        data = self.unread
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
        self.unread = data[count:]
        return data[:count]

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

    def factory(decide: str = "later", budget: MemoryBudget | None = None,
                **settings: Any) -> Harness:
        harness = Harness(FakeOwner(decide), replace(Config().connection_settings(), **settings),
                          budget)
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
    h.client.sendall(UPGRADE + client_frame(0x1, b"early"))  # a frame sent before the 101
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
    h.client.sendall(client_frame(0x2, b"\x00\x01"))
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
    # Small socket buffers, so that what the client does not read stays queued in the server.
    h.server_sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)
    h.client.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    h.client.sendall(UPGRADE)
    assert h.read_head().startswith(b"HTTP/1.1 101 ")
    return h


def test_reply_and_clean_close(make: Callable[..., Harness]) -> None:
    h = opened(make)
    h.conn.send_message("hello")
    assert h.read(7) == b"\x81\x05hello"
    h.conn.close(1000, "bye")
    assert h.read(7) == b"\x88\x05" + struct.pack("!H", 1000) + b"bye"
    h.client.sendall(client_frame(0x8, struct.pack("!H", 1000)))
    h.run_until(lambda: h.owner.closed)
    assert h.conn.close_code == 1000 and h.stats.closes_by_code[1000] == 1


def test_backpressure_stops_reading_until_resumed(make: Callable[..., Harness]) -> None:
    h = opened(make)
    h.conn.pause_reading(True)
    h.client.sendall(client_frame(0x1, b"held"))
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
    h.client.sendall(client_frame(0x1, b"first") + bad)
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
                      ServerProtocol(ProtocolLimits(), 1), Config().connection_settings(), owner,
                      stats, ("127.0.0.9", 4242))
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
def read_frame(h: Harness) -> tuple[int, bytes]:
    """One unmasked server frame (opcode, payload), driving the loop meanwhile."""
    head = h.read(2)
    n = head[1] & 0x7F
    if n == 126:
        n = struct.unpack("!H", h.read(2))[0]
    elif n == 127:
        n = struct.unpack("!Q", h.read(8))[0]
    return head[0] & 0x0F, h.read(n)


def test_one_big_reply_to_a_client_that_reads_is_not_a_slow_reader(
        make: Callable[..., Harness]) -> None:
    # Autobahn 9.1.6: one 16 MiB echo queues far more than --outbound-limit-bytes at once.
    h = opened(make, outbound_limit_bytes=64 * 1024, slow_reader_timeout=0.1)
    h.conn.send_message(b"z" * (4 << 20))
    assert h.conn.drain_timer is not None and h.budget.used > 4_000_000
    started = time.monotonic()
    data = b""
    while len(data) < (4 << 20) + 10:
        data += h.read(min(64 * 1024, (4 << 20) + 10 - len(data)))
        time.sleep(0.005)
    assert time.monotonic() - started > 0.3  # several periods of --slow-reader-timeout
    assert data[10:] == b"z" * (4 << 20)
    assert not h.conn.closed and h.conn.close_code == 0
    assert h.conn.drain_timer is None and h.budget.used == 0


def test_a_client_that_stops_reading_gets_1008_and_then_a_close_frame(
        make: Callable[..., Harness]) -> None:
    h = opened(make, outbound_limit_bytes=64 * 1024, slow_reader_timeout=0.2)
    started = time.monotonic()
    for i in range(8):
        h.conn.send_message(bytes([65 + i]) * 100_000)
    queued = h.conn.out_bytes
    assert queued > 700_000 and h.budget.used == queued
    h.run_until(lambda: h.conn.close_code == 1008, seconds=3)
    assert time.monotonic() - started >= 0.2
    # Only the reply already on its way is kept; the rest is dropped, and given back.
    assert h.conn.out_bytes < 100_000 + 100 and h.budget.used == h.conn.out_bytes
    h.conn.send_message("dropped: the connection is closing")
    # A client that reads again at last gets the end of that reply, then the close frame.
    frames = []
    while True:
        opcode, payload = read_frame(h)
        frames.append((opcode, payload[:1], len(payload)))
        if opcode == 0x8:
            break
    assert frames[-1] == (0x8, b"\x03", 2 + len(b"slow reader"))
    assert all(opcode == 0x2 for opcode, _, _ in frames[:-1]) and len(frames) <= 3
    h.client.sendall(client_frame(0x8, struct.pack("!H", 1008)))
    h.run_until(lambda: h.owner.closed)
    assert h.stats.closes_by_code[1008] == 1 and h.budget.used == 0


def test_a_client_that_keeps_reading_slowly_is_kept(make: Callable[..., Harness]) -> None:
    h = opened(make, outbound_limit_bytes=32 * 1024, slow_reader_timeout=0.2)
    for _ in range(40):
        h.conn.send_message(b"r" * 50_000)
    received = 0
    end = time.monotonic() + 1.0  # five periods, each taking more than the limit
    while time.monotonic() < end:
        received += len(h.read(40_000))
        time.sleep(0.05)
    assert not h.conn.closed and h.conn.close_code == 0
    assert 300_000 < received < 40 * 50_000  # it was still behind at the end


def test_timed_send_waits_for_room_and_times_out(make: Callable[..., Harness]) -> None:
    h = opened(make, outbound_limit_bytes=64 * 1024)
    handle = ConnectionHandle(h.loop, h.conn, 1, None, high_water=64 * 1024)
    outcome: list[object] = []

    def producer() -> None:
        try:
            for _ in range(40):
                handle.send(b"p" * 10_000, timeout=0.3)
            outcome.append("sent all")
        except SendTimeout as exc:
            outcome.append(exc)

    thread = threading.Thread(target=producer)
    thread.start()
    h.run_until(lambda: outcome, seconds=5)
    thread.join()
    # Nobody read: the producer was held at the high-water mark, then told so.
    assert isinstance(outcome[0], SendTimeout)
    assert h.conn.out_bytes <= 64 * 1024 + 10_000 + 100
    assert not h.conn.closed


def test_timed_send_keeps_pace_with_a_reader(make: Callable[..., Harness]) -> None:
    h = opened(make, outbound_limit_bytes=64 * 1024)
    handle = ConnectionHandle(h.loop, h.conn, 1, None, high_water=64 * 1024)
    outcome: list[object] = []
    peak = 0

    def producer() -> None:
        for _ in range(100):
            handle.send(b"q" * 10_000, timeout=5)
        outcome.append("sent all")

    thread = threading.Thread(target=producer)
    thread.start()
    received = 0
    while received < 100 * 10_004:
        peak = max(peak, h.conn.out_bytes)
        received += len(h.read(min(20_000, 100 * 10_004 - received)))
    thread.join()
    assert outcome == ["sent all"]
    assert peak <= 64 * 1024 + 2 * 10_004  # the mark, plus what was on its way


def test_a_partial_message_is_held_while_the_budget_is_over(
        make: Callable[..., Harness]) -> None:
    budget = MemoryBudget(10_000)
    h = make("accept", budget=budget)
    h.client.sendall(UPGRADE)
    assert h.read_head().startswith(b"HTTP/1.1 101 ")
    unfinished = bytes([0x01, 0x80 | 100]) + b"\0\0\0\0" + b"a" * 100  # FIN clear
    h.client.sendall(unfinished)
    h.run_until(lambda: h.conn.proto.partial_bytes == 100 + 64)
    assert budget.used == 164
    budget.used += 20_000  # someone else's
    budget.went_over()
    h.client.sendall(bytes([0x80, 0x80 | 1]) + b"\0\0\0\0" + b"b")  # its last fragment
    for _ in range(10):
        h.loop.run_once(max_wait=0.01)
    assert h.owner.messages == [] and h.stats.paused_connections == 1 and h.conn in budget.held
    budget.used -= 20_000
    budget.recovered()
    h.run_until(lambda: h.owner.messages == ["a" * 100 + "b"])
    assert budget.used == 0 and h.stats.paused_connections == 0


def test_shed_drops_what_the_connection_holds_and_fails_it(make: Callable[..., Harness]) -> None:
    budget = MemoryBudget(1 << 30)
    h = make("accept", budget=budget)
    h.client.sendall(UPGRADE)
    assert h.read_head().startswith(b"HTTP/1.1 101 ")
    h.client.sendall(bytes([0x02, 0x80 | 126]) + struct.pack("!H", 500) + b"\0\0\0\0"
                     + b"x" * 500)
    h.run_until(lambda: h.conn.proto.partial_bytes == 564)
    h.conn.shed(1009)
    assert budget.used == 0
    assert read_frame(h) == (0x8, struct.pack("!H", 1009) + b"message too big")
    h.run_until(lambda: h.owner.closed)  # failed: closed without waiting for a reply
    assert h.stats.closes_by_code[1009] == 1


def test_a_read_of_many_frames_is_parsed_over_several_turns(make: Callable[..., Harness]) -> None:
    h = opened(make)
    h.client.sendall(client_frame(0x1, b"t") * 1000)
    turns = 0
    while len(h.owner.messages) < 1000 and turns < 200:
        h.loop.run_once(max_wait=0.01)
        turns += 1
    assert h.owner.messages == ["t"] * 1000
    assert turns >= 1000 // EVENTS_PER_CALL  # never more than EVENTS_PER_CALL frames a turn
    assert h.conn.reading_paused == 0 and h.stats.paused_connections == 0
