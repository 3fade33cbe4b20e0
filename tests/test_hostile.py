"""Hostile input over real sockets: every malformed byte gets the right answer, nobody else suffers.

Clients here are hand-made (a blocking socket, frames built byte by byte, an optional TLS layer over
memory BIOs) so that they can send what no library client would: reserved bits, bad close codes,
half a TLS record, a header that never ends. Every wait is bounded by a deadline in
WEBSCALE_TEST_UNITs, and every test asserts on what came back (close codes, HTTP statuses, /stats
counters, /proc memory), never on "it did not crash after a sleep".
"""

from __future__ import annotations

import os
import resource
import selectors
import socket
import ssl
import struct
import threading
import time
import zlib
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from helpers import (
    UNIT,
    ServerProcess,
    client_frame,
    client_ssl_context,
    deadline,
    start_server,
    wait_for,
)
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from payloads import telemetry_json

StartServer = Callable[..., ServerProcess]

UPGRADE = (b"GET /feed HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
           b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n")
UPGRADE_DEFLATE = UPGRADE[:-2] + (b"Sec-WebSocket-Extensions: permessage-deflate; "
                                  b"client_max_window_bits\r\nOrigin: http://127.0.0.1\r\n\r\n")
ECHO = ("--decode", "none", "--handler", "webscale.examples.echo:handle")
OP_CONT, OP_TEXT, OP_BINARY, OP_CLOSE, OP_PING, OP_PONG = 0x0, 0x1, 0x2, 0x8, 0x9, 0xA
# What a server may put in a close frame (RFC 6455 §7.4.1-2); 1011 would mean a bug of ours.
WIRE_CLOSE_CODES = {1000, 1001, 1002, 1003, 1007, 1008, 1009, 1010} | set(range(3000, 5000))


# -- a hand-made client -------------------------------------------------------------------------
def close_payload(code: int, reason: bytes = b"") -> bytes:
    return struct.pack("!H", code) + reason


class MemoryTls:
    """TLS over memory BIOs: we see and cut the raw records (half a record, then a reset)."""

    def __init__(self, sock: socket.socket, cafile: Path) -> None:
        self.sock = sock
        self.incoming = ssl.MemoryBIO()
        self.outgoing = ssl.MemoryBIO()
        self.obj = client_ssl_context(cafile).wrap_bio(self.incoming, self.outgoing,
                                                       server_hostname="localhost")

    def client_hello(self) -> bytes:
        try:
            self.obj.do_handshake()
        except ssl.SSLWantReadError:
            pass
        return self.outgoing.read()

    def handshake(self) -> None:
        while True:
            try:
                self.obj.do_handshake()
                self.sock.sendall(self.outgoing.read())
                return
            except ssl.SSLWantReadError:
                self.sock.sendall(self.outgoing.read())
                data = self.sock.recv(65536)
                assert data, "the server closed during the TLS handshake"
                self.incoming.write(data)

    def records(self, plaintext: bytes) -> bytes:
        self.obj.write(plaintext)
        return self.outgoing.read()

    def plaintext(self, data: bytes) -> bytes:
        self.incoming.write(data)
        out = b""
        while True:
            try:
                out += self.obj.read(65536)
            except (ssl.SSLWantReadError, ssl.SSLZeroReturnError):
                return out


class RawClient:
    """A WebSocket client on a blocking socket that sends whatever bytes it is given."""

    def __init__(self, server: ServerProcess, *, timeout: float = 5.0) -> None:
        self.sock = socket.create_connection((server.host, server.port), timeout=timeout * UNIT)
        self.tls: MemoryTls | None = None
        if server.tls:
            assert server.cafile is not None
            self.tls = MemoryTls(self.sock, server.cafile)
            self.tls.handshake()
        self.buffer = b""
        self.eof = False
        self.inflater: zlib._Decompress | None = None  # set when permessage-deflate is agreed

    def send(self, data: bytes) -> None:
        self.sock.sendall(self.tls.records(data) if self.tls else data)

    def _fill(self) -> bool:
        """Read more into the buffer; False at end of stream (FIN, RST or TLS close)."""
        while True:
            try:
                data = self.sock.recv(65536)
            except ConnectionResetError:
                data = b""
            if not data:
                self.eof = True
                return False
            if self.tls is None:
                self.buffer += data
                return True
            plain = self.tls.plaintext(data)
            if plain:
                self.buffer += plain
                return True

    def http_response(self) -> bytes:
        """The response head (status line and headers), or whatever came before EOF."""
        while b"\r\n\r\n" not in self.buffer:
            if not self._fill():
                return self.buffer
        head, _, self.buffer = self.buffer.partition(b"\r\n\r\n")
        return head + b"\r\n\r\n"

    def read_to_eof(self) -> bytes:
        """Everything until the server closes (an HTTP body, say)."""
        while self._fill():
            pass
        rest, self.buffer = self.buffer, b""
        return rest

    def upgrade(self, request: bytes = UPGRADE) -> None:
        self.send(request)
        head = self.http_response()
        assert head.startswith(b"HTTP/1.1 101 "), head
        if b"permessage-deflate" in head.lower():
            self.inflater = zlib.decompressobj(wbits=-15)

    def recv_frame(self) -> tuple[int, bytes] | None:
        """The next server frame (opcode, payload); None at end of stream."""
        while True:
            frame = _parse_server_frame(self.buffer, self.inflater is not None)
            if frame is not None:
                opcode, rsv1, payload, used = frame
                self.buffer = self.buffer[used:]
                if rsv1:  # our frames are never fragmented by the server: one frame, one message
                    assert self.inflater is not None
                    payload = self.inflater.decompress(payload + b"\x00\x00\xff\xff")
                return opcode, payload
            if not self._fill():
                assert not self.buffer, f"stream ended inside a frame: {self.buffer[:40]!r}"
                return None

    def recv_message(self) -> tuple[int, bytes]:
        """The next data frame, answering pings on the way; fails on close or EOF."""
        while True:
            frame = self.recv_frame()
            assert frame is not None, "the server closed a connection that should stay open"
            opcode, payload = frame
            if opcode == OP_PING:
                self.send(client_frame(OP_PONG, payload))
            elif opcode != OP_PONG:
                assert opcode != OP_CLOSE, f"unexpected close {payload[:2].hex()} {payload[2:]!r}"
                return opcode, payload

    def frames_until_eof(self) -> list[tuple[int, bytes]]:
        frames = []
        while (frame := self.recv_frame()) is not None:
            frames.append(frame)
        return frames

    def close_code(self) -> int | None:
        """Read until the server's close frame, answer it, read to the end of stream; the code."""
        while True:
            frame = self.recv_frame()
            assert frame is not None, "end of stream without a close frame"
            opcode, payload = frame
            if opcode == OP_CLOSE:
                try:  # complete the close handshake as a client does (RFC 6455 §5.5.1)
                    self.send(client_frame(OP_CLOSE, payload[:2]))
                except OSError:
                    pass  # a failed connection may already be gone
                rest = self.frames_until_eof()
                assert rest == [], f"frames after the close frame: {rest}"
                return struct.unpack("!H", payload[:2])[0] if payload else None

    def close(self) -> None:
        self.sock.close()


def _parse_server_frame(buf: bytes, deflate: bool) -> tuple[int, bool, bytes, int] | None:
    if len(buf) < 2:
        return None
    allowed = 0x40 if deflate else 0
    assert buf[0] & 0x70 & ~allowed == 0, f"server frame with RSV bits: {buf[:2].hex()}"
    assert buf[1] & 0x80 == 0, "server frames must not be masked (RFC 6455 §5.1)"
    n, used = buf[1] & 0x7F, 2
    if n == 126:
        if len(buf) < 4:
            return None
        n, used = struct.unpack("!H", buf[2:4])[0], 4
    elif n == 127:
        if len(buf) < 10:
            return None
        n, used = struct.unpack("!Q", buf[2:10])[0], 10
    if len(buf) < used + n:
        return None
    return buf[0] & 0x0F, bool(buf[0] & 0x40), buf[used:used + n], used + n


def echo_round_trip(client: RawClient, text: str) -> None:
    client.send(client_frame(OP_TEXT, text.encode()))
    assert client.recv_message() == (OP_TEXT, text.encode())


def rss_bytes(server: ServerProcess, field: str = "VmRSS") -> int:
    with open(f"/proc/{server.proc.pid}/status") as status:
        for line in status:
            if line.startswith(field + ":"):
                return int(line.split()[1]) * 1024
    raise AssertionError(f"no {field} in /proc/{server.proc.pid}/status")


def assert_quiet(server: ServerProcess) -> None:
    """Alive, and nothing at ERROR or with a traceback in its log (default level: info)."""
    assert server.proc.poll() is None, server.stderr()
    log = server.stderr()
    assert "Traceback" not in log and " ERROR " not in log, log


# -- servers shared by the cheap tests ----------------------------------------------------------
@pytest.fixture(scope="module")
def echo_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    """Plain ws:// echo with deflate on and a 64 KiB message limit, shared by this module."""
    server = start_server([*ECHO, "--no-tls", "--compression", "deflate",
                           "--max-message-size", "65536"],
                          certs=None, tmp_path=tmp_path_factory.mktemp("echo"))
    yield server
    server.stop()


@pytest.fixture
def bystander(echo_server: ServerProcess) -> Iterator[RawClient]:
    client = RawClient(echo_server)
    client.upgrade()
    yield client
    client.close()


# -- the right close code for each violation ----------------------------------------------------
def _fragments(total: int, size: int) -> bytes:
    parts = [client_frame(OP_TEXT if i == 0 else OP_CONT, b"a" * size, fin=False)
             for i in range(total // size)]
    return b"".join(parts) + client_frame(OP_CONT, b"", fin=True)


VIOLATIONS = {
    # RFC 6455 §8.1: invalid UTF-8 in a text message fails with 1007, fragmented or not.
    "invalid utf-8": (client_frame(OP_TEXT, b"\xce\xba\xe1\xbd\xb9\xed\xa0\x80"), 1007),
    "invalid utf-8 across fragments": (client_frame(OP_TEXT, b"ok \xf0\x9f", fin=False)
                                       + client_frame(OP_CONT, b"\x98\xff"), 1007),
    "invalid utf-8 in close reason": (client_frame(OP_CLOSE, close_payload(1000, b"\xff")), 1007),
    # §5.2: reserved opcodes and RSV bits without a negotiated extension fail with 1002.
    "reserved data opcode 3": (client_frame(0x3, b"x"), 1002),
    "reserved control opcode 0xB": (client_frame(0xB), 1002),
    "rsv1 without deflate": (client_frame(OP_TEXT, b"x", rsv=4), 1002),
    "rsv2": (client_frame(OP_BINARY, b"x", rsv=2), 1002),
    "rsv3": (client_frame(OP_PING, b"", rsv=1), 1002),
    "continuation with nothing to continue": (client_frame(OP_CONT, b"x"), 1002),
    "new message inside a fragmented one": (client_frame(OP_TEXT, b"a", fin=False)
                                            + client_frame(OP_TEXT, b"b"), 1002),
    "fragmented ping": (client_frame(OP_PING, b"x", fin=False), 1002),  # §5.5
    "ping payload over 125": (client_frame(OP_PING, b"x" * 126), 1002),
    "unmasked client frame": (client_frame(OP_TEXT, b"x", mask=None), 1002),  # §5.1
    # §7.4: close codes a peer must not send are answered 1002.
    "close code 999": (client_frame(OP_CLOSE, close_payload(999)), 1002),
    "close code 1004": (client_frame(OP_CLOSE, close_payload(1004)), 1002),
    "close code 1005": (client_frame(OP_CLOSE, close_payload(1005)), 1002),
    "close code 1006": (client_frame(OP_CLOSE, close_payload(1006)), 1002),
    "close code 1015": (client_frame(OP_CLOSE, close_payload(1015)), 1002),
    "close code 2999": (client_frame(OP_CLOSE, close_payload(2999)), 1002),
    "close code 5000": (client_frame(OP_CLOSE, close_payload(5000)), 1002),
    "one-byte close payload": (client_frame(OP_CLOSE, b"\x03"), 1002),
    # §7.4.1: too big to process is 1009 (the server's limit here is 64 KiB).
    "one frame over the limit": (client_frame(OP_BINARY, b"\0" * 70_000), 1009),
    "fragments adding up over the limit": (_fragments(80 * 1024, 8 * 1024), 1009),
    # Valid close codes are echoed (§5.5.1).
    "close 1000 echoed": (client_frame(OP_CLOSE, close_payload(1000, b"bye")), 1000),
    "close 3000 echoed": (client_frame(OP_CLOSE, close_payload(3000)), 3000),
    "close 4999 echoed": (client_frame(OP_CLOSE, close_payload(4999)), 4999),
}


@pytest.mark.parametrize("name", list(VIOLATIONS))
def test_violation_gets_its_close_code(echo_server: ServerProcess, bystander: RawClient,
                                       name: str) -> None:
    data, expected = VIOLATIONS[name]
    before = echo_server.stats()["closes_by_code"].get(str(expected), 0)
    client = RawClient(echo_server)
    client.upgrade()
    echo_round_trip(client, "before")
    client.send(data)
    assert client.close_code() == expected  # then end of stream: the server dropped TCP
    client.close()
    assert wait_for(lambda: echo_server.stats()["closes_by_code"].get(str(expected), 0)
                    == before + 1, what=f"closes_by_code[{expected}] to count it")
    echo_round_trip(bystander, name)


def test_rejections_are_logged_with_the_remote_address(server_factory: StartServer) -> None:
    # Its own server: the shared one's log is rate-limited by the other tests' rejections.
    echo_server = server_factory(*ECHO, "--no-tls", "--max-message-size", "65536")
    client = RawClient(echo_server)
    client.upgrade()
    port = client.sock.getsockname()[1]
    client.send(client_frame(OP_BINARY, b"\0" * 70_000))
    assert client.close_code() == 1009
    client.close()
    refused = RawClient(echo_server)
    refused.send(UPGRADE.replace(b"HTTP/1.1", b"HTTP/1.0"))
    assert refused.http_response().startswith(b"HTTP/1.1 400 ")
    refused_port = refused.sock.getsockname()[1]
    refused.close()
    wait_for(lambda: f"127.0.0.1:{port} with 1009" in echo_server.stderr()
             and f"127.0.0.1:{refused_port} with 400" in echo_server.stderr(),
             what="both rejections in the log, with the client's address")


def test_empty_close_is_answered_and_dropped(echo_server: ServerProcess) -> None:
    client = RawClient(echo_server)
    client.upgrade()
    client.send(client_frame(OP_CLOSE))
    assert client.close_code() in (None, 1000)
    client.close()


# -- hypothesis: random and mutated frames, mutated upgrade requests ----------------------------
_any_frame = st.builds(
    client_frame,
    st.sampled_from([OP_CONT, OP_TEXT, OP_BINARY, 0x3, 0x7, OP_CLOSE, OP_PING, OP_PONG, 0xB]),
    st.one_of(st.binary(max_size=300), st.text(max_size=100).map(str.encode),
              st.integers(0, 5100).map(lambda code: close_payload(code))),
    fin=st.booleans(), rsv=st.sampled_from([0, 0, 0, 1, 2, 4, 7]))


@st.composite
def _frame_stream(draw: st.DrawFn) -> bytes:
    """Frames, some valid and some not, then mutated: bytes replaced, cut out or inserted."""
    data = bytearray(b"".join(draw(st.lists(_any_frame, min_size=1, max_size=8))))
    for _ in range(draw(st.integers(0, 4))):
        at = draw(st.integers(0, len(data)))
        data[at:at + draw(st.integers(0, 3))] = draw(st.binary(max_size=4))
    return bytes(data)


_frames_or_noise = st.one_of(_frame_stream(), st.binary(min_size=1, max_size=2048))


@st.composite
def _mutated_request(draw: st.DrawFn) -> bytes:
    data = bytearray(draw(st.sampled_from([UPGRADE, UPGRADE_DEFLATE])))
    for _ in range(draw(st.integers(1, 6))):
        at = draw(st.integers(0, len(data) - 1))
        kind = draw(st.sampled_from(["replace", "delete", "insert", "repeat", "header"]))
        if kind == "replace":
            data[at] = draw(st.integers(0, 255))
        elif kind == "delete":
            del data[at:at + draw(st.integers(1, 24))]
        elif kind == "insert":
            data[at:at] = draw(st.binary(min_size=1, max_size=32))
        elif kind == "repeat":
            end = min(len(data), at + draw(st.integers(1, 80)))
            data[end:end] = data[at:end] * draw(st.integers(1, 3))
        else:
            name = draw(st.sampled_from([b"Upgrade", b"Connection", b"Sec-WebSocket-Key",
                                         b"Sec-WebSocket-Version", b"Sec-WebSocket-Extensions",
                                         b"Host", b"Content-Length", b"Transfer-Encoding"]))
            value = draw(st.binary(max_size=40)).replace(b"\r", b"").replace(b"\n", b"")
            head_end = data.find(b"\r\n") + 2 if b"\r\n" in data else len(data)
            data[head_end:head_end] = name + b": " + value + b"\r\n"
        if not data:
            data = bytearray(b"G")
    return bytes(data)


_FUZZ = settings(max_examples=400, deadline=None,
                 suppress_health_check=[HealthCheck.function_scoped_fixture,
                                        HealthCheck.too_slow])


def _warm_up(server: ServerProcess, bystander: RawClient) -> int:
    """Exercise every path once so that the baseline includes the allocator's steady state."""
    for i in range(20):
        client = RawClient(server)
        client.upgrade(UPGRADE_DEFLATE if i % 2 else UPGRADE)
        echo_round_trip(client, "x" * 10_000)
        client.send(client_frame(OP_BINARY, b"\0" * 70_000))
        client.close_code()
        client.close()
        echo_round_trip(bystander, f"warm-up {i}")
    return rss_bytes(server)


def test_fuzzed_frames(echo_server: ServerProcess, bystander: RawClient) -> None:
    baseline = _warm_up(echo_server, bystander)
    examples = 0

    @_FUZZ
    @given(data=_frames_or_noise)
    def send_frames(data: bytes) -> None:
        nonlocal examples
        examples += 1
        client = RawClient(echo_server)
        client.upgrade()
        client.send(data)
        client.sock.shutdown(socket.SHUT_WR)  # end of stream: the server must finish it now
        for opcode, payload in client.frames_until_eof():
            assert opcode in (OP_TEXT, OP_BINARY, OP_CLOSE, OP_PONG), opcode
            if opcode == OP_CLOSE and payload:
                code = struct.unpack("!H", payload[:2])[0]
                assert code in WIRE_CLOSE_CODES and code != 1011, code
        client.close()
        echo_round_trip(bystander, f"still here after {examples}")

    send_frames()
    assert examples >= 300
    assert_quiet(echo_server)
    # Memory returns near its baseline: nothing of 200 dead connections is kept.
    assert wait_for(lambda: rss_bytes(echo_server) < baseline + 8 * 2**20,
                    what=f"RSS back near {baseline >> 20} MiB (now {rss_bytes(echo_server) >> 20})")
    assert wait_for(lambda: echo_server.stats()["connections_open"] == 1,  # the bystander
                    what="only the bystander left open")


_STATUSES = {b"101", b"400", b"404", b"405", b"426", b"431"}


def test_fuzzed_upgrade_requests(echo_server: ServerProcess, bystander: RawClient) -> None:
    baseline = _warm_up(echo_server, bystander)
    seen: set[bytes] = set()

    @_FUZZ
    @given(request=_mutated_request())
    def send_request(request: bytes) -> None:
        client = RawClient(echo_server)
        try:
            client.send(request)
            client.sock.shutdown(socket.SHUT_WR)
        except (BrokenPipeError, ConnectionResetError):
            pass  # the server already answered and closed
        head = client.http_response()
        if head:  # nothing at all is right when the head never completed before our EOF
            assert head.startswith(b"HTTP/1.1 "), head[:80]
            status = head[9:12]
            assert status in _STATUSES, head[:200]
            seen.add(status)
            if status == b"101":
                client.frames_until_eof()  # the server closes after our EOF
        client.read_to_eof()
        client.close()
        echo_round_trip(bystander, "still here")

    send_request()
    assert {b"101", b"400"} <= seen, seen
    assert_quiet(echo_server)
    assert wait_for(lambda: rss_bytes(echo_server) < baseline + 8 * 2**20,
                    what=f"RSS back near {baseline >> 20} MiB")


# -- HTTP heads too large -----------------------------------------------------------------------
def _head_response(server: ServerProcess, request: bytes) -> bytes:
    client = RawClient(server)
    client.send(request)
    head = client.http_response()
    client.read_to_eof()  # the body, then the server closes
    client.close()
    return head


def test_oversized_header_gets_431(echo_server: ServerProcess) -> None:
    big = UPGRADE[:-2] + b"X-Padding: " + b"a" * 20_000 + b"\r\n\r\n"
    assert _head_response(echo_server, big).startswith(b"HTTP/1.1 431 ")


def test_head_that_never_ends_gets_431_at_the_limit(echo_server: ServerProcess) -> None:
    # 20 KiB of headers and no blank line: answered once past 16 KiB, without waiting for more.
    endless = UPGRADE[:-2] + b"".join(b"X-H%05d: %s\r\n" % (i, b"v" * 90) for i in range(200))
    assert _head_response(echo_server, endless).startswith(b"HTTP/1.1 431 ")


def test_too_many_headers_get_431(echo_server: ServerProcess) -> None:
    many = UPGRADE[:-2] + b"".join(b"X-H%d: v\r\n" % i for i in range(101)) + b"\r\n"
    assert _head_response(echo_server, many).startswith(b"HTTP/1.1 431 ")
    hundred = UPGRADE[:-2] + b"".join(b"X-H%d: v\r\n" % i for i in range(90)) + b"\r\n"
    client = RawClient(echo_server)
    client.upgrade(hundred)  # within the limit: accepted
    client.close()


# -- slowloris ----------------------------------------------------------------------------------
def _raise_open_files(needed: int) -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < needed:
        if hard != resource.RLIM_INFINITY and hard < needed:
            pytest.skip(f"needs {needed} open files, the hard limit is {hard}")
        resource.setrlimit(resource.RLIMIT_NOFILE, (needed, hard))


def _trickle(sock: socket.socket, data: bytes, stop: threading.Event) -> None:
    """Send one byte a second until the server closes the connection (or the test ends)."""
    for byte in data:
        try:
            sock.send(bytes([byte]))
        except OSError:
            return
        if stop.wait(1.0):
            return


def _wait_all_closed(socks: list[socket.socket], units: float) -> int:
    """Wait until the server has closed every socket; the number still open at the deadline."""
    sel = selectors.DefaultSelector()
    for sock in socks:
        sock.setblocking(False)
        sel.register(sock, selectors.EVENT_READ)
    end = deadline(units)
    open_now = len(socks)
    while open_now and time.monotonic() < end:
        for key, _ in sel.select(timeout=0.1):
            try:
                data = key.fileobj.recv(4096)  # type: ignore[union-attr]
            except BlockingIOError:
                continue
            except OSError:
                data = b""
            if not data:
                sel.unregister(key.fileobj)
                open_now -= 1
    sel.close()
    return open_now


def test_slowloris_is_cut_off_while_a_real_client_is_served(server_factory: StartServer) -> None:
    import asyncio

    from websockets.asyncio.client import connect

    silent_count, timeout = 2000, 3.0 * UNIT
    _raise_open_files(silent_count + 512)
    server = server_factory(*ECHO, "--handshake-timeout", str(timeout))
    assert server.cafile is not None
    stop = threading.Event()
    silent = [socket.create_connection((server.host, server.port)) for _ in range(silent_count)]
    opened_at = time.monotonic()
    # Three trickle the TLS ClientHello, three the upgrade request after a good TLS handshake.
    hello_socks, request_socks, threads = [], [], []
    for _ in range(3):
        sock = socket.create_connection((server.host, server.port))
        hello = MemoryTls(sock, server.cafile).client_hello()
        hello_socks.append(sock)
        threads.append(threading.Thread(target=_trickle, args=(sock, hello, stop)))
    for _ in range(3):
        sock = socket.create_connection((server.host, server.port))
        tls = MemoryTls(sock, server.cafile)
        tls.handshake()
        request_socks.append(sock)
        records = b"".join(tls.records(bytes([b])) for b in UPGRADE)  # one record per byte
        threads.append(threading.Thread(target=_trickle, args=(sock, records, stop)))
    for thread in threads:
        thread.start()

    async def real_client() -> float:
        ctx = client_ssl_context(server.cafile)  # type: ignore[arg-type]
        worst = 0.0
        async with connect(server.url, ssl=ctx, open_timeout=5 * UNIT) as ws:
            # Well past the handshake timeout: the upgraded connection is not cut with the rest.
            while time.monotonic() - opened_at < timeout + 1.5 * UNIT:
                started = time.monotonic()
                await ws.send(f"ping {started}")
                assert await asyncio.wait_for(ws.recv(), 5 * UNIT) == f"ping {started}"
                worst = max(worst, time.monotonic() - started)
                await asyncio.sleep(0.05)
        return worst

    try:
        worst = asyncio.run(real_client())
        still_open = _wait_all_closed(silent + hello_socks + request_socks, timeout + 5)
    finally:
        stop.set()
        for thread in threads:
            thread.join()
        for sock in silent + hello_socks + request_socks:
            sock.close()
    assert still_open == 0
    assert worst < 0.5 * UNIT, f"an echo took {worst * 1000:.0f} ms during the slowloris"
    stats = server.stats()
    assert stats["handshake_timeouts"] == silent_count + 6
    assert stats["closes_by_code"] == {"1000": 1}
    assert_quiet(server)


# -- --max-connections --------------------------------------------------------------------------
def test_max_connections_answers_503_and_recovers(server_factory: StartServer) -> None:
    server = server_factory(*ECHO, "--no-tls", "--max-connections", "5")
    clients = []
    for _ in range(5):
        client = RawClient(server)
        client.upgrade()
        clients.append(client)
    for _ in range(3):
        refused = RawClient(server)
        refused.send(UPGRADE)
        assert refused.http_response().startswith(b"HTTP/1.1 503 ")
        refused.read_to_eof()
        refused.close()
    for i, client in enumerate(clients):  # the five are untouched
        echo_round_trip(client, f"still open {i}")
    clients[0].send(client_frame(OP_CLOSE, close_payload(1000)))
    assert clients[0].close_code() == 1000
    clients[0].close()
    # One WebSocket gone leaves room for one more (/stats is on the admin listener, not counted).
    assert wait_for(lambda: server.stats()["connections_open"] == 4)
    again = RawClient(server)
    again.upgrade()
    echo_round_trip(again, "back in")
    stats = server.stats()
    assert stats["connections_rejected"] == 3
    assert stats["connections_rejected_by_reason"]["max_connections"] == 3
    assert server.proc.poll() is None
    for client in [again, *clients[1:]]:
        client.close()


# -- a client that never reads ------------------------------------------------------------------
def _never_reading_client(server: ServerProcess) -> socket.socket:
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)  # and never read: TCP fills up
    sock.settimeout(5 * UNIT)
    sock.connect((server.host, server.port))
    sock.sendall(UPGRADE + client_frame(OP_TEXT, b"send me everything"))
    return sock


def test_a_flood_to_a_client_that_never_reads_is_cut_by_the_memory_budget(
        server_factory: StartServer) -> None:
    # The handler sends 64 MiB without waiting; past the 16 MiB budget the client is closed.
    server = server_factory("--decode", "none", "--handler", "server_handlers:flood", "--no-tls",
                            "--max-buffered-bytes", "16MiB")
    warm = RawClient(server)
    warm.upgrade()
    warm.close()
    wait_for(lambda: server.stats()["connections_open"] == 0)
    baseline = rss_bytes(server)
    sock = _never_reading_client(server)
    try:
        stats = wait_for(lambda: (s := server.stats())["closes_by_code"].get("1008") == 1 and s,
                         units=10, what="the flooded client to be closed")
        assert stats["memory_sheds"] == 1
        assert stats["bytes_out"] < 8 * 2**20
        peak = rss_bytes(server, "VmHWM")
        assert peak - baseline < (16 + 24) * 2**20, f"RSS peaked {(peak - baseline) >> 20} MiB"
        assert wait_for(lambda: server.stats()["buffered_bytes"] == 0,
                        what="everything it held given back")
        try:
            while sock.recv(65536):
                pass
        except ConnectionResetError:
            pass
    finally:
        sock.close()
    assert_quiet(server)


def _frames_until_close(sock: socket.socket) -> list[tuple[int, bytes]]:
    """Read the 101 and every frame up to the server's close frame."""
    data = b""
    while b"\r\n\r\n" not in data:
        data += sock.recv(65536)
    data = data.partition(b"\r\n\r\n")[2]
    frames: list[tuple[int, bytes]] = []
    while not frames or frames[-1][0] != OP_CLOSE:
        frame = _parse_server_frame(data, False)
        if frame is None:
            chunk = sock.recv(1 << 20)
            assert chunk, f"end of stream after {len(frames)} frames, no close frame"
            data += chunk
            continue
        opcode, _, payload, used = frame
        frames.append((opcode, payload))
        data = data[used:]
    return frames


def test_a_slow_reader_is_closed_with_a_close_frame(server_factory: StartServer) -> None:
    # More than --outbound-limit-bytes queued and nothing taken for --slow-reader-timeout: 1008,
    # the queued replies dropped but the one on its way, then the close frame.
    server = server_factory("--decode", "none", "--handler", "server_handlers:flood", "--no-tls",
                            "--slow-reader-timeout", str(UNIT))
    sock = _never_reading_client(server)
    try:
        stats = wait_for(lambda: (s := server.stats())["closes_by_code"].get("1008") == 1 and s,
                         units=5, what="the slow reader to be closed")
        assert stats["memory_sheds"] == 0
        assert wait_for(lambda: server.stats()["buffered_bytes"] < 2**20,
                        what="the queued replies dropped")
        frames = _frames_until_close(sock)  # reading at last
        assert frames[-1] == (OP_CLOSE, close_payload(1008, b"slow reader"))
        assert {opcode for opcode, _ in frames[:-1]} == {OP_BINARY}
        assert sum(len(payload) for _, payload in frames) < 16 * 2**20
        sock.sendall(client_frame(OP_CLOSE, close_payload(1008)))
        assert sock.recv(65536) == b""  # the server closes once we answered
    finally:
        sock.close()
    assert_quiet(server)


def test_a_handler_sending_with_a_timeout_waits_at_the_high_water_mark(
        server_factory: StartServer) -> None:
    server = server_factory("--decode", "none", "--handler", "server_handlers:flood_timed",
                            "--no-tls")
    sock = _never_reading_client(server)
    try:
        wait_for(lambda: server.stats()["messages_received"] == 1)
        peak = 0
        end = deadline(0.8)  # the handler's timeout is one second
        while time.monotonic() < end:
            peak = max(peak, server.stats()["buffered_bytes"])
            time.sleep(0.02)
        # The default --outbound-limit-bytes (1 MiB), plus one reply (64 KiB and its header).
        assert 0 < peak <= 2**20 + 65536 + 14, peak
        stats = wait_for(lambda: (s := server.stats())["handler_errors"] == 0
                         and s["messages_handled"] == 1 and s, what="the handler to give up")
        assert stats["closes_by_code"] == {}  # the server closed nobody
        frames = _frames_until_close(sock)
        assert frames[-1] == (OP_CLOSE, close_payload(4408, b"you stopped reading"))
    finally:
        sock.close()
    assert_quiet(server)


# -- invalid JSON -------------------------------------------------------------------------------
@pytest.mark.parametrize("policy", ["keep", "close"])
def test_invalid_json_is_counted(server_factory: StartServer, policy: str) -> None:
    server = server_factory("--no-tls", "--invalid-json", policy)
    client = RawClient(server)
    client.upgrade()
    for bad in (b"{not json", b"[1, 2]", b'{"client_id": "x"}'):
        client.send(client_frame(OP_TEXT, bad))
        if policy == "close":
            assert client.close_code() == 1007
            break
    else:
        client.send(client_frame(OP_TEXT, telemetry_json(1, 1).encode()))
        stats = wait_for(lambda: (s := server.stats())["messages_decoded"] == 1 and s)
        assert stats["decode_errors"] == 3
        client.send(client_frame(OP_PING, b"alive"))
        assert client.recv_frame() == (OP_PONG, b"alive")  # kept open
    client.close()
    if policy == "close":
        stats = wait_for(lambda: (s := server.stats())["closes_by_code"].get("1007") == 1 and s)
        assert stats["decode_errors"] == 1
    assert_quiet(server)


# -- abrupt disconnects -------------------------------------------------------------------------
def _reset(sock: socket.socket) -> None:
    """Close with RST instead of FIN (SO_LINGER 0), as a crashed or cut-off client does."""
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    sock.close()


def test_abrupt_disconnects_leave_no_traceback(server_factory: StartServer) -> None:
    server = server_factory(*ECHO)
    assert server.cafile is not None
    frame = client_frame(OP_TEXT, b"y" * 3000)
    upgraded = 0
    for cut in (_reset, socket.socket.close):
        # Mid-frame: half a WebSocket frame in whole TLS records.
        client = RawClient(server)
        client.upgrade()
        client.send(frame[:1500])
        cut(client.sock)
        # Mid-TLS-record: a record split, its first half sent.
        client = RawClient(server)
        client.upgrade()
        assert client.tls is not None
        records = client.tls.records(frame)
        client.sock.sendall(records[:len(records) // 2])
        cut(client.sock)
        # Mid-frame header, right after the upgrade.
        client = RawClient(server)
        client.upgrade()
        client.send(frame[:1])
        cut(client.sock)
        upgraded += 3
        # Mid-TLS-handshake: half a ClientHello; and mid-HTTP: half the upgrade request.
        sock = socket.create_connection((server.host, server.port))
        hello = MemoryTls(sock, server.cafile).client_hello()
        sock.sendall(hello[:len(hello) // 2])
        cut(sock)
        client = RawClient(server)
        client.send(UPGRADE[:40])
        cut(client.sock)
    stats = wait_for(lambda: (s := server.stats())["connections_open"] == 0 and s,
                     what="every cut connection to be dropped")
    assert stats["closes_by_code"] == {"1006": upgraded}
    assert stats["messages_received"] == 0
    assert stats["tls_handshake_failures"] >= 2
    # And the server still serves.
    client = RawClient(server)
    client.upgrade()
    echo_round_trip(client, "after the cuts")
    client.close()
    assert_quiet(server)


# -- the upgrade, parsed strictly -----------------------------------------------------------------
_STRICT = {
    # A body read as WebSocket frames answered this ping with a pong before (issue 12).
    "Content-Length with a ping for a body": UPGRADE[:-2] + b"Content-Length: 6\r\n\r\n"
    + client_frame(OP_PING, b"")[:6],
    "Transfer-Encoding and Content-Length": UPGRADE[:-2]
    + b"Transfer-Encoding: chunked\r\nContent-Length: 5\r\n\r\n",
    "HTTP/1.0": UPGRADE.replace(b"HTTP/1.1", b"HTTP/1.0"),
    "key that is not base64": UPGRADE.replace(b"dGhlIHNhbXBsZSBub25jZQ==", b"not-a-key!"),
    "obs-fold": UPGRADE[:-2] + b"X-Folded: a\r\n b\r\n\r\n",
    "bare LF": UPGRADE.replace(b"\r\n", b"\n"),
    "absolute-form target": UPGRADE.replace(b"GET /feed", b"GET http://127.0.0.1/feed"),
}


@pytest.mark.parametrize("name", list(_STRICT))
def test_improper_upgrade_is_refused_with_400(echo_server: ServerProcess, name: str) -> None:
    client = RawClient(echo_server)
    client.send(_STRICT[name])
    head = client.http_response()
    assert head.startswith(b"HTTP/1.1 400 "), head
    rest = client.read_to_eof()
    assert b"\x8a" not in rest  # no pong: the body was never read as frames
    client.close()


# -- deflate bombs --------------------------------------------------------------------------------
def loop_cpu_seconds(server: ServerProcess) -> float:
    """CPU time of the server's main thread (the loop), from /proc."""
    pid = server.proc.pid
    with open(f"/proc/{pid}/task/{pid}/stat") as stat:
        fields = stat.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _bomb(size: int) -> bytes:
    compressor = zlib.compressobj(zlib.Z_DEFAULT_COMPRESSION, zlib.DEFLATED, -15)
    chunk = b"\0" * (1 << 20)
    out = [compressor.compress(chunk) for _ in range(size >> 20)]
    return b"".join(out) + compressor.flush(zlib.Z_SYNC_FLUSH)[:-4]


def test_deflate_bombs_cost_the_loop_little(server_factory: StartServer) -> None:
    server = server_factory(*ECHO, "--compression", "deflate")
    bomb = client_frame(OP_BINARY, _bomb(1 << 30), rsv=4, mask=None)  # 1 GiB in ~1 MB
    bomb = bomb[:1] + bytes([bomb[1] | 0x80]) + bomb[2:10] + b"\0\0\0\0" + bomb[10:]
    clients = []
    for _ in range(20):
        client = RawClient(server)
        client.upgrade(UPGRADE_DEFLATE)
        clients.append(client)
    bystander = RawClient(server)
    bystander.upgrade()
    echo_round_trip(bystander, "before")
    before = loop_cpu_seconds(server)
    for client in clients:
        try:
            client.send(bomb)
        except OSError:
            pass  # refused and closed before we finished sending: fine
    worst = 0.0
    for i in range(5):
        started = time.monotonic()
        echo_round_trip(bystander, f"during {i}")
        worst = max(worst, time.monotonic() - started)
    for client in clients:
        assert client.close_code() == 1009
        client.close()
    spent = loop_cpu_seconds(server) - before
    print(f"\n20 deflate bombs: {spent * 1000:.0f} ms of loop CPU, worst echo meanwhile "
          f"{worst * 1000:.1f} ms")
    # Each bomb inflates 1 MiB (the cap) and no more; the rest is TLS and framing of ~1 MB.
    assert spent < 20 * 0.05 * UNIT, f"{spent:.2f} s of loop CPU for 20 bombs"
    assert worst < 0.1 * UNIT, f"an echo took {worst * 1000:.0f} ms"
    assert wait_for(lambda: server.stats()["closes_by_code"].get("1009") == 20)
    bystander.close()
    assert_quiet(server)
