"""Rejection log lines: rate-limited to LINES_PER_SECOND, the next line saying how many were left
out, and remote addresses written the way a reader expects."""

from __future__ import annotations

import logging

import pytest

from webscale import rejections
from webscale.rejections import LINES_PER_SECOND, log_rejection, peer


def test_at_most_ten_lines_a_second_then_a_count(caplog: pytest.LogCaptureFixture,
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    now = [1000.0]
    monkeypatch.setattr(rejections.time, "monotonic", lambda: now[0])
    monkeypatch.setattr(rejections, "_window", rejections._Window())
    logger = logging.getLogger("test.rejections")
    with caplog.at_level(logging.INFO, logger="test.rejections"):
        written = [log_rejection(logger, "refused %s", i) for i in range(25)]
        assert written == [True] * LINES_PER_SECOND + [False] * (25 - LINES_PER_SECOND)
        now[0] += 1.0
        assert log_rejection(logger, "refused %s", "later")
    messages = [record.getMessage() for record in caplog.records]
    assert messages[:LINES_PER_SECOND] == [f"refused {i}" for i in range(LINES_PER_SECOND)]
    assert messages[LINES_PER_SECOND:] == [
        f"{25 - LINES_PER_SECOND} more rejection(s) not logged in the last second(s)",
        "refused later"]


def test_nothing_is_formatted_when_the_level_is_off(caplog: pytest.LogCaptureFixture) -> None:
    logger = logging.getLogger("test.rejections.quiet")
    with caplog.at_level(logging.WARNING, logger="test.rejections.quiet"):
        assert not log_rejection(logger, "refused %s", object())
    assert caplog.records == []


@pytest.mark.parametrize(("address", "text"), [
    (("192.0.2.7", 51000), "192.0.2.7:51000"),
    (("2001:db8::1", 443, 0, 0), "[2001:db8::1]:443"),
    ("/run/webscale.sock", "/run/webscale.sock"),
    (None, "None"),
])
def test_remote_addresses(address: object, text: str) -> None:
    assert peer(address) == text
