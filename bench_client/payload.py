"""The telemetry document clients send, pre-built once and patched per send.

How this works: `MessageTemplate` renders one JSON document of exactly `size` bytes in which
`client_id`, `seq` and `sent_at` are fixed-width fields padded with leading spaces (JSON allows
whitespace before a value, and forbids leading zeros). A send patches those three slices in place,
masks the bytes with a fresh random key and prepends the frame header (RFC 6455 §5.2, §5.3), so the
hot path is three slice assignments, one `os.urandom(4)` and one C-speed XOR.

The servers decode it with `webscale.messages.decode_telemetry` (the asyncio twin too, so both do
the same work per message).
"""

from __future__ import annotations

import os
import struct
from collections.abc import Callable
from typing import Any

import orjson


OPCODE_TEXT = 0x1

# Field widths: 10 digits cover client ids and sequence numbers up to 9,999,999,999; unix time
# with microseconds fits 17 characters until the year 2286.
CLIENT_ID_WIDTH = 10
SEQ_WIDTH = 10
SENT_AT_WIDTH = 17

# Below this the fixed fields and one reading no longer fit.
MIN_SIZE = 256


def apply_mask_python(data: bytes | bytearray, mask: bytes) -> bytes:
    """XOR `data` with the 4-byte `mask` repeated (RFC 6455 §5.3), without C help."""
    length = len(data)
    if length == 0:
        return b""
    repeated = (mask * (length // 4 + 1))[:length]
    value = int.from_bytes(data, "big") ^ int.from_bytes(repeated, "big")
    return value.to_bytes(length, "big")


def _c_apply_mask() -> Callable[[bytes | bytearray, bytes], bytes] | None:
    try:  # the C version is ~50x faster than any pure-Python XOR on 10 KB
        from websockets.speedups import apply_mask as c_apply_mask
    except ImportError:  # pragma: no cover - websockets is a test extra, not a requirement
        return None
    return c_apply_mask


apply_mask: Callable[[bytes | bytearray, bytes], bytes] = _c_apply_mask() or apply_mask_python


def _sample_reading(index: int) -> dict[str, Any]:
    units = ("C", "hPa", "%", "lx", "ppm")
    return {
        "sensor": f"sensor-{index:04d}",
        "value": round(20.0 + (index * 7919 % 1000) / 37.0, 3),
        "unit": units[index % len(units)],
        "ok": index % 13 != 0,
        "tags": [f"rack-{index % 8}", f"zone-{'abcd'[index % 4]}"],
    }


def _masked_frame_header(payload_length: int) -> bytes:
    """FIN + text opcode, MASK bit set, and the length in the shortest form (RFC 6455 §5.2)."""
    first = 0x80 | OPCODE_TEXT
    if payload_length < 126:
        return struct.pack("!BB", first, 0x80 | payload_length)
    if payload_length < 1 << 16:
        return struct.pack("!BBH", first, 0x80 | 126, payload_length)
    return struct.pack("!BBQ", first, 0x80 | 127, payload_length)


class MessageTemplate:
    """One pre-rendered document of exactly `size` bytes, patched per send."""

    def __init__(self, size: int) -> None:
        if size < MIN_SIZE:
            raise ValueError(f"message size must be at least {MIN_SIZE} bytes, got {size}")
        self.size = size
        head = (
            b'{"client_id":' + b" " * CLIENT_ID_WIDTH
            + b',"seq":' + b" " * SEQ_WIDTH
            + b',"sent_at":' + b" " * SENT_AT_WIDTH
            + b',"readings":['
        )
        tail = b"]}"
        body = bytearray(head)
        index = 0
        while True:
            reading = orjson.dumps(_sample_reading(index))
            separator = b"," if index else b""
            if len(body) + len(separator) + len(reading) + len(tail) > size:
                break
            body += separator + reading
            index += 1
        if index == 0:
            raise ValueError(f"message size {size} leaves no room for a reading")
        # Pad to the exact size with JSON whitespace between the last reading and the `]`.
        body += b" " * (size - len(body) - len(tail)) + tail
        self.readings_count = index
        self._document = body
        self._client_id_at = len(b'{"client_id":')
        self._seq_at = self._client_id_at + CLIENT_ID_WIDTH + len(b',"seq":')
        self._sent_at_at = self._seq_at + SEQ_WIDTH + len(b',"sent_at":')
        self.header = _masked_frame_header(size)

    def render(self, client_id: int, seq: int, sent_at: float) -> bytearray:
        """Patch the fixed-width fields in place and return the (shared) document buffer."""
        doc = self._document
        doc[self._client_id_at : self._client_id_at + CLIENT_ID_WIDTH] = b"%10d" % client_id
        doc[self._seq_at : self._seq_at + SEQ_WIDTH] = b"%10d" % seq
        doc[self._sent_at_at : self._sent_at_at + SENT_AT_WIDTH] = b"%17.6f" % sent_at
        return doc

    def write_frame(self, out: bytearray, client_id: int, seq: int, sent_at: float) -> int:
        """Append one masked text frame to `out`; return the number of bytes appended."""
        doc = self.render(client_id, seq, sent_at)
        mask = os.urandom(4)
        out += self.header
        out += mask
        out += apply_mask(doc, mask)
        return len(self.header) + 4 + self.size


# -- the "notes" document (issue 10's second shape) ------------------------------------------

NOTES_READINGS = 40
_NOTE_WORDS = ("sensor", "calibrated", "rack", "north", "door", "opened", "fan", "replaced",
               "reading", "drift", "checked", "ok", "battery", "low", "firmware", "updated")


def notes_document(size: int, seed: int) -> bytes:
    """A document of exactly `size` bytes: 40 readings and a free-text `note` padding it.

    The other shape the servers must decode (issue 10): `client_id`, `seq`, `sent_at` and 40
    readings of the usual shape (3.6 KB here; the outside harness's were about 4.4 KB), plus
    top-level strings the Telemetry struct does not have and must ignore: `site`, `firmware`
    and a `note` of words drawn from `seed` that pads the document to `size`.
    """
    import random  # local, so that this function is one self-contained block of the module

    words = random.Random(seed)
    doc: dict[str, Any] = {
        "client_id": seed, "seq": seed, "sent_at": 1.7e9 + seed,
        "site": f"site-{seed % 97:02d}", "firmware": f"2.{seed % 10}.{seed % 7}",
        "note": "", "readings": [_sample_reading(seed + i) for i in range(NOTES_READINGS)],
    }
    room = size - len(orjson.dumps(doc))
    if room < 0:
        raise ValueError(f"a notes document needs at least {size - room} bytes, got {size}")
    note = ""
    while len(note) < room:
        note += words.choice(_NOTE_WORDS) + " "
    doc["note"] = note[:room]  # ASCII words need no escaping: the length is exact
    return orjson.dumps(doc)
