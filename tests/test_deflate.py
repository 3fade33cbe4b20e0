"""permessage-deflate negotiation per RFC 7692, by feeding upgrade requests to the protocol."""

from __future__ import annotations

import pytest

from webscale.deflate import valid_offer
from webscale.protocol import ProtocolLimits, RequestReceived, ServerProtocol

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
