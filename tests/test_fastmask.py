"""The C unmask gives wsproto exactly what its own masker gives, however a payload is split."""

from __future__ import annotations

import os

import pytest

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


def test_importing_the_protocol_patches_nothing_and_install_does() -> None:
    import subprocess
    import sys

    # A fresh interpreter: importing webscale's protocol must not patch wsproto (no import-time
    # side effects); install() does.
    code = ("import webscale.protocol; from wsproto import frame_protocol as f; "
            "from webscale import fastmask; before = f.XorMaskerSimple is fastmask.CMasker; "
            "installed = fastmask.install(); "
            "print(before, installed, f.XorMaskerSimple is fastmask.CMasker)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True).stdout.split()
    expected = fastmask._apply_mask is not None
    assert out == ["False", str(expected), str(expected)]
    assert fastmask.CMasker(b"abcd").process(b"") == b""
