"""permessage-deflate: negotiation that follows RFC 7692, and inflation bounded by the message cap.

wsproto's PerMessageDeflate accepts an offer with parameters it does not know, and when a client
sends several offers it runs `accept()` on each, so state from a declined or earlier offer leaks
into the one agreed. RFC 7692 §5 and §7.1: an offer with an unknown parameter, a repeated
parameter, a value where none is allowed or a window size outside 8-15 must be declined, and the
server agrees to at most one offer. `NegotiatedDeflate.accept` checks each offer first and lets
wsproto accept only the first valid one; the compression itself stays wsproto's.

Inflation is ours: wsproto inflates every frame in full, so a 1 GiB "deflate bomb" (a megabyte
on the wire) costs a second of loop CPU and a gigabyte before any size check can look at it.
Here each call inflates at most what is left of --max-message-size for the current message, plus
one byte: one byte more means the message is too big, and wsproto fails the connection with 1009
without inflating the rest. Once the connection is closing (`stop()`), nothing more is inflated.
"""

from __future__ import annotations

import zlib

from wsproto.extensions import PerMessageDeflate
from wsproto.frame_protocol import CloseReason, FrameDecoder, FrameProtocol

_FLAGS = frozenset({"client_no_context_takeover", "server_no_context_takeover"})
_WINDOWS = frozenset({"client_max_window_bits", "server_max_window_bits"})


def valid_offer(offer: str) -> bool:
    """True when every parameter of a permessage-deflate offer is known, single and well formed."""
    seen: set[str] = set()
    for param in offer.split(";")[1:]:
        name, has_value, value = (part.strip() for part in param.partition("="))
        if name in seen:
            return False
        seen.add(name)
        if name in _FLAGS:
            if has_value:
                return False
        elif name in _WINDOWS:
            value = value.strip('"')
            if has_value and not (value.isdigit() and 8 <= int(value) <= 15):
                return False
            if name == "server_max_window_bits" and not has_value:
                return False  # §7.1.2.1: the server parameter needs a value
        else:
            return False
    return True


class NegotiatedDeflate(PerMessageDeflate):
    def __init__(self, *args: object, max_message_size: int = 1 << 20,
                 **kwargs: object) -> None:
        super().__init__(*args, **kwargs)  # type: ignore[arg-type]
        self._agreed = False
        self.max_message_size = max_message_size
        self._inflated = 0  # bytes inflated so far for the current message
        self.stopped = False

    def stop(self) -> None:
        """The connection is closing: inflate nothing more (frames then carry no data)."""
        self.stopped = True
        self._decompressor = None

    def accept(self, offer: str) -> bool | str | None:
        if self._agreed or not valid_offer(offer):
            return None  # decline this offer; wsproto moves on to the client's next one
        result = super().accept(_unquoted(offer))
        self._agreed = result is not None
        return result

    # -- inbound, bounded (wsproto's own inflates without limit) ----------------------------
    def frame_inbound_payload_data(self, proto: FrameDecoder | FrameProtocol,
                                   data: bytes) -> bytes | CloseReason:
        if not self._inbound_compressed or not self._inbound_is_compressible:
            return data
        if self.stopped:
            return b""
        return self._inflate(data)

    def frame_inbound_complete(self, proto: FrameDecoder | FrameProtocol,
                               fin: bool) -> bytes | CloseReason | None:
        if not fin or not self._inbound_is_compressible:
            # Mid-message, or a control frame between two fragments: the message goes on.
            # (wsproto's own forgets here that the message is compressed, so the fragments
            # after a ping were read as uncompressed: RFC 7692 §6.1 sets RSV1 on the first.)
            return None
        compressed = self._inbound_compressed
        self._inbound_compressed = None
        if not compressed or self.stopped:
            self._inflated = 0
            return None
        # RFC 7692 §7.2.2: the sender removed the empty block's tail; append it back.
        data = self._inflate(b"\x00\x00\xff\xff")
        self._inflated = 0
        if self.client_no_context_takeover:  # we are the server: the client's setting
            self._decompressor = None
        return data

    def _inflate(self, data: bytes) -> bytes | CloseReason:
        decompressor = self._decompressor
        if decompressor is None:  # a new context (no takeover), as wsproto makes it
            decompressor = self._decompressor = zlib.decompressobj(-self.client_max_window_bits)
        room = self.max_message_size - self._inflated
        try:
            out = decompressor.decompress(data, room + 1)
        except zlib.error:
            return CloseReason.INVALID_FRAME_PAYLOAD_DATA
        if len(out) > room:
            self.stop()  # the rest stays compressed: the connection fails with 1009
            return CloseReason.MESSAGE_TOO_BIG
        self._inflated += len(out)
        return out


def _unquoted(offer: str) -> str:
    """RFC 7692 §7.1 allows a quoted value (`server_max_window_bits="12"`); wsproto does not."""
    return offer.replace('"', "")
