"""Per-address limits, sans-I/O: how many connections a client address holds and how fast
it opens them; the reasons a connection is refused before its upgrade.

How this works: `PerAddressLimits.admit(key, now)` is asked once per accepted TCP connection,
before TLS, and answers None (admitted, and counted against the address until `release`) or the
`Refusal` that turns it away. Two independent limits, both off by default (as nginx's
limit_conn and limit_req are):

* `max_connections`: connections an address may hold at once (handshaking or open). The count
  of an address is dropped from the table when it reaches zero, so the table holds only
  addresses with a connection open.
* `handshakes_per_second`: a token bucket per address, `burst` tokens deep (default: one
  second's worth, at least 1), refilled at that rate; each new connection takes a token. Buckets
  that have refilled completely carry no information and are dropped by `expire(now)`, which the
  gate calls every few seconds, so the table holds only addresses seen in the last
  burst / rate seconds.

Addresses are grouped by `address_key`: an IPv4 address is itself (an IPv4-mapped IPv6 address
counts as its IPv4 address); IPv6 clients are grouped by /64, the smallest prefix a network is
normally given, since one host may pick any address inside it (RFC 4941 privacy addresses).

The clock is passed in (`now`, the loop's monotonic time): nothing here reads one.
"""

from __future__ import annotations

import enum
import ipaddress
from typing import Any


class Refusal(enum.Enum):
    """Why a connection was refused or dropped; the value is the `reason` label in /metrics."""

    MAX_CONNECTIONS = "max_connections"          # --max-connections (at accept, or 503 at upgrade)
    DRAINING = "draining"                        # 503 to an upgrade during shutdown
    PER_IP_CONNECTIONS = "per_ip_connections"    # --max-connections-per-ip
    PER_IP_HANDSHAKE_RATE = "per_ip_handshake_rate"  # --max-handshakes-per-ip-per-s
    HANDSHAKE_SHARE = "handshake_share"          # the oldest handshaking socket, dropped for room
    PROXY_HEADER = "proxy_header"                # a balancer's PROXY header missing or malformed
    PROXY_UNTRUSTED = "proxy_untrusted"          # a PROXY header from an address not listed


def address_key(address: Any) -> str:
    """What per-address limits count by: the IPv4 address, or the IPv6 /64 (see the module)."""
    host = address[0] if isinstance(address, tuple) else str(address)
    if ":" not in host:
        return host
    try:
        ip = ipaddress.IPv6Address(host.partition("%")[0])
    except ValueError:
        return host
    if ip.ipv4_mapped is not None:
        return str(ip.ipv4_mapped)
    return f"{ipaddress.IPv6Address(int(ip) >> 64 << 64)}/64"


class TrustedNetworks:
    """The balancers' networks (--proxy-protocol-from CIDR ...): who may send a PROXY header."""

    __slots__ = ("networks",)

    def __init__(self, cidrs: tuple[str, ...]) -> None:
        """Raises ValueError naming a CIDR that does not parse."""
        networks = []
        for cidr in cidrs:
            try:
                networks.append(ipaddress.ip_network(cidr, strict=False))
            except ValueError as exc:
                raise ValueError(f"{cidr!r} is not an address or network: {exc}") from None
        self.networks = tuple(networks)

    def __contains__(self, host: object) -> bool:
        if not isinstance(host, str):
            return False
        try:
            ip = ipaddress.ip_address(host.partition("%")[0])
        except ValueError:
            return False
        if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
            ip = ip.ipv4_mapped  # a dual-stack listener sees IPv4 peers as ::ffff:a.b.c.d
        return any(ip in network for network in self.networks)


class PerAddressLimits:
    __slots__ = ("max_connections", "rate", "burst", "_open", "_buckets")

    def __init__(self, max_connections: int | None = None,
                 handshakes_per_second: float | None = None, burst: float | None = None) -> None:
        self.max_connections = max_connections
        self.rate = handshakes_per_second
        self.burst = burst if burst is not None else max(1.0, handshakes_per_second or 0.0)
        self._open: dict[str, int] = {}
        # key -> (tokens, when they were counted)
        self._buckets: dict[str, tuple[float, float]] = {}

    @property
    def counts_connections(self) -> bool:
        """Whether an admitted key must be `release`d when its connection closes."""
        return self.max_connections is not None

    def admit(self, key: str, now: float) -> Refusal | None:
        """None: admitted (and counted, see `counts_connections`); else why not."""
        limit = self.max_connections
        if limit is not None and self._open.get(key, 0) >= limit:
            return Refusal.PER_IP_CONNECTIONS
        rate = self.rate
        if rate is not None:
            tokens, since = self._buckets.get(key, (self.burst, now))
            tokens = min(self.burst, tokens + (now - since) * rate)
            if tokens < 1.0:
                self._buckets[key] = (tokens, now)
                return Refusal.PER_IP_HANDSHAKE_RATE
            self._buckets[key] = (tokens - 1.0, now)
        if limit is not None:
            self._open[key] = self._open.get(key, 0) + 1
        return None

    def release(self, key: str) -> None:
        """A connection admitted for `key` closed."""
        left = self._open.get(key, 0) - 1
        if left > 0:
            self._open[key] = left
        else:
            self._open.pop(key, None)

    def expire(self, now: float) -> int:
        """Drop the buckets that have refilled completely; how many were dropped."""
        rate = self.rate
        if rate is None or not self._buckets:
            return 0
        burst = self.burst
        full = [key for key, (tokens, since) in self._buckets.items()
                if tokens + (now - since) * rate >= burst]
        for key in full:
            del self._buckets[key]
        return len(full)

    def open_count(self, key: str) -> int:
        return self._open.get(key, 0)

    @property
    def tracked(self) -> tuple[int, int]:
        """(addresses with connections counted, addresses with a bucket): the tables' sizes."""
        return len(self._open), len(self._buckets)
