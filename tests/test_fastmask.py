"""The C unmask gives wsproto exactly what its own masker gives, however a payload is split."""

from __future__ import annotations

import os

import pytest
from wsproto import frame_protocol

from webscale import fastmask



def reference_unmask(key: bytes, data: bytes) -> bytes:
    return bytes(b ^ key[i % 4] for i, b in enumerate(data))


@pytest.mark.skipif(fastmask._apply_mask is None, reason="websockets.speedups not installed")
@pytest.mark.parametrize("splits", [[10240], [1, 2, 3, 10234], [7] * 50, [4, 4, 5, 3, 1000]])
def test_cmasker_matches_reference_over_any_split(splits: list[int]) -> None:
    key = os.urandom(4)
    data = os.urandom(sum(splits))
    masker = fastmask.CMasker(key)
    out = b""
    offset = 0
    for size in splits:
        out += masker.process(data[offset:offset + size])
        offset += size
    assert out == reference_unmask(key, data)


def test_install_swaps_wsproto_masker() -> None:
    import webscale.protocol  # noqa: F401 - importing the protocol installs it

    expected = fastmask.CMasker if fastmask._apply_mask is not None else None
    if expected is not None:
        assert frame_protocol.XorMaskerSimple is fastmask.CMasker
    assert fastmask.CMasker(b"abcd").process(b"") == b""
