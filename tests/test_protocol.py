"""ServerProtocol without sockets: literal bytes in, exact events and bytes out.

Every scenario runs twice: the input whole, and split one byte at a time (h11's and wsproto's
test habit), since TCP may deliver any split.
"""

from __future__ import annotations

import base64
import hashlib
import os
import struct

import pytest

from helpers import client_frame
from webscale.budget import MemoryBudget
from webscale.http import Response
from webscale.reassembly import FRAGMENT_OVERHEAD
from webscale.protocol import (
    BACKLOG,
    EVENTS_PER_CALL,
    Closed,
    Event,
    HandshakeFailed,
    MessageReceived,
    Phase,
    PongReceived,
    ProtocolLimits,
    RequestReceived,
    ServerProtocol,
)

KEY = b"dGhlIHNhbXBsZSBub25jZQ=="  # RFC 6455 §1.3's example key
ACCEPT = b"s3pPLMBiTxaQ9kYGzzhZRbK+xOo="  # ... and its accept value

UPGRADE = (b"GET /chat HTTP/1.1\r\nHost: server.example.com\r\nUpgrade: websocket\r\n"
           b"Connection: Upgrade\r\nSec-WebSocket-Key: " + KEY + b"\r\n"
           b"Sec-WebSocket-Version: 13\r\n\r\n")


def server_frame(opcode: int, payload: bytes) -> bytes:
    """What the server must send: unmasked, FIN set."""
    assert len(payload) < 126
    return bytes([0x80 | opcode, len(payload)]) + payload


def feed(proto: ServerProtocol, data: bytes, split: bool) -> list[Event]:
    events: list[Event] = []
    chunks = [data[i:i + 1] for i in range(len(data))] if split else [data]
    for chunk in chunks:
        events += proto.receive_data(chunk)
    return events


def summary(events: list[Event]) -> list[tuple[str, str, bool]]:
    """Request events as (method, target, upgrade), the rest as their type's name."""
    return [(e.method, e.target, e.upgrade) if isinstance(e, RequestReceived)
            else (type(e).__name__, "", False) for e in events]


def opened(limits: ProtocolLimits | None = None) -> ServerProtocol:
    proto = ServerProtocol(limits or ProtocolLimits())
    events = proto.receive_data(UPGRADE)
    assert summary(events) == [("GET", "/chat", True)]
    assert proto.phase is Phase.UPGRADE_PENDING
    assert proto.accept_upgrade() == []
    proto.data_to_send()
    return proto


both = pytest.mark.parametrize("split", [False, True], ids=["whole", "bytewise"])


@both
def test_upgrade_answers_101_with_the_rfc_accept_value(split: bool) -> None:
    proto = ServerProtocol(ProtocolLimits())
    events = feed(proto, UPGRADE, split)
    assert summary(events) == [("GET", "/chat", True)]
    assert events[0].headers["sec-websocket-key"] == KEY.decode()  # type: ignore[union-attr]
    assert events[0].headers.get("HOST") == "server.example.com"  # type: ignore[union-attr]
    assert proto.data_to_send() == b""  # nothing is answered before the owner decides
    assert proto.accept_upgrade() == []
    response = proto.data_to_send()
    assert response.startswith(b"HTTP/1.1 101 ")
    assert b"\r\nsec-websocket-accept: " + ACCEPT + b"\r\n" in response.lower().replace(
        ACCEPT.lower(), ACCEPT)
    assert proto.phase is Phase.OPEN


def test_accept_value_matches_rfc_formula() -> None:
    expected = base64.b64encode(hashlib.sha1(KEY + b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11")
                                .digest())
    assert expected == ACCEPT


@both
def test_text_message(split: bool) -> None:
    proto = opened()
    assert feed(proto, client_frame(0x1, b"hello"), split) == [MessageReceived("hello")]
    assert proto.data_to_send() == b""


@both
def test_binary_message(split: bool) -> None:
    proto = opened()
    assert feed(proto, client_frame(0x2, b"\x00\xff"), split) == [MessageReceived(b"\x00\xff")]


@both
def test_fragmented_message_is_reassembled(split: bool) -> None:
    proto = opened()
    data = (client_frame(0x1, b"Hel", fin=False) + client_frame(0x9, b"p") +
            client_frame(0x0, b"lo ", fin=False) + client_frame(0x0, b"world"))
    assert feed(proto, data, split) == [MessageReceived("Hello world")]
    # The ping in the middle of the fragments was answered with a pong carrying its payload.
    assert proto.data_to_send() == server_frame(0xA, b"p")


@both
def test_ping_is_answered_with_pong(split: bool) -> None:
    proto = opened()
    assert feed(proto, client_frame(0x9, b"abc"), split) == []
    assert proto.data_to_send() == server_frame(0xA, b"abc")


def test_pong_surfaces_for_keepalive() -> None:
    proto = opened()
    assert proto.send_ping(b"\x00\x00\x00\x01")
    assert proto.data_to_send() == server_frame(0x9, b"\x00\x00\x00\x01")
    assert proto.receive_data(client_frame(0xA, b"\x00\x00\x00\x01")) == [
        PongReceived(b"\x00\x00\x00\x01")]


@both
def test_peer_close_is_echoed_and_closes(split: bool) -> None:
    proto = opened()
    events = feed(proto, client_frame(0x8, struct.pack("!H", 1000) + b"bye"), split)
    assert events == [Closed(1000, "bye", True)]
    # The code is echoed (RFC 6455 §5.5.1); wsproto echoes the reason too.
    assert proto.data_to_send() == server_frame(0x8, struct.pack("!H", 1000) + b"bye")
    assert proto.transport_should_close


@both
def test_message_over_limit_fails_1009(split: bool) -> None:
    proto = opened(ProtocolLimits(max_message_size=10))
    assert feed(proto, client_frame(0x1, b"x" * 11), split) == [
        Closed(1009, "message too big", False)]
    assert proto.phase is Phase.FAILING  # replies to earlier messages go first
    assert proto.data_to_send() == b""
    proto.fail_now()
    assert proto.data_to_send() == server_frame(0x8, struct.pack("!H", 1009) + b"message too big")
    assert proto.local_close_code == 1009
    assert proto.transport_should_close  # failed: no waiting for the peer's reply


@both
def test_message_at_the_limit_is_accepted(split: bool) -> None:
    proto = opened(ProtocolLimits(max_message_size=10))
    assert feed(proto, client_frame(0x1, b"x" * 10), split) == [MessageReceived("x" * 10)]


@both
def test_fragments_over_limit_fail_1009(split: bool) -> None:
    proto = opened(ProtocolLimits(max_message_size=200))
    data = client_frame(0x1, b"x" * 150, fin=False) + client_frame(0x0, b"y" * 51)
    assert feed(proto, data, split) == [Closed(1009, "message too big", False)]
    assert proto.local_close_code == 1009


@both
def test_each_frame_before_the_last_costs_the_fragment_overhead(split: bool) -> None:
    # 120 bytes of payload in two frames: 120 + 64 fits 184, not 183.
    data = client_frame(0x1, b"x" * 60, fin=False) + client_frame(0x0, b"y" * 60)
    assert feed(opened(ProtocolLimits(max_message_size=184)), data, split) == [
        MessageReceived("x" * 60 + "y" * 60)]
    assert feed(opened(ProtocolLimits(max_message_size=183)), data, split) == [
        Closed(1009, "message too big", False)]
    assert FRAGMENT_OVERHEAD == 64


def test_invalid_utf8_closes_1007() -> None:
    proto = opened()
    events = proto.receive_data(client_frame(0x1, b"\xff\xfe"))
    assert [type(e) for e in events] == [Closed]
    assert events[0].code == 1007  # type: ignore[union-attr]
    assert proto.phase is Phase.FAILING
    proto.fail_now()
    assert proto.data_to_send() == server_frame(0x8, struct.pack("!H", 1007) +
                                                b"invalid message data")
    assert proto.transport_should_close


@pytest.mark.parametrize("frame", [client_frame(0x3, b"x"), client_frame(0x1, b"x", rsv=4)],
                         ids=["reserved-opcode", "rsv1-without-extension"])
def test_protocol_violations_close_1002(frame: bytes) -> None:
    proto = opened()
    events = proto.receive_data(frame)
    assert [(type(e), e.code) for e in events] == [(Closed, 1002)]  # type: ignore[union-attr]
    proto.fail_now()
    assert proto.data_to_send() == server_frame(0x8, struct.pack("!H", 1002) + b"protocol error")
    assert proto.transport_should_close


def test_invalid_close_code_is_answered_1002() -> None:
    # RFC 6455 §7.4: 1005 must never appear on the wire; 999 is not a valid code.
    for code in (999, 1005, 1006, 1015, 5000):
        proto = opened()
        events = proto.receive_data(client_frame(0x8, struct.pack("!H", code)))
        assert [(type(e), e.code) for e in events] == [(Closed, 1002)], code  # type: ignore[union-attr]
        proto.fail_now()
        assert proto.data_to_send() == server_frame(
            0x8, struct.pack("!H", 1002) + b"protocol error"), code


def test_violation_after_a_message_lets_its_reply_out_first() -> None:
    """Autobahn 3.2-ish: a good message and a bad frame in one read. The message is delivered,
    its reply may still be sent, and only then does the close frame go (no reply is lost)."""
    proto = opened()
    events = proto.receive_data(client_frame(0x1, b"good") + client_frame(0x1, b"x", rsv=4))
    assert events == [MessageReceived("good"), Closed(1002, events[1].reason, False)]  # type: ignore[union-attr]
    assert proto.phase is Phase.FAILING
    assert proto.data_to_send() == b""  # the close waits
    assert proto.receive_data(client_frame(0x1, b"ignored")) == []  # nothing more is read
    assert not proto.send_ping(b"p")
    assert proto.send_message("good")  # the reply to what came before still goes
    proto.fail_now()
    assert proto.data_to_send() == (server_frame(0x1, b"good") + server_frame(
        0x8, struct.pack("!H", 1002) + b"protocol error"))
    assert proto.transport_should_close
    assert not proto.send_message("late")


def test_close_while_failing_sends_the_protocol_code() -> None:
    proto = opened()
    proto.receive_data(client_frame(0x3, b"x"))
    proto.close(1001, "going away")
    assert proto.data_to_send() == server_frame(0x8, struct.pack("!H", 1002) + b"protocol error")


def test_unmasked_client_frame_closes_1002() -> None:
    proto = opened()
    events = proto.receive_data(server_frame(0x1, b"x"))
    assert [(type(e), e.code) for e in events] == [(Closed, 1002)]  # type: ignore[union-attr]


@both
def test_plain_http_request_surfaces(split: bool) -> None:
    proto = ServerProtocol(ProtocolLimits())
    events = feed(proto, b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n", split)
    assert summary(events) == [("GET", "/healthz", False)]
    assert proto.phase is Phase.AWAITING_RESPONSE
    proto.respond(Response(200, b"ok\n"))
    out = proto.data_to_send()
    assert out.startswith(b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\n")
    assert out.endswith(b"\r\n\r\nok\n")
    assert proto.transport_should_close


def test_request_head_over_limit_gets_431() -> None:
    proto = ServerProtocol(ProtocolLimits(max_header_bytes=1024))
    events = proto.receive_data(b"GET / HTTP/1.1\r\nHost: x\r\nX-Big: " + b"a" * 2000)
    assert [(type(e), e.status) for e in events] == [(HandshakeFailed, 431)]  # type: ignore[union-attr]
    assert proto.data_to_send().startswith(b"HTTP/1.1 431 ")
    assert proto.transport_should_close


def test_too_many_headers_gets_431() -> None:
    proto = ServerProtocol(ProtocolLimits(max_headers=5))
    extra = b"".join(b"X-%d: y\r\n" % i for i in range(10))
    head = b"GET / HTTP/1.1\r\nHost: x\r\n" + extra + b"\r\n"
    events = proto.receive_data(head)
    assert [(type(e), e.status) for e in events] == [(HandshakeFailed, 431)]  # type: ignore[union-attr]


def test_malformed_request_gets_400() -> None:
    proto = ServerProtocol(ProtocolLimits())
    events = proto.receive_data(b"\x16\x03\x01 not http\r\n\r\n")
    assert [(type(e), e.status) for e in events] == [(HandshakeFailed, 400)]  # type: ignore[union-attr]
    assert proto.data_to_send().startswith(b"HTTP/1.1 400 ")


def test_upgrade_without_key_gets_400() -> None:
    proto = ServerProtocol(ProtocolLimits())
    bad = UPGRADE.replace(b"Sec-WebSocket-Key: " + KEY + b"\r\n", b"")
    events = proto.receive_data(bad)
    assert [(type(e), e.status) for e in events] == [(HandshakeFailed, 400)]  # type: ignore[union-attr]


def test_owner_refusal_answers_instead_of_101() -> None:
    proto = ServerProtocol(ProtocolLimits())
    assert summary(proto.receive_data(UPGRADE)) == [("GET", "/chat", True)]
    proto.respond(Response.text(503))
    assert proto.data_to_send().startswith(b"HTTP/1.1 503 Service Unavailable\r\n")
    assert proto.transport_should_close
    assert proto.accept_upgrade() == []  # too late: refused
    assert proto.data_to_send() == b""


@both
def test_bytes_after_the_head_wait_for_the_decision(split: bool) -> None:
    proto = ServerProtocol(ProtocolLimits())
    events = feed(proto, UPGRADE + client_frame(0x1, b"early") + client_frame(0x1, b"later"),
                  split)
    assert summary(events) == [("GET", "/chat", True)]
    assert proto.accept_upgrade() == [MessageReceived("early"), MessageReceived("later")]


def test_end_of_stream_while_the_upgrade_is_pending() -> None:
    proto = ServerProtocol(ProtocolLimits())
    proto.receive_data(UPGRADE)
    assert proto.receive_data(b"") == [
        Closed(1006, "end of stream before the upgrade was answered", True)]
    assert proto.transport_should_close


def test_end_of_stream_before_any_request_says_so() -> None:
    proto = ServerProtocol(ProtocolLimits())
    assert proto.receive_data(b"") == [Closed(1006, "closed before sending a request", True)]
    proto = ServerProtocol(ProtocolLimits())
    proto.receive_data(b"GET / HT")
    assert proto.receive_data(b"") == [Closed(1006, "end of stream during the request head",
                                              True)]


def test_frames_pipelined_behind_the_upgrade_are_delivered() -> None:
    proto = ServerProtocol(ProtocolLimits())
    events = proto.receive_data(UPGRADE + client_frame(0x1, b"early"))
    assert summary(events) == [("GET", "/chat", True)]
    assert proto.accept_upgrade() == [MessageReceived("early")]


def test_end_of_stream_reports_1006() -> None:
    proto = opened()
    assert proto.receive_data(b"") == [Closed(1006, "", True)]
    assert proto.transport_should_close


def test_server_close_then_peer_reply() -> None:
    proto = opened()
    proto.close(1001, "going away")
    assert proto.data_to_send() == server_frame(0x8, struct.pack("!H", 1001) + b"going away")
    assert not proto.send_message("late")  # nothing may follow a close frame
    # A message the peer sent before it saw our close is still delivered (nothing is lost).
    assert proto.receive_data(client_frame(0x1, b"in flight")) == [MessageReceived("in flight")]
    assert proto.receive_data(client_frame(0x8, struct.pack("!H", 1001))) == [
        Closed(1001, "", False)]


def test_send_message_frames_text_and_binary() -> None:
    proto = opened()
    assert proto.send_message("hi") and proto.send_message(b"\x01")
    assert proto.data_to_send() == server_frame(0x1, b"hi") + server_frame(0x2, b"\x01")


def test_large_random_message_roundtrip() -> None:
    proto = opened()
    payload = os.urandom(70000)
    assert proto.receive_data(client_frame(0x2, payload)) == [MessageReceived(payload)]


def test_head_request_gets_headers_only() -> None:
    proto = ServerProtocol(ProtocolLimits())
    assert summary(proto.receive_data(b"HEAD /healthz HTTP/1.1\r\nHost: x\r\n\r\n")) == [
        ("HEAD", "/healthz", False)]
    proto.respond(Response(200, b"ok\n"), head_only=True)
    out = proto.data_to_send()
    assert out.startswith(b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\n")
    assert out.endswith(b"\r\n\r\n")


@pytest.mark.parametrize("cut", [1, 2, 3, 4, 5])
def test_text_split_inside_a_multibyte_character(cut: int) -> None:
    """A whole frame decodes in one go; a payload cut across reads (or fragments) still decodes
    through wsproto's incremental path, a character split between the two included."""
    text = "h\u00e9\u20ac\U0001f600"
    payload = text.encode()
    proto = opened()
    frame = client_frame(0x1, payload)
    head = len(frame) - len(payload)
    assert proto.receive_data(frame[:head + cut]) == []
    assert proto.receive_data(frame[head + cut:]) == [MessageReceived(text)]
    proto = opened()
    parts = client_frame(0x1, payload[:cut], fin=False) + client_frame(0x0, payload[cut:])
    assert proto.receive_data(parts) == [MessageReceived(text)]


def test_invalid_utf8_in_a_fragment_closes_1007() -> None:
    proto = opened()
    events = proto.receive_data(client_frame(0x1, b"ok", fin=False) + client_frame(0x0, b"\xff"))
    assert [(type(e), e.code) for e in events] == [(Closed, 1007)]  # type: ignore[union-attr]
# -- the upgrade, parsed strictly (RFC 6455 §4.2.1, RFC 9112) ------------------------------------
def _upgrade_with(request_line: bytes = b"GET /chat HTTP/1.1", extra: bytes = b"",
                  key: bytes = KEY) -> bytes:
    return (request_line + b"\r\nHost: server.example.com\r\nUpgrade: websocket\r\n"
            b"Connection: Upgrade\r\nSec-WebSocket-Key: " + key + b"\r\n"
            b"Sec-WebSocket-Version: 13\r\n" + extra + b"\r\n")


IMPROPER_UPGRADES = {
    "HTTP/1.0": _upgrade_with(b"GET /chat HTTP/1.0"),
    "POST": _upgrade_with(b"POST /chat HTTP/1.1"),
    "absolute-form target": _upgrade_with(b"GET http://server.example.com/chat HTTP/1.1"),
    "asterisk-form target": _upgrade_with(b"GET * HTTP/1.1"),
    "Content-Length": _upgrade_with(extra=b"Content-Length: 6\r\n"),
    "Transfer-Encoding": _upgrade_with(extra=b"Transfer-Encoding: chunked\r\n"),
    "Transfer-Encoding and Content-Length": _upgrade_with(
        extra=b"Transfer-Encoding: chunked\r\nContent-Length: 6\r\n"),
    "key not base64": _upgrade_with(key=b"not base64 at all!!!!!!="),
    "key of 15 bytes": _upgrade_with(key=base64.b64encode(b"x" * 15)),
    "key of 17 bytes": _upgrade_with(key=base64.b64encode(b"x" * 17)),
    "two keys": _upgrade_with(extra=b"Sec-WebSocket-Key: " + KEY + b"\r\n"),
    "obs-fold": _upgrade_with(extra=b"X-Folded: one\r\n two\r\n"),
    "bare LF": _upgrade_with().replace(b"Upgrade: websocket\r\n", b"Upgrade: websocket\n"),
    "all bare LF": _upgrade_with().replace(b"\r\n", b"\n"),
}


@both
@pytest.mark.parametrize("name", list(IMPROPER_UPGRADES))
def test_improper_upgrade_gets_400(name: str, split: bool) -> None:
    proto = ServerProtocol(ProtocolLimits())
    # A ping frame as the "body": it must never be read as one (no pong).
    events = feed(proto, IMPROPER_UPGRADES[name] + client_frame(0x9, b"body"), split)
    assert [type(e) for e in events] == [HandshakeFailed], events
    assert events[0].status == 400  # type: ignore[union-attr]
    answer = proto.data_to_send()
    assert answer.startswith(b"HTTP/1.1 400 Bad Request\r\n") and b"\x8a" not in answer
    assert proto.transport_should_close


@both
def test_proper_upgrades_still_open(split: bool) -> None:
    for request in (_upgrade_with(extra=b"Content-Length: 0\r\n"),
                    _upgrade_with(b"GET /chat?site=7&x=%20 HTTP/1.1"),
                    _upgrade_with(key=base64.b64encode(os.urandom(16)))):
        proto = ServerProtocol(ProtocolLimits())
        assert summary(feed(proto, request, split))[0][2] is True
        assert proto.phase is Phase.UPGRADE_PENDING


def test_plain_http_1_0_requests_are_still_answered() -> None:
    # Load balancers' health checks (HAProxy's httpchk) speak HTTP/1.0.
    proto = ServerProtocol(ProtocolLimits())
    assert summary(proto.receive_data(b"GET /healthz HTTP/1.0\r\n\r\n")) == [
        ("GET", "/healthz", False)]


# -- limits in bytes ------------------------------------------------------------------------------
@both
def test_text_is_measured_in_encoded_bytes(split: bool) -> None:
    emoji = "\U0001f600"  # four bytes in UTF-8
    proto = opened(ProtocolLimits(max_message_size=400))
    assert feed(proto, client_frame(0x1, (emoji * 100).encode()), split) == [
        MessageReceived(emoji * 100)]
    proto = opened(ProtocolLimits(max_message_size=400))
    assert feed(proto, client_frame(0x1, (emoji * 101).encode()), split) == [
        Closed(1009, "message too big", False)]  # 101 characters, 404 bytes


def test_fragmented_text_is_measured_in_encoded_bytes() -> None:
    proto = opened(ProtocolLimits(max_message_size=800))
    piece = ("\u00e9" * 200).encode()  # 200 characters, 400 bytes
    assert proto.receive_data(client_frame(0x1, piece, fin=False)) == []
    assert proto.partial_bytes == 400 + FRAGMENT_OVERHEAD
    assert proto.receive_data(client_frame(0x0, piece)) == [
        Closed(1009, "message too big", False)]  # 864 bytes; its 400 characters would fit


def all_events(proto: ServerProtocol, data: bytes) -> tuple[list[Event], int]:
    """Feed `data`, then parse the backlog until none is left: the events, and the calls."""
    events = proto.receive_data(data)
    calls = 1
    while events and events[-1] is BACKLOG:
        events = events[:-1] + proto.parse_backlog()
        calls += 1
    return events, calls


def test_tiny_fragments_reach_the_cap() -> None:
    proto = opened(ProtocolLimits(max_message_size=64 * 1024))
    fragment = client_frame(0x0, b"ab", fin=False)
    events, calls = all_events(proto, client_frame(0x2, b"ab", fin=False) + fragment * 1100)
    assert events == [Closed(1009, "message too big", False)]
    # 64 KiB / (2 + 64): the cap is reached after 993 fragments, not 32,768.
    assert calls == 993 // EVENTS_PER_CALL + 1


def test_many_frames_in_one_read_are_parsed_a_hundred_or_so_at_a_time() -> None:
    proto = opened()
    events = proto.receive_data(client_frame(0x1, b"m") * 300 + client_frame(0x9, b"p"))
    assert events == [MessageReceived("m")] * EVENTS_PER_CALL + [BACKLOG]
    assert proto.backlog
    assert proto.parse_backlog() == [MessageReceived("m")] * EVENTS_PER_CALL + [BACKLOG]
    assert proto.parse_backlog() == [MessageReceived("m")] * (300 - 2 * EVENTS_PER_CALL)
    assert not proto.backlog and proto.data_to_send() == b"\x8a\x01p"  # the ping, answered
    assert proto.parse_backlog() == []


def test_zero_length_fragments_reach_the_cap_and_nothing_after_is_parsed() -> None:
    proto = opened(ProtocolLimits(max_message_size=64 * 1024))
    empty = client_frame(0x0, b"", fin=False)
    data = client_frame(0x2, b"", fin=False) + empty * 2000 + client_frame(0x9, b"after")
    assert all_events(proto, data)[0] == [Closed(1009, "message too big", False)]
    assert proto.data_to_send() == b""  # the ping after the refusal was never parsed
    assert proto.receive_data(client_frame(0x9, b"later")) == []
    proto.fail_now()
    assert proto.data_to_send() == server_frame(0x8, struct.pack("!H", 1009) + b"message too big")


@both
def test_one_frame_in_many_reads_is_charged_only_its_bytes(split: bool) -> None:
    proto = opened(ProtocolLimits(max_message_size=1000))
    assert feed(proto, client_frame(0x2, b"m" * 1000), split) == [MessageReceived(b"m" * 1000)]


def test_a_partial_message_is_charged_to_the_budget_and_given_back() -> None:
    budget = MemoryBudget(10_000)
    proto = ServerProtocol(ProtocolLimits(), 1, budget)
    proto.receive_data(UPGRADE)
    proto.accept_upgrade()
    assert proto.receive_data(client_frame(0x2, b"a" * 3000, fin=False)) == []
    assert budget.used == 3000 + FRAGMENT_OVERHEAD and not budget.over
    assert proto.receive_data(client_frame(0x0, b"b" * 7000, fin=False)) == []
    assert budget.used == 10_000 + 2 * FRAGMENT_OVERHEAD and budget.over
    assert proto.receive_data(client_frame(0x0, b"c")) == [
        MessageReceived(b"a" * 3000 + b"b" * 7000 + b"c")]
    assert budget.used == 0  # the dispatcher charges the complete message from here
    proto.receive_data(client_frame(0x2, b"d" * 500, fin=False))
    assert budget.used == 500 + FRAGMENT_OVERHEAD
    proto.abort()
    assert budget.used == 0 and proto.partial_bytes == 0
