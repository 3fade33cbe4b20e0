"""proxy_protocol.ProxyHeaderParser fed literal bytes: whole, and one byte at a time.

Every header is also fed with the start of a TLS ClientHello after it, so `surplus` is checked:
those bytes must be left for TLS, not taken as part of the header.
"""

from __future__ import annotations

import socket
import struct

import pytest

from webscale.errors import ProxyHeaderError, StateError
from webscale.proxy_protocol import (
    V1_MAX_LENGTH,
    V2_SIGNATURE,
    ProxyHeader,
    ProxyHeaderParser,
    looks_like_proxy_header,
)

CLIENT_HELLO_START = b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03"


def v2(command: int, family: int, payload: bytes) -> bytes:
    return V2_SIGNATURE + bytes([0x20 | command, family]) + struct.pack("!H", len(payload)) \
        + payload


def v2_tcp4(src: str, sport: int, dst: str, dport: int, tlvs: bytes = b"") -> bytes:
    return v2(1, 0x11, socket.inet_aton(src) + socket.inet_aton(dst)
              + struct.pack("!HH", sport, dport) + tlvs)


def v2_tcp6(src: str, sport: int, dst: str, dport: int) -> bytes:
    return v2(1, 0x21, socket.inet_pton(socket.AF_INET6, src)
              + socket.inet_pton(socket.AF_INET6, dst) + struct.pack("!HH", sport, dport))


GOOD = {
    "v1 tcp4": (b"PROXY TCP4 192.0.2.7 198.51.100.1 56324 443\r\n",
                ProxyHeader(1, ("192.0.2.7", 56324), ("198.51.100.1", 443))),
    "v1 tcp6": (b"PROXY TCP6 2001:db8::7 2001:db8::1 65535 8443\r\n",
                ProxyHeader(1, ("2001:db8::7", 65535), ("2001:db8::1", 8443))),
    "v1 unknown": (b"PROXY UNKNOWN\r\n", ProxyHeader(1)),
    "v1 unknown with addresses": (b"PROXY UNKNOWN ffff:f::1 ffff:f::2 1 2\r\n", ProxyHeader(1)),
    "v1 longest": (b"PROXY TCP6 ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff "
                   b"ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff 65535 65535\r\n",
                   ProxyHeader(1, ("ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff", 65535),
                               ("ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff", 65535))),
    "v2 tcp4": (v2_tcp4("203.0.113.9", 40000, "10.0.0.2", 8443),
                ProxyHeader(2, ("203.0.113.9", 40000), ("10.0.0.2", 8443))),
    "v2 tcp4 with TLVs": (v2_tcp4("203.0.113.9", 1, "10.0.0.2", 2,
                                  tlvs=b"\x04\x00\x04abcd" + b"\x01\x00\x08http/1.1"),
                          ProxyHeader(2, ("203.0.113.9", 1), ("10.0.0.2", 2))),
    "v2 tcp6": (v2_tcp6("2001:db8::9", 50000, "2001:db8::2", 8443),
                ProxyHeader(2, ("2001:db8::9", 50000), ("2001:db8::2", 8443))),
    "v2 local": (v2(0, 0x00, b""), ProxyHeader(2)),
    "v2 local ignores its block": (v2(0, 0x11, b"\x00" * 12), ProxyHeader(2)),
    "v2 proxy unspec": (v2(1, 0x00, b""), ProxyHeader(2)),
    "v2 proxy unix": (v2(1, 0x31, b"/run/a.sock".ljust(108, b"\0") * 2), ProxyHeader(2)),
}


def feed_all(parser: ProxyHeaderParser, chunks: list[bytes]) -> tuple[ProxyHeader, int, int]:
    """Feed chunks until the header is complete: (header, index of that chunk, surplus)."""
    for index, chunk in enumerate(chunks):
        header = parser.feed(chunk)
        if header is not None:
            return header, index, parser.surplus
    raise AssertionError("the header never completed")


@pytest.mark.parametrize("name", list(GOOD))
def test_whole_header_then_tls(name: str) -> None:
    raw, expected = GOOD[name]
    header, _, surplus = feed_all(ProxyHeaderParser(), [raw + CLIENT_HELLO_START])
    assert header == expected
    assert header.local is (expected.source is None)
    assert surplus == len(CLIENT_HELLO_START)


@pytest.mark.parametrize("name", list(GOOD))
def test_byte_by_byte(name: str) -> None:
    raw, expected = GOOD[name]
    parser = ProxyHeaderParser()
    data = raw + CLIENT_HELLO_START
    header, index, surplus = feed_all(parser, [data[i:i + 1] for i in range(len(data))])
    assert header == expected
    assert index == len(raw) - 1  # completed by the header's last byte, no sooner or later
    assert surplus == 0
    assert parser.header == expected
    with pytest.raises(StateError):
        parser.feed(b"\x16")


@pytest.mark.parametrize("name", list(GOOD))
def test_every_split_in_two(name: str) -> None:
    raw, expected = GOOD[name]
    data = raw + CLIENT_HELLO_START[:3]
    for cut in range(1, len(data)):
        chunks = [data[:cut], data[cut:]]
        header, index, surplus = feed_all(ProxyHeaderParser(), chunks)
        assert header == expected
        # Where the header ends in the stream: everything before the completing chunk, plus
        # that chunk less its surplus.
        end = sum(len(c) for c in chunks[:index]) + len(chunks[index]) - surplus
        assert end == len(raw), cut


BAD = {
    "tls client hello": CLIENT_HELLO_START,
    "http request": b"GET / HTTP/1.1\r\n",
    "lower-case proxy": b"proxy TCP4 1.2.3.4 5.6.7.8 1 2\r\n",
    "v1 unknown protocol": b"PROXY UDP4 1.2.3.4 5.6.7.8 1 2\r\n",
    "v1 missing port": b"PROXY TCP4 1.2.3.4 5.6.7.8 1\r\n",
    "v1 extra field": b"PROXY TCP4 1.2.3.4 5.6.7.8 1 2 3\r\n",
    "v1 double space": b"PROXY TCP4  1.2.3.4 5.6.7.8 1 2\r\n",
    "v1 v6 address under TCP4": b"PROXY TCP4 ::1 ::1 1 2\r\n",
    "v1 v4 address under TCP6": b"PROXY TCP6 1.2.3.4 5.6.7.8 1 2\r\n",
    "v1 leading zero octet": b"PROXY TCP4 01.2.3.4 5.6.7.8 1 2\r\n",
    "v1 port too big": b"PROXY TCP4 1.2.3.4 5.6.7.8 65536 2\r\n",
    "v1 port with leading zero": b"PROXY TCP4 1.2.3.4 5.6.7.8 080 2\r\n",
    "v1 negative port": b"PROXY TCP4 1.2.3.4 5.6.7.8 -1 2\r\n",
    "v1 bare LF": b"PROXY TCP4 1.2.3.4 5.6.7.8 1 2\n" + b"x" * 100,
    "v1 not ascii": b"PROXY TCP4 1.2.3.4 5.6.7.\xff 1 2\r\n",
    "v1 too long": b"PROXY UNKNOWN " + b"x" * V1_MAX_LENGTH + b"\r\n",
    "v2 bad signature": V2_SIGNATURE[:-1] + b"X" + b"\x21\x11\x00\x0c" + b"\x00" * 12,
    "v2 version 1": V2_SIGNATURE + b"\x11\x11\x00\x0c" + b"\x00" * 12,
    "v2 command 2": V2_SIGNATURE + b"\x22\x11\x00\x0c" + b"\x00" * 12,
    "v2 family 4": V2_SIGNATURE + b"\x21\x41\x00\x0c" + b"\x00" * 12,
    "v2 udp": v2(1, 0x12, b"\x00" * 12),
    "v2 short ipv4 block": v2(1, 0x11, b"\x00" * 11),
    "v2 short ipv6 block": v2(1, 0x21, b"\x00" * 35),
    "v2 too long": V2_SIGNATURE + b"\x21\x11\x08\x01",
}


@pytest.mark.parametrize("name", list(BAD))
def test_malformed_headers_are_refused_whole_and_byte_by_byte(name: str) -> None:
    raw = BAD[name]
    with pytest.raises(ProxyHeaderError):
        ProxyHeaderParser().feed(raw)
    parser = ProxyHeaderParser()
    with pytest.raises(ProxyHeaderError):
        for i in range(len(raw)):
            assert parser.feed(raw[i:i + 1]) is None


def test_refused_as_soon_as_a_signature_cannot_match() -> None:
    parser = ProxyHeaderParser()
    assert parser.feed(b"PRO") is None
    with pytest.raises(ProxyHeaderError):
        parser.feed(b"t")  # "PROt" starts neither signature
    with pytest.raises(ProxyHeaderError):
        ProxyHeaderParser().feed(b"\x16")  # TLS: the first byte is enough


def test_v2_length_limit_is_checked_before_the_payload_arrives() -> None:
    parser = ProxyHeaderParser(max_v2_length=64)
    assert parser.feed(v2_tcp4("1.2.3.4", 1, "5.6.7.8", 2)) is not None
    with pytest.raises(ProxyHeaderError, match="65 bytes"):
        ProxyHeaderParser(max_v2_length=64).feed(V2_SIGNATURE + b"\x21\x11\x00\x41")


def test_looks_like_proxy_header() -> None:
    for prefix in (b"P", b"PROXY", b"PROXY TCP4 1", b"\r", b"\r\n\r\n\x00", V2_SIGNATURE + b"!"):
        assert looks_like_proxy_header(prefix), prefix
    for prefix in (b"", b"\x16\x03\x01", b"GET / HTTP/1.1", b"POST", b"PROXZ", b"\r\n\r\r"):
        assert not looks_like_proxy_header(prefix), prefix
