"""permessage-deflate per RFC 7692, by feeding upgrade requests and frames to the protocol:
negotiation, and inflation bounded by --max-message-size (deflate bombs)."""

from __future__ import annotations

import time
import zlib

import pytest

from helpers import client_frame
from webscale.deflate import valid_offer
from webscale.protocol import (
    Closed,
    MessageReceived,
    Phase,
    ProtocolLimits,
    RequestReceived,
    ServerProtocol,
)

KEY = b"dGhlIHNhbXBsZSBub25jZQ=="


def agreed(offers: str) -> bytes | None:
    """The Sec-WebSocket-Extensions the server answers to `offers` (None: no extension)."""
    proto = ServerProtocol(ProtocolLimits(compression=True))
    request = (b"GET / HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
               b"Sec-WebSocket-Key: " + KEY + b"\r\nSec-WebSocket-Version: 13\r\n"
               b"Sec-WebSocket-Extensions: " + offers.encode() + b"\r\n\r\n")
    assert [type(e) for e in proto.receive_data(request)] == [RequestReceived]
    assert proto.accept_upgrade() == []
    for line in proto.data_to_send().split(b"\r\n"):
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"sec-websocket-extensions":
            return value.strip()
    return None


@pytest.mark.parametrize("offer", [
    "permessage-deflate",
    "permessage-deflate; client_max_window_bits",
    "permessage-deflate; client_max_window_bits=10; server_no_context_takeover",
    'permessage-deflate; server_max_window_bits="12"',
])
def test_valid_offers(offer: str) -> None:
    assert valid_offer(offer)
    assert agreed(offer) is not None


@pytest.mark.parametrize("offer", [
    "permessage-deflate; foo",                                   # unknown parameter
    "permessage-deflate; server_no_context_takeover; server_no_context_takeover",  # repeated
    "permessage-deflate; client_no_context_takeover=1",          # a flag with a value
    "permessage-deflate; server_max_window_bits",                # needs a value
    "permessage-deflate; server_max_window_bits=16",             # out of 8-15
    "permessage-deflate; client_max_window_bits=abc",
])
def test_invalid_offers_are_declined_not_refused(offer: str) -> None:
    assert not valid_offer(offer)
    assert agreed(offer) is None  # the WebSocket opens, uncompressed


def test_first_valid_offer_wins_and_nothing_leaks_from_the_others() -> None:
    response = agreed("permessage-deflate; foo; server_no_context_takeover, "
                      "permessage-deflate; client_max_window_bits=12, "
                      "permessage-deflate; server_no_context_takeover")
    assert response is not None
    assert b"client_max_window_bits=12" in response
    assert b"server_no_context_takeover" not in response  # from the declined/later offers
    assert response.count(b"permessage-deflate") == 1


# -- inflation bounded by --max-message-size -----------------------------------------------------
def _deflated(data: bytes) -> bytes:
    """What a permessage-deflate client sends for `data` (RFC 7692 §7.2.1)."""
    compressor = zlib.compressobj(zlib.Z_DEFAULT_COMPRESSION, zlib.DEFLATED, -15)
    out = compressor.compress(data) + compressor.flush(zlib.Z_SYNC_FLUSH)
    assert out.endswith(b"\x00\x00\xff\xff")
    return out[:-4]


def _deflate_open(max_message_size: int = 1 << 20) -> ServerProtocol:
    proto = ServerProtocol(ProtocolLimits(compression=True, max_message_size=max_message_size))
    request = (b"GET / HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
               b"Sec-WebSocket-Key: " + KEY + b"\r\nSec-WebSocket-Version: 13\r\n"
               b"Sec-WebSocket-Extensions: permessage-deflate\r\n\r\n")
    proto.receive_data(request)
    proto.accept_upgrade()
    assert b"permessage-deflate" in proto.data_to_send()
    return proto


def test_compressed_messages_up_to_the_cap_are_inflated() -> None:
    proto = _deflate_open(max_message_size=100_000)
    assert proto.receive_data(client_frame(0x2, _deflated(b"\0" * 100_000), rsv=4)) == [
        MessageReceived(b"\0" * 100_000)]
    assert proto.receive_data(client_frame(0x1, _deflated(b"again"), rsv=4)) == [
        MessageReceived("again")]


def test_a_ping_between_compressed_fragments_does_not_end_the_compression() -> None:
    proto = _deflate_open()
    body = _deflated(b"fragmented and compressed " * 10)
    data = (client_frame(0x1, body[:10], fin=False, rsv=4) + client_frame(0x9, b"hi")
            + client_frame(0x0, body[10:]))
    assert proto.receive_data(data) == [MessageReceived("fragmented and compressed " * 10)]
    assert proto.data_to_send() == b"\x8a\x02hi"


def test_a_deflate_bomb_is_refused_after_inflating_the_cap_only() -> None:
    bomb = _deflated(b"\0" * (256 << 20))  # 256 MiB of zeros in about 250 KB
    assert len(bomb) < 300_000
    proto = _deflate_open()
    started = time.thread_time()
    events = proto.receive_data(client_frame(0x2, bomb, rsv=4))
    spent = time.thread_time() - started
    print(f"\na 256 MiB deflate bomb: refused after {spent * 1000:.1f} ms of CPU")
    assert [(type(e), getattr(e, "code", None)) for e in events] == [(Closed, 1009)]
    assert spent < 0.05, f"{spent * 1000:.0f} ms of CPU for one bomb"  # wsproto: ~0.3 s
    assert proto.phase is Phase.FAILING


def test_a_bomb_in_many_fragments_is_refused_too() -> None:
    bomb = _deflated(b"\0" * (64 << 20))
    proto = _deflate_open()
    pieces = [bomb[i:i + 1000] for i in range(0, len(bomb), 1000)]
    data = client_frame(0x2, pieces[0], fin=False, rsv=4) + b"".join(
        client_frame(0x0, piece, fin=False) for piece in pieces[1:])
    started = time.thread_time()
    events = proto.receive_data(data)
    assert time.thread_time() - started < 0.05
    assert [type(e) for e in events] == [Closed] and events[0].code == 1009  # type: ignore


def test_nothing_is_inflated_once_the_connection_is_closing() -> None:
    proto = _deflate_open()
    proto.close(1001, "going away")
    bomb = _deflated(b"\0" * (256 << 20))
    started = time.thread_time()
    assert proto.receive_data(client_frame(0x2, bomb, rsv=4)) == []
    assert time.thread_time() - started < 0.01
    assert proto.phase is Phase.CLOSING  # still waiting for the peer's close frame
