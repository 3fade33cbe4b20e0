"""The PROXY protocol (v1 text and v2 binary), sans-I/O: a balancer's header naming the client.

How this works: a balancer in TCP mode (deploy/haproxy, `send-proxy-v2`) connects to us itself,
so the peer address we see is the balancer's. With the PROXY protocol it first sends one header
with the client's address, before any byte of the client's own (before TLS). `ProxyHeaderParser`
is fed bytes as they arrive, in any split, and returns a `ProxyHeader` once the header is
complete; `surplus` then says how many of the last bytes fed were not part of it (the start of
the client's TLS handshake). It never touches a socket: gate.py peeks at the socket, feeds the
parser and consumes exactly the header's bytes.

The format (haproxy.org/download/2.9/doc/proxy-protocol.txt):

* v1: `PROXY TCP4|TCP6 SRC DST SPORT DPORT\\r\\n`, or `PROXY UNKNOWN ...\\r\\n`; at most 107 bytes
  (§2.1). UNKNOWN means the balancer does not know the client (its own health checks, say).
* v2: a 12-byte signature, a version/command byte (0x2_; command LOCAL 0 or PROXY 1), a
  family/transport byte, a 16-bit length, then the addresses and optional TLVs (§2.2). LOCAL is
  the balancer's own connection (a health check): use the real peer, ignore the rest; PROXY with
  an unspecified or AF_UNIX family carries no usable address and is treated the same way. We
  read addresses for TCP over IPv4 and IPv6 and skip any TLVs; datagram transports are refused
  (this is a stream).

Both are bounded before a byte is trusted: v1 by its 107-byte maximum, v2 by `max_v2_length`
(2 KiB by default: HAProxy sends 12 or 36 address bytes plus the TLVs it is asked for), and a
stream whose first bytes cannot start either signature is refused at once.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass

from .errors import ProxyHeaderError, StateError

V1_SIGNATURE = b"PROXY "
V2_SIGNATURE = b"\r\n\r\n\x00\r\nQUIT\n"
# §2.1: "PROXY TCP6 " + two 39-character addresses + two 5-digit ports + spaces + CRLF.
V1_MAX_LENGTH = 107
# v2's length field allows 65,535 bytes; we accept the addresses and a few TLVs, no more.
V2_DEFAULT_MAX_LENGTH = 2048
_V2_HEAD = 16

# v2 family byte: high nibble the address family, low nibble the transport.
_AF_UNSPEC, _AF_INET, _AF_INET6, _AF_UNIX = 0x0, 0x1, 0x2, 0x3
_STREAM, _DGRAM = 0x1, 0x2
_ADDRESS_BYTES = {_AF_INET: 12, _AF_INET6: 36, _AF_UNIX: 216}


@dataclass(frozen=True, slots=True)
class ProxyHeader:
    """What a header said. `source` is the client's (host, port), None when the header carries
    no client (v1 UNKNOWN, v2 LOCAL or an address family we cannot use): keep the peer's."""

    version: int
    source: tuple[str, int] | None = None
    destination: tuple[str, int] | None = None

    @property
    def local(self) -> bool:
        """The balancer's own connection (a health check), not a client's."""
        return self.source is None


def looks_like_proxy_header(prefix: bytes) -> bool:
    """True when `prefix` (the first bytes of a stream, at least one) is or begins either
    signature: how a connection from an address that may not send a header is recognised.
    Nothing webscale serves starts that way (a TLS record starts with 0x16, a request with GET)."""
    if not prefix:
        return False
    return (V1_SIGNATURE.startswith(prefix[:len(V1_SIGNATURE)])
            or V2_SIGNATURE.startswith(prefix[:len(V2_SIGNATURE)]))


class ProxyHeaderParser:
    """Feed it the stream's first bytes until `feed` returns the header (or raises
    ProxyHeaderError); then `surplus` of the bytes given to the last call follow the header."""

    __slots__ = ("max_v2_length", "surplus", "_buffer", "_scanned", "_header")

    def __init__(self, max_v2_length: int = V2_DEFAULT_MAX_LENGTH) -> None:
        self.max_v2_length = max_v2_length
        self.surplus = 0
        self._buffer = bytearray()
        self._scanned = 0  # v1: where the search for CRLF resumes
        self._header: ProxyHeader | None = None

    @property
    def header(self) -> ProxyHeader | None:
        return self._header

    def feed(self, data: bytes) -> ProxyHeader | None:
        if self._header is not None:
            raise StateError("the PROXY header is complete: nothing more to parse")
        buffer = self._buffer
        buffer += data
        if not buffer:
            return None
        if buffer[0] == V1_SIGNATURE[0]:
            return self._feed_v1(len(data))
        if buffer[0] == V2_SIGNATURE[0]:
            return self._feed_v2(len(data))
        raise ProxyHeaderError("not a PROXY protocol header")

    # -- v1 ---------------------------------------------------------------------------------
    def _feed_v1(self, fed: int) -> ProxyHeader | None:
        buffer = self._buffer
        if not buffer.startswith(V1_SIGNATURE[:len(buffer)]):
            raise ProxyHeaderError("not a PROXY protocol header")
        end = buffer.find(b"\r\n", max(0, self._scanned - 1), V1_MAX_LENGTH)
        if end < 0:
            if len(buffer) >= V1_MAX_LENGTH:
                raise ProxyHeaderError(f"PROXY v1 line longer than {V1_MAX_LENGTH} bytes")
            self._scanned = len(buffer)
            return None
        header = _parse_v1(bytes(buffer[:end]))
        return self._complete(header, end + 2, fed)

    # -- v2 ---------------------------------------------------------------------------------
    def _feed_v2(self, fed: int) -> ProxyHeader | None:
        buffer = self._buffer
        signature = len(V2_SIGNATURE)
        if not V2_SIGNATURE.startswith(bytes(buffer[:signature])):
            raise ProxyHeaderError("not a PROXY protocol header")
        if len(buffer) < _V2_HEAD:
            return None
        version, command = buffer[12] >> 4, buffer[12] & 0x0F
        if version != 2:
            raise ProxyHeaderError(f"PROXY v2 header with version {version}")
        if command not in (0, 1):
            raise ProxyHeaderError(f"PROXY v2 header with unknown command {command}")
        length = int.from_bytes(buffer[14:16], "big")
        if length > self.max_v2_length:
            raise ProxyHeaderError(f"PROXY v2 header of {length} bytes (limit "
                                   f"{self.max_v2_length})")
        total = _V2_HEAD + length
        if len(buffer) < total:
            return None
        header = _parse_v2(command, buffer[13], bytes(buffer[_V2_HEAD:total]))
        return self._complete(header, total, fed)

    def _complete(self, header: ProxyHeader, length: int, fed: int) -> ProxyHeader:
        self.surplus = len(self._buffer) - length
        assert self.surplus <= fed, "surplus bytes came from an earlier feed"
        self._buffer = bytearray()
        self._header = header
        return header


def _parse_v1(line: bytes) -> ProxyHeader:
    try:
        text = line.decode("ascii")
    except UnicodeDecodeError:
        raise ProxyHeaderError("PROXY v1 line is not ASCII") from None
    fields = text.split(" ")
    if len(fields) >= 2 and fields[1] == "UNKNOWN":
        return ProxyHeader(1)  # §2.1: the rest of the line is to be ignored
    if len(fields) != 6 or fields[1] not in ("TCP4", "TCP6"):
        raise ProxyHeaderError(f"malformed PROXY v1 line {text[:60]!r}")
    family = 4 if fields[1] == "TCP4" else 6
    source = (_v1_address(fields[2], family), _v1_port(fields[4]))
    destination = (_v1_address(fields[3], family), _v1_port(fields[5]))
    return ProxyHeader(1, source, destination)


def _v1_address(text: str, family: int) -> str:
    try:
        address = (ipaddress.IPv4Address(text) if family == 4 else ipaddress.IPv6Address(text))
    except ValueError:
        raise ProxyHeaderError(f"PROXY v1 address {text[:45]!r} is not IPv{family}") from None
    return str(address)


def _v1_port(text: str) -> int:
    # Decimal, no sign, no leading zero (§2.1), 0-65535.
    if not text.isdigit() or not text.isascii() or (len(text) > 1 and text[0] == "0"):
        raise ProxyHeaderError(f"PROXY v1 port {text[:8]!r} is not a port number")
    port = int(text)
    if port > 65535:
        raise ProxyHeaderError(f"PROXY v1 port {port} is out of range")
    return port


def _parse_v2(command: int, family_byte: int, payload: bytes) -> ProxyHeader:
    family, transport = family_byte >> 4, family_byte & 0x0F
    if family > _AF_UNIX or transport > _DGRAM:
        raise ProxyHeaderError(f"PROXY v2 header with unknown family 0x{family_byte:02x}")
    if command == 0:
        return ProxyHeader(2)  # LOCAL: the balancer's own connection; the block is ignored
    if family == _AF_UNSPEC or transport == 0:
        return ProxyHeader(2)  # §2.2: unspecified, use the real connection's endpoints
    if transport == _DGRAM:
        raise ProxyHeaderError("PROXY v2 header for a datagram transport on a TCP stream")
    needed = _ADDRESS_BYTES[family]
    if len(payload) < needed:
        raise ProxyHeaderError(f"PROXY v2 address block of {len(payload)} bytes, {needed} "
                               "needed")
    if family == _AF_UNIX:
        return ProxyHeader(2)  # a client on the balancer's unix socket: no address to use
    size = 4 if family == _AF_INET else 16
    source = ipaddress.ip_address(payload[:size])
    destination = ipaddress.ip_address(payload[size:2 * size])
    ports = payload[2 * size:2 * size + 4]
    return ProxyHeader(2, (str(source), int.from_bytes(ports[:2], "big")),
                       (str(destination), int.from_bytes(ports[2:], "big")))
