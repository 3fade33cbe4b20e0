"""Open-file limit raising and the max-connections budget check."""

from __future__ import annotations

import resource
from collections.abc import Iterator

import pytest

from webscale import limits
from webscale.limits import check_connection_budget, raise_nofile_limit


@pytest.fixture
def restore_nofile() -> Iterator[tuple[int, int]]:
    original = resource.getrlimit(resource.RLIMIT_NOFILE)
    yield original
    resource.setrlimit(resource.RLIMIT_NOFILE, original)


def test_raises_soft_to_hard(restore_nofile: tuple[int, int]) -> None:
    _, hard = restore_nofile
    if hard == resource.RLIM_INFINITY:
        pytest.skip("hard limit is unlimited here; covered by the fake below")
    lowered = min(256, hard)
    resource.setrlimit(resource.RLIMIT_NOFILE, (lowered, hard))
    assert raise_nofile_limit() == (hard, hard)
    assert resource.getrlimit(resource.RLIMIT_NOFILE) == (hard, hard)


def test_already_at_hard_is_a_no_op(restore_nofile: tuple[int, int]) -> None:
    soft, hard = raise_nofile_limit()
    assert raise_nofile_limit() == (soft, hard)


class FakeResource:
    """Stands in for `resource` with an unlimited hard limit and a kernel cap of 65,536."""

    RLIMIT_NOFILE = resource.RLIMIT_NOFILE
    RLIM_INFINITY = resource.RLIM_INFINITY

    def __init__(self, soft: int, cap: int) -> None:
        self.soft, self.cap = soft, cap

    def getrlimit(self, which: int) -> tuple[int, int]:
        return self.soft, self.RLIM_INFINITY

    def setrlimit(self, which: int, value: tuple[int, int]) -> None:
        if value[0] > self.cap:
            raise ValueError("not allowed to raise maximum limit")
        self.soft = value[0]


def test_unlimited_hard_limit_falls_back_to_what_the_kernel_allows(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    fake = FakeResource(soft=1024, cap=65_536)
    monkeypatch.setattr(limits, "resource", fake)
    monkeypatch.setattr(limits, "_linux_nr_open", lambda: 1_073_741_816)
    assert raise_nofile_limit() == (65_536, resource.RLIM_INFINITY)


def test_nothing_allowed_leaves_the_limit_alone(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    fake = FakeResource(soft=256, cap=0)
    monkeypatch.setattr(limits, "resource", fake)
    assert raise_nofile_limit() == (256, resource.RLIM_INFINITY)
    assert "could not raise the open-files limit" in caplog.text


def test_budget_that_fits_is_silent() -> None:
    assert check_connection_budget(10_000, soft=20_000) is None
    assert check_connection_budget(19_936, soft=20_000) is None  # exactly 64 to spare


def test_budget_that_does_not_fit_says_how_many_do() -> None:
    warning = check_connection_budget(20_000, soft=20_000)
    assert warning is not None
    assert "20000" in warning
    assert "at most 19936 clients" in warning
    assert check_connection_budget(100, soft=1024, reserve=1000) is not None


def test_budget_without_cap_or_limit_is_silent() -> None:
    assert check_connection_budget(0, soft=1024) is None
    assert check_connection_budget(10**7, soft=resource.RLIM_INFINITY) is None


def test_connections_by_memory_keep_a_1_gb_pi_alive() -> None:
    assert limits.memory_connection_limit(1 << 30) == 16_384  # half of 1 GiB, 32 KiB each
    assert limits.memory_connection_limit(1 << 30, workers=4) == 4_096
    assert limits.memory_connection_limit(None) is None
    assert limits.memory_connection_limit(4096) == 1
