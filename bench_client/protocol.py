"""The client side of the WebSocket protocol, sans-I/O: bytes in, events and bytes out.

How this works: `ClientHandshake` builds the upgrade request (RFC 6455 §4.1) and checks the
server's 101 answer, including `Sec-WebSocket-Accept` (§4.2.2). `FrameReader` splits what the
server sends into frames (§5.2); it keeps only control-frame payloads and counts data frames, since
a load generator has no use for the data itself. `encode_control` builds masked control frames
(§5.5; a client masks every frame, §5.3). Nothing here touches a socket or a clock.
"""

from __future__ import annotations

import base64
import hashlib
import os
import struct
from dataclasses import dataclass

from bench_client.errors import FrameError, HandshakeError
from bench_client.payload import apply_mask

GUID = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"  # RFC 6455 §1.3

OPCODE_CONTINUATION = 0x0
OPCODE_TEXT = 0x1
OPCODE_BINARY = 0x2
OPCODE_CLOSE = 0x8
OPCODE_PING = 0x9
OPCODE_PONG = 0xA

CLOSE_NORMAL = 1000
CLOSE_NO_STATUS = 1005  # what a close frame with an empty body means (RFC 6455 §7.1.5)

# A response head larger than this is not a WebSocket server talking (h11 allows 16 KiB too).
MAX_RESPONSE_HEAD = 16 * 1024
# Control frames are at most 125 bytes (§5.5); data frames we skip, so no size cap is needed for
# memory, but a frame claiming more than this is treated as garbage.
MAX_FRAME_LENGTH = 1 << 31


def accept_token(key: bytes) -> bytes:
    """The Sec-WebSocket-Accept value a server must answer for `key` (RFC 6455 §4.2.2)."""
    return base64.b64encode(hashlib.sha1(key + GUID).digest())


class ClientHandshake:
    """Build one upgrade request and validate the response to it."""

    def __init__(self, host: str, port: int, path: str, default_port: int) -> None:
        self.key = base64.b64encode(os.urandom(16))
        host_header = host if port == default_port else f"{host}:{port}"
        if ":" in host and not host.startswith("["):
            host_header = f"[{host}]" if port == default_port else f"[{host}]:{port}"
        self.request = (
            f"GET {path} HTTP/1.1\r\n"
            f"Host: {host_header}\r\n"
            "Upgrade: websocket\r\n"
            "Connection: Upgrade\r\n"
            f"Sec-WebSocket-Key: {self.key.decode()}\r\n"
            "Sec-WebSocket-Version: 13\r\n"
            "User-Agent: bench_client\r\n"
            "\r\n"
        ).encode("ascii")
        self._buffer = bytearray()

    def receive(self, data: bytes) -> bytes | None:
        """Feed response bytes; return the bytes after the head once it is complete and valid.

        Raises HandshakeError when the response is not a valid 101 for our key.
        """
        self._buffer += data
        end = self._buffer.find(b"\r\n\r\n")
        if end < 0:
            if len(self._buffer) > MAX_RESPONSE_HEAD:
                raise HandshakeError("response head too large")
            return None
        head = bytes(self._buffer[:end]).decode("latin-1")
        rest = bytes(self._buffer[end + 4 :])
        self._buffer.clear()
        self._check(head)
        return rest

    def _check(self, head: str) -> None:
        status_line, *header_lines = head.split("\r\n")
        parts = status_line.split(" ", 2)
        if len(parts) < 2 or not parts[0].startswith("HTTP/1."):
            raise HandshakeError("malformed status line")
        if parts[1] != "101":
            raise HandshakeError(f"status {parts[1]}")
        headers: dict[str, str] = {}
        for line in header_lines:
            name, sep, value = line.partition(":")
            if not sep:
                raise HandshakeError("malformed header line")
            headers[name.strip().lower()] = value.strip()
        if headers.get("upgrade", "").lower() != "websocket":
            raise HandshakeError("missing Upgrade: websocket")
        if "upgrade" not in headers.get("connection", "").lower():
            raise HandshakeError("missing Connection: Upgrade")
        if headers.get("sec-websocket-accept", "").encode() != accept_token(self.key):
            raise HandshakeError("wrong Sec-WebSocket-Accept")


def encode_control(opcode: int, payload: bytes = b"") -> bytes:
    """A masked control frame (RFC 6455 §5.5, masking §5.3)."""
    if len(payload) > 125:
        raise ValueError("control frame payload is limited to 125 bytes")
    mask = os.urandom(4)
    return struct.pack("!BB", 0x80 | opcode, 0x80 | len(payload)) + mask + apply_mask(payload, mask)


def encode_close(code: int = CLOSE_NORMAL, reason: str = "") -> bytes:
    return encode_control(OPCODE_CLOSE, struct.pack("!H", code) + reason.encode()[:123])


@dataclass(frozen=True, slots=True)
class ControlFrame:
    opcode: int
    payload: bytes


def close_code(payload: bytes) -> int:
    """The status code in a close frame body (RFC 6455 §5.5.1)."""
    if len(payload) >= 2:
        return int(struct.unpack_from("!H", payload)[0])
    return CLOSE_NO_STATUS


class FrameReader:
    """Split the server's byte stream into frames; count data messages, keep control frames."""

    def __init__(self) -> None:
        self._buffer = bytearray()
        self.messages_received = 0

    def receive(self, data: bytes) -> list[ControlFrame]:
        buf = self._buffer
        buf += data
        controls: list[ControlFrame] = []
        offset = 0
        size = len(buf)
        while size - offset >= 2:
            first, second = buf[offset], buf[offset + 1]
            opcode = first & 0x0F
            length = second & 0x7F
            pos = offset + 2
            if length == 126:
                if size - pos < 2:
                    break
                (length,) = struct.unpack_from("!H", buf, pos)
                pos += 2
            elif length == 127:
                if size - pos < 8:
                    break
                (length,) = struct.unpack_from("!Q", buf, pos)
                pos += 8
                if length > MAX_FRAME_LENGTH:
                    raise FrameError(f"frame length {length} too large")
            mask = b""
            if second & 0x80:  # servers must not mask (§5.1), but tolerate it
                if size - pos < 4:
                    break
                mask = bytes(buf[pos : pos + 4])
                pos += 4
            if size - pos < length:
                break
            if opcode >= 0x8:
                if length > 125 or not first & 0x80:
                    raise FrameError("invalid control frame")
                payload = bytes(buf[pos : pos + length])
                if mask:
                    payload = apply_mask(payload, mask)
                controls.append(ControlFrame(opcode, payload))
            elif opcode in (OPCODE_TEXT, OPCODE_BINARY, OPCODE_CONTINUATION):
                if first & 0x80:  # FIN: the last frame of a message
                    self.messages_received += 1
            else:
                raise FrameError(f"reserved opcode {opcode:#x}")
            offset = pos + length
        if offset:
            del buf[:offset]
        return controls
