"""Keepalive and idle timers against a raw client that answers nothing it is not told to."""

from __future__ import annotations

import struct
import time
from collections.abc import Callable

from helpers import UNIT, ServerProcess, wait_for
from test_hostile import RawClient

StartServer = Callable[..., ServerProcess]


def test_server_pings_and_drops_a_peer_that_never_answers(server_factory: StartServer) -> None:
    interval, timeout = 0.3 * UNIT, 0.5 * UNIT
    server = server_factory("--ping-interval", str(interval), "--ping-timeout", str(timeout),
                            "--idle-timeout", "0")
    client = RawClient(server, timeout=10)
    client.upgrade()
    started = time.monotonic()
    opcode, payload = client.recv_frame() or (None, b"")
    assert opcode == 0x9, "the server's first frame should be a keepalive ping"
    assert len(payload) == 4
    # No pong goes back: the server gives up after --ping-timeout and drops TCP.
    assert client.recv_frame() is None
    elapsed = time.monotonic() - started
    # First ping after --ping-interval, then --ping-timeout without a pong.
    assert interval + timeout - 0.1 * UNIT <= elapsed < 10 * UNIT
    assert wait_for(lambda: server.stats()["closes_by_code"].get("1011") == 1)


def test_answered_pings_keep_the_connection(server_factory: StartServer) -> None:
    server = server_factory("--ping-interval", str(0.2 * UNIT), "--ping-timeout",
                            str(0.5 * UNIT), "--idle-timeout", "0")
    client = RawClient(server, timeout=10)
    client.upgrade()
    mask = b"\x01\x02\x03\x04"
    for _ in range(4):  # four ping/pong rounds, over twice the ping timeout
        opcode, payload = client.recv_frame() or (None, b"")
        assert opcode == 0x9
        masked = bytes(b ^ mask[i % 4] for i, b in enumerate(payload))
        client.send(struct.pack("!BB", 0x8A, 0x80 | len(payload)) + mask + masked)
    assert server.stats()["websockets_open"] == 1


def test_idle_timeout_closes_with_1001(server_factory: StartServer) -> None:
    server = server_factory("--ping-interval", "0", "--idle-timeout", str(0.5 * UNIT))
    client = RawClient(server, timeout=10)
    client.upgrade()
    started = time.monotonic()
    opcode, payload = client.recv_frame() or (None, b"")
    assert opcode == 0x8
    assert struct.unpack("!H", payload[:2])[0] == 1001
    assert payload[2:] == b"idle timeout"
    assert time.monotonic() - started >= 0.4 * UNIT
