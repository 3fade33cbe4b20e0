"""The documents clients send, pre-built once and patched per send.

How this works: `MessageTemplate` renders one JSON document of exactly `size` bytes, in one of
two shapes (`DOCUMENTS`, bench_client's `--document`: the telemetry document, or the notes
document with prose and extra strings), in which `client_id`, `seq` and `sent_at` are
fixed-width fields padded with leading spaces (JSON allows whitespace before a value, and
forbids leading zeros). A send patches those three slices in place,
masks the bytes with a fresh random key and prepends the frame header (RFC 6455 §5.2, §5.3), so the
hot path is three slice assignments, one `os.urandom(4)` and one C-speed XOR.

The servers decode it with webscale's decoder (the twins too, so all do the same work per
message); the notes document's extra fields are ignored by it.
"""

from __future__ import annotations

import os
import random
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


# The second document shape (issue 10): a device's report with prose in it. The readings keep
# the usual shape (the decoder's work per reading is the same); `note` is free text that pads
# the document to its size, and `site` and `firmware` are strings the Telemetry struct does not
# have, which a decoder must accept and ignore.
NOTES_READINGS = 40
NOTES_SITE = "plant-7 / hall B / line 3"
NOTES_FIRMWARE = "2.14.1-rc3+g7f3c9e1"
_NOTE_WORDS = (
    "pump", "valve", "pressure", "nominal", "drift", "after", "restart", "operator", "checked",
    "the", "seal", "on", "inlet", "side", "noise", "within", "limits", "replaced", "filter",
    "cartridge", "humidity", "rising", "near", "door", "calibration", "due", "next", "week",
    "no", "alarms", "since", "last", "shift", "fan", "bearing", "sounds", "rough", "logged",
    "for", "maintenance", "reading", "stable", "sensor", "cable", "reseated", "and", "tested",
    "ok", "temperature", "spike", "at", "startup", "expected", "cold", "morning", "batch",
    "finished", "early", "line", "speed", "reduced", "to", "percent", "while", "cleaning",
)
DOCUMENTS = ("telemetry", "notes")


def note_text(length: int, seed: int = 0) -> str:
    """`length` characters of plain prose from a fixed vocabulary, the same for the same seed.

    Only letters, digits, spaces and `.,`: nothing JSON would escape, so one character is one
    byte of the document."""
    rng = random.Random(seed)
    words: list[str] = []
    used = 0
    sentence = 0
    while used < length:
        word = rng.choice(_NOTE_WORDS)
        if sentence == 0:
            word = word.capitalize()
        sentence += 1
        if sentence >= rng.randint(6, 14):
            word += rng.choice((".", ".", ","))
            sentence = 0 if word.endswith(".") else sentence
        if rng.random() < 0.05:
            word = f"{word} {rng.randint(2, 950)}"
        words.append(word)
        used += len(word) + 1
    return " ".join(words)[:length].rstrip(" ").ljust(length, ".")


class MessageTemplate:
    """One pre-rendered document of exactly `size` bytes, patched per send.

    `document` picks the shape: "telemetry" (as many readings as fit, padded with whitespace)
    or "notes" (`NOTES_READINGS` readings, `site`, `firmware`, and a `note` string that pads to
    the size). Both open with the same fixed-width `client_id`, `seq` and `sent_at` fields."""

    def __init__(self, size: int, document: str = "telemetry", seed: int = 0) -> None:
        if document not in DOCUMENTS:
            raise ValueError(f"unknown document {document!r}: one of {', '.join(DOCUMENTS)}")
        if size < MIN_SIZE:
            raise ValueError(f"message size must be at least {MIN_SIZE} bytes, got {size}")
        self.size = size
        self.document = document
        head = (
            b'{"client_id":' + b" " * CLIENT_ID_WIDTH
            + b',"seq":' + b" " * SEQ_WIDTH
            + b',"sent_at":' + b" " * SENT_AT_WIDTH
        )
        if document == "telemetry":
            body, self.readings_count = _telemetry_body(head, size)
        else:
            body, self.readings_count = _notes_body(head, size, seed)
        assert len(body) == size
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


def _telemetry_body(head: bytes, size: int) -> tuple[bytearray, int]:
    """The project's own document: as many readings as fit, padded with JSON whitespace."""
    tail = b"]}"
    body = bytearray(head + b',"readings":[')
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
    return body, index


def _notes_body(head: bytes, size: int, seed: int) -> tuple[bytearray, int]:
    """The notes document: fixed readings and strings, then a `note` that pads to the size."""
    readings = b",".join(orjson.dumps(_sample_reading(i)) for i in range(NOTES_READINGS))
    body = bytearray(head)
    body += b',"site":' + orjson.dumps(NOTES_SITE)
    body += b',"firmware":' + orjson.dumps(NOTES_FIRMWARE)
    body += b',"readings":[' + readings + b']'
    body += b',"note":"'
    tail = b'"}'
    room = size - len(body) - len(tail)
    if room < 1:
        raise ValueError(f"the notes document needs more than {len(body) + len(tail)} bytes, "
                         f"got {size}")
    body += note_text(room, seed).encode("ascii") + tail
    return body, NOTES_READINGS


def notes_document(size: int, seed: int) -> bytes:
    """One notes document of exactly `size` bytes whose fields and note text depend on `seed`
    (benchmarks and tests that want many distinct documents without a client)."""
    template = MessageTemplate(size, document="notes", seed=seed)
    return bytes(template.render(seed, seed, 1.7e9 + seed))
