"""wsproto's frame state machine for a server, with its two hot parts specialised.

wsproto's `FrameProtocol` stays the state machine (framing rules, fragmentation, UTF-8 and
close-code validation, extensions); `server_frames()` builds one with two parts replaced:

- `_WholeTextDecoder` (its MessageDecoder): a text message arriving whole (one frame, its payload
  complete: the common case) is decoded with one strict `bytes.decode` instead of a new
  incremental decoder per message (~1.5 us of a 10 KB message's ~8). Invalid UTF-8 is the same
  ParseFailed (1007); fragments and partial payloads take wsproto's own path.
- `_HeaderFastDecoder` (its FrameDecoder), when no extension was negotiated: the frame header is
  read from the receive buffer by index (no 2-, 2- and 4-byte slices, no RsvBits tuple, no Opcode()
  call through the enum machinery), and a payload that is all that is buffered is unmasked from the
  buffer itself, handed over whole (where wsproto slices it out first). Same checks, same order,
  same ParseFailed messages and close codes as `FrameDecoder.parse_header` /
  `parse_extended_payload_length` / `extension_processing` (without extensions a set RSV bit is
  "Reserved bit set unexpectedly"); tests/test_frames.py feeds both decoders the same bytes, valid
  and invalid, whole and cut at every offset, and compares.
  With permessage-deflate negotiated, wsproto's own decoder runs unchanged.

In the loop thread's profile at 5,000 clients (py-spy --gil), wsproto's header parse and buffer
slicing were ~30% of the loop's time; see docs/PERFORMANCE.md for the measured change.
"""

from __future__ import annotations

from typing import cast

from wsproto import frame_protocol
from wsproto.extensions import Extension
from wsproto.frame_protocol import (
    CloseReason,
    Frame,
    FrameDecoder,
    FrameProtocol,
    Header,
    MessageDecoder,
    Opcode,
    ParseFailed,
    RsvBits,
    XorMaskerNull,
)

_TEXT = Opcode.TEXT
_OPCODES: dict[int, Opcode] = {int(op): op for op in Opcode}
_NO_RSV = RsvBits(False, False, False)
_NULL_MASKER = XorMaskerNull()


class _WholeTextDecoder(MessageDecoder):
    def process_frame(self, frame: Frame) -> Frame:
        if (frame.opcode is _TEXT and self.opcode is None and frame.frame_finished
                and frame.message_finished):
            try:
                text = cast(bytes, frame.payload).decode("utf-8")
            except UnicodeDecodeError as exc:
                raise ParseFailed(str(exc), CloseReason.INVALID_FRAME_PAYLOAD_DATA) from None
            return Frame(_TEXT, text, True, True)
        return super().process_frame(frame)


class _HeaderFastDecoder(FrameDecoder):
    """FrameDecoder for a server without extensions (see the module docstring)."""

    def parse_header(self) -> bool:
        buffer = self.buffer
        data = buffer.buffer
        # The frame starts at 0: this decoder deletes what it parses and never moves bytes_used.
        available = len(data)
        if available < 2:
            return False
        first = data[0]
        second = data[1]
        fin = first & 0x80 != 0
        opcode = _OPCODES.get(first & 0x0F)
        if opcode is None:
            raise ParseFailed(f"Invalid opcode {first & 0x0F:#x}")
        control = first & 0x08 != 0
        if control and not fin:
            raise ParseFailed("Invalid attempt to fragment control frame")
        length = second & 0x7F
        at = 2
        if control and length > 125:
            raise ParseFailed("Control frame with payload len > 125")
        if length == 126:
            if available < 4:
                return False
            length = (data[2] << 8) | data[3]
            at = 4
            if length <= 125:
                raise ParseFailed("Payload length used 2 bytes when 1 would have sufficed")
        elif length == 127:
            if available < 10:
                return False
            length = int.from_bytes(data[2:10], "big")
            at = 10
            if length <= 0xFFFF:
                raise ParseFailed("Payload length used 8 bytes when 2 would have sufficed")
            if length >> 63:
                raise ParseFailed("8-byte payload length with non-zero MSB")
        if first & 0x70:
            raise ParseFailed("Reserved bit set unexpectedly")
        if second & 0x80:
            if self.client:
                raise ParseFailed("client received unexpected masked frame")
            if available < at + 4:
                return False
            # Looked up per frame: fastmask.install() swaps in the C masker.
            self.masker = frame_protocol.XorMaskerSimple(data[at:at + 4])
            at += 4
        else:
            if not self.client:
                raise ParseFailed("server received unexpected unmasked frame")
            self.masker = _NULL_MASKER
        del data[:at]
        self.header = Header(fin, _NO_RSV, opcode, length, None)
        self.effective_opcode = opcode
        self.payload_required = length if control else 0
        self.payload_consumed = 0
        return True

    def process_buffer(self) -> Frame | None:
        if self.header is None and not self.parse_header():
            return None
        header = cast(Header, self.header)
        buffer = self.buffer
        data = buffer.buffer
        available = len(data)
        if available < self.payload_required:
            return None
        length = header.payload_len
        wanted = length - self.payload_consumed
        if not available and length > 0:
            return None
        if wanted >= available:  # all of it: hand the buffer over, start a new one
            piece = data
            buffer.buffer = bytearray()
        else:
            piece = data[:wanted]
            del data[:wanted]
        consumed = self.payload_consumed = self.payload_consumed + len(piece)
        finished = consumed == length
        payload = bytes(cast(frame_protocol.XorMaskerSimple, self.masker).process(piece))
        frame = Frame(cast(Opcode, self.effective_opcode), payload, finished, header.fin)
        if finished:
            self.header = None
            self.effective_opcode = None
            self.masker = None
        else:
            self.effective_opcode = Opcode.CONTINUATION
        return frame


def server_frames(extensions: list[Extension]) -> FrameProtocol:
    """wsproto's frame state machine for a server, with the parts above."""
    frames = FrameProtocol(client=False, extensions=extensions)
    if not frames.extensions:
        frames._frame_decoder = _HeaderFastDecoder(client=False, extensions=[])
    frames._message_decoder = _WholeTextDecoder()
    return frames
