"""frames.py against wsproto's own FrameProtocol: the same bytes give the same frames and errors.

No sockets: both state machines are fed the same byte stream (valid and invalid frames, cut at
every offset or at random places) and what comes out (frames, or ParseFailed's message and close
code) must be identical, with wsproto's Python masker and with the C one (fastmask).
"""

from __future__ import annotations

import os
import struct
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from wsproto import frame_protocol
from wsproto.extensions import PerMessageDeflate
from wsproto.frame_protocol import FrameDecoder, FrameProtocol, ParseFailed

from helpers import client_frame
from webscale import fastmask
from webscale.frames import server_frames

PYTHON_MASKER = frame_protocol.XorMaskerSimple


@pytest.fixture(params=["python", "c"])
def masker(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    if request.param == "c":
        if not fastmask.install():
            pytest.skip("websockets.speedups is not installed")
    else:
        monkeypatch.setattr(frame_protocol, "XorMaskerSimple", PYTHON_MASKER)
    yield request.param
    monkeypatch.setattr(frame_protocol, "XorMaskerSimple", PYTHON_MASKER)


def frame(opcode: int, payload: bytes, *, mask: bool = True, **rules: Any) -> bytes:
    """A client frame with a fresh random key (or none), `rules` as helpers.client_frame's."""
    return client_frame(opcode, payload, mask=os.urandom(4) if mask else None, **rules)


def run(make: Callable[[], FrameProtocol], chunks: list[bytes]) -> list[object]:
    """Feed the chunks one by one; the frames that came out, then the error if any."""
    frames = make()
    out: list[object] = []
    for chunk in chunks:
        frames.receive_bytes(chunk)
        try:
            out.extend(tuple(f) for f in frames.received_frames())
        except ParseFailed as exc:
            out.append(("ParseFailed", str(exc), int(exc.code)))
            break
    return out


def wsproto_frames() -> FrameProtocol:
    return FrameProtocol(client=False, extensions=[])


def ours() -> FrameProtocol:
    return server_frames([])


def same(chunks: list[bytes]) -> list[object]:
    expected = run(wsproto_frames, chunks)
    assert run(ours, chunks) == expected
    return expected


TEXT = "ünïcode, and 10 KB of it: ".encode() + b"x" * 10_214

CASES = {
    "text whole": frame(1, TEXT),
    "binary, 2-byte length": frame(2, bytes(range(256)) * 3),
    "binary, 8-byte length": frame(2, b"\x07" * 70_000),
    "empty text": frame(1, b""),
    "125 bytes": frame(2, b"a" * 125),
    "126 bytes": frame(2, b"a" * 126),
    "fragmented text": frame(1, "héllo ".encode(), fin=False) + frame(0, b"", fin=False)
    + frame(0, "wörld".encode()),
    "ping between fragments": frame(2, b"ab", fin=False) + frame(9, b"hi") + frame(0, b"cd"),
    "pong": frame(10, b"payload"),
    "close with reason": frame(8, struct.pack("!H", 1000) + b"bye") + frame(1, b"after close"),
    "close empty": frame(8, b""),
    "invalid utf-8": frame(1, b"ok \xff\xfe"),
    "utf-8 cut across fragments": frame(1, "é".encode()[:1], fin=False)
    + frame(0, "é".encode()[1:]),
    "bad opcode": frame(3, b"x"),
    "bad control opcode": frame(0xB, b"x"),
    "fragmented control": frame(9, b"x", fin=False),
    "long control": frame(9, b"p" * 126),
    "rsv1 without extension": frame(1, b"x", rsv=4),
    "rsv3": frame(2, b"x", rsv=1),
    "unmasked": frame(1, b"x", mask=False),
    "2-byte length not needed": frame(2, b"x" * 100, length_bytes=2),
    "8-byte length not needed": frame(2, b"x" * 1000, length_bytes=8),
    "8-byte length with MSB": frame(2, b"", length_bytes=8, length=1 << 63),
    "continuation first": frame(0, b"x"),
    "text inside text": frame(1, b"a", fin=False) + frame(1, b"b"),
    "bad close code": frame(8, struct.pack("!H", 999)),
    "two messages in one read": frame(1, b'{"a": 1}') + frame(2, b"\x00\x01"),
}


@pytest.mark.parametrize("name", sorted(CASES))
def test_whole_input_gives_what_wsproto_gives(name: str, masker: str) -> None:
    out = same([CASES[name]])
    assert out, "every case produces a frame or an error"


@pytest.mark.parametrize("name", sorted(n for n in CASES if len(CASES[n]) < 2_000))
def test_input_cut_at_every_offset(name: str, masker: str) -> None:
    data = CASES[name]
    whole = run(wsproto_frames, [data])
    for cut in range(1, len(data)):
        out = same([data[:cut], data[cut:]])
        if not any(isinstance(o, tuple) and o[0] == "ParseFailed" for o in whole):
            # Cut frames arrive as pieces; together they carry the same payload.
            assert b"".join(o[1] for o in out if isinstance(o[1], bytes)) == \
                b"".join(o[1] for o in whole if isinstance(o[1], bytes))


def test_a_10kb_frame_in_tls_sized_reads(masker: str) -> None:
    data = CASES["text whole"] * 3
    same([data[i:i + 16_384] for i in range(0, len(data), 16_384)])
    same([data[i:i + 1_000] for i in range(0, len(data), 1_000)])


def test_the_fast_decoder_only_without_extensions() -> None:
    assert type(server_frames([])._frame_decoder) is not FrameDecoder
    deflate = PerMessageDeflate()
    deflate._enabled = True
    assert type(server_frames([deflate])._frame_decoder) is FrameDecoder


frames_strategy = st.lists(st.one_of(
    st.builds(lambda op, payload, fin, rsv: frame(op, payload, fin=fin, rsv=rsv),
              st.sampled_from([0, 1, 2, 3, 8, 9, 10, 0xB]), st.binary(max_size=300),
              st.booleans(), st.sampled_from([0, 0, 0, 1, 4])),
    st.builds(lambda text: frame(1, text.encode()), st.text(max_size=200)),
), min_size=1, max_size=6)


@settings(max_examples=300, deadline=None)
@given(frames=frames_strategy, cuts=st.lists(st.integers(min_value=0, max_value=2_000),
                                             max_size=6))
def test_random_streams_cut_at_random(frames: list[bytes], cuts: list[int]) -> None:
    data = b"".join(frames)
    points = sorted({c % (len(data) + 1) for c in cuts})
    chunks = [data[a:b] for a, b in zip([0, *points], [*points, len(data)], strict=True)]
    same([c for c in chunks if c] or [data])
