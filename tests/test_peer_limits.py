"""peer_limits.py: per-address counts and token buckets, address keys, trusted networks (no I/O)."""

from __future__ import annotations

import pytest

from webscale.peer_limits import PerAddressLimits, Refusal, TrustedNetworks, address_key


def test_connection_count_per_address_and_release() -> None:
    limits = PerAddressLimits(max_connections=2)
    assert limits.admit("10.0.0.1", 0.0) is None
    assert limits.admit("10.0.0.1", 0.0) is None
    assert limits.admit("10.0.0.1", 0.0) is Refusal.PER_IP_CONNECTIONS
    assert limits.admit("10.0.0.2", 0.0) is None  # another address is not affected
    limits.release("10.0.0.1")
    assert limits.admit("10.0.0.1", 0.0) is None
    assert limits.open_count("10.0.0.1") == 2
    for _ in range(2):
        limits.release("10.0.0.1")
    limits.release("10.0.0.2")
    assert limits.tracked == (0, 0)  # an address at 0 leaves no entry behind


def test_token_bucket_burst_and_refill() -> None:
    limits = PerAddressLimits(handshakes_per_second=2.0)  # burst 2
    assert not limits.counts_connections
    assert [limits.admit("a", 0.0) for _ in range(3)] == [None, None,
                                                          Refusal.PER_IP_HANDSHAKE_RATE]
    assert limits.admit("a", 0.25) is Refusal.PER_IP_HANDSHAKE_RATE  # half a token so far
    assert limits.admit("a", 0.5) is None  # one token back after 0.5 s at 2/s
    assert limits.admit("a", 0.5) is Refusal.PER_IP_HANDSHAKE_RATE
    assert limits.admit("b", 0.5) is None


def test_refused_attempts_do_not_borrow_tokens() -> None:
    limits = PerAddressLimits(handshakes_per_second=1.0)
    assert limits.admit("a", 0.0) is None
    for t in (0.1, 0.2, 0.3, 0.9):
        assert limits.admit("a", t) is Refusal.PER_IP_HANDSHAKE_RATE
    assert limits.admit("a", 1.0) is None  # hammering did not push the next token back


def test_fractional_rate_has_a_burst_of_one() -> None:
    limits = PerAddressLimits(handshakes_per_second=0.5)
    assert limits.burst == 1.0
    assert limits.admit("a", 0.0) is None
    assert limits.admit("a", 1.9) is Refusal.PER_IP_HANDSHAKE_RATE
    assert limits.admit("a", 2.0) is None


def test_count_is_checked_before_a_token_is_spent() -> None:
    limits = PerAddressLimits(max_connections=1, handshakes_per_second=1.0, burst=5.0)
    assert limits.admit("a", 0.0) is None  # 4 tokens left
    for _ in range(3):
        assert limits.admit("a", 0.0) is Refusal.PER_IP_CONNECTIONS  # no token spent
    for _ in range(4):
        limits.release("a")
        assert limits.admit("a", 0.0) is None
    limits.release("a")
    assert limits.admit("a", 0.0) is Refusal.PER_IP_HANDSHAKE_RATE  # all 5 spent


def test_full_buckets_expire() -> None:
    limits = PerAddressLimits(handshakes_per_second=10.0)  # burst 10, a token back per 0.1 s
    for i in range(1000):
        limits.admit(f"10.0.{i // 256}.{i % 256}", 0.0)
    limits.admit("busy", 0.0)
    for _ in range(9):
        limits.admit("busy", 0.95)
    assert limits.tracked == (0, 1001)
    assert limits.expire(0.05) == 0
    assert limits.expire(1.0) == 1000  # every address seen once has refilled
    assert limits.tracked == (0, 1)  # "busy" (1 token at 0.95 s) is still short of its burst
    assert limits.expire(2.0) == 1
    assert limits.tracked == (0, 0)


@pytest.mark.parametrize(("address", "key"), [
    (("192.0.2.7", 5000), "192.0.2.7"),
    (("::ffff:192.0.2.7", 5000, 0, 0), "192.0.2.7"),
    (("2001:db8:1:2:aaaa:bbbb:cccc:dddd", 5000, 0, 0), "2001:db8:1:2::/64"),
    (("2001:db8:1:2::1", 1), "2001:db8:1:2::/64"),
    (("fe80::1%eth0", 1, 0, 2), "fe80::/64"),
    ("192.0.2.9", "192.0.2.9"),
])
def test_address_key(address: object, key: str) -> None:
    assert address_key(address) == key


def test_trusted_networks() -> None:
    trusted = TrustedNetworks(("10.0.0.0/24", "192.0.2.7", "2001:db8::/32"))
    assert "10.0.0.200" in trusted
    assert "192.0.2.7" in trusted and "192.0.2.8" not in trusted
    assert "::ffff:10.0.0.1" in trusted  # an IPv4 peer on a dual-stack listener
    assert "2001:db8:ffff::1" in trusted and "2001:db9::1" not in trusted
    assert "not an address" not in trusted
    with pytest.raises(ValueError, match=r"'10\.0\.0\.0/33'"):
        TrustedNetworks(("10.0.0.0/33",))
