"""Server counters and histograms, owned by the loop thread.

Only the loop thread writes these (pool threads report through batch results the loop applies),
so plain integer attributes need no locks. `snapshot()` is what GET /stats serves.
"""

from __future__ import annotations

import bisect
from collections import Counter
from collections.abc import Iterable
from typing import Any

from .tls import FAILURE_REASONS
from .peer_limits import Refusal


class Histogram:
    """Cumulative-bucket histogram in the Prometheus sense; `bounds` are upper bounds."""

    __slots__ = ("bounds", "counts", "total", "count")

    def __init__(self, bounds: tuple[float, ...]) -> None:
        self.bounds = bounds
        self.counts = [0] * (len(bounds) + 1)  # the last bucket is +Inf
        self.total = 0.0
        self.count = 0

    def observe(self, value: float) -> None:
        self.counts[bisect.bisect_left(self.bounds, value)] += 1
        self.total += value
        self.count += 1

    def merge(self, counts: list[int] | tuple[int, ...], total: float) -> None:
        for i, n in enumerate(counts):
            self.counts[i] += n
        self.total += total
        self.count += sum(counts)

    def snapshot(self) -> dict[str, Any]:
        return {"bounds": list(self.bounds), "counts": list(self.counts), "sum": self.total,
                "count": self.count}


# Seconds. Handler time spans a 50 us decode to a 3 s database call; loop lag should stay in
# the sub-millisecond buckets on a healthy server.
HANDLER_BOUNDS = (0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25,
                  0.5, 1.0, 2.5, 5.0)
LOOP_LAG_BOUNDS = (0.0001, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0)


class Stats:
    __slots__ = ("connections_open", "connections_total", "connections_rejected",
                 "connections_rejected_by_reason", "tls_handshake_failures",
                 "tls_handshake_failures_by_reason", "upgrades_refused_by_reason",
                 "ws_handshake_failures", "handshake_timeouts", "http_requests",
                 "messages_received", "messages_decoded", "messages_handled",
                 "decode_errors", "handler_errors", "bytes_in", "bytes_out", "messages_out",
                 "in_flight", "pool_queue_depth", "pool_gil_bound", "paused_connections",
                 "accept_pauses", "memory_sheds", "closes_by_code", "handler_seconds",
                 "loop_lag_seconds",
                 "started_at")

    def __init__(self, started_at: float = 0.0) -> None:
        self.connections_open = 0
        self.connections_total = 0
        self.connections_rejected = 0
        # Every reason from the start, at 0: a counter that appears only once it moves is hard
        # to alert on.
        self.connections_rejected_by_reason: Counter[str] = Counter(
            dict.fromkeys((refusal.value for refusal in Refusal), 0))
        self.tls_handshake_failures = 0
        # Every reason present from the start, so /stats and /metrics show the zeros.
        self.tls_handshake_failures_by_reason: Counter[str] = Counter(
            dict.fromkeys(FAILURE_REASONS, 0))
        # Upgrades refused by policy (Origin, the --authorize hook), by reason.
        self.upgrades_refused_by_reason: Counter[str] = Counter()
        self.ws_handshake_failures = 0
        self.handshake_timeouts = 0
        self.http_requests = 0
        self.messages_received = 0
        self.messages_decoded = 0
        self.messages_handled = 0
        self.decode_errors = 0
        self.handler_errors = 0
        self.bytes_in = 0
        self.bytes_out = 0
        self.messages_out = 0
        self.in_flight = 0
        self.pool_queue_depth = 0
        self.pool_gil_bound = 1
        self.paused_connections = 0
        self.accept_pauses = 0
        self.memory_sheds = 0  # connections closed for the memory budget (budget.py)
        self.closes_by_code: Counter[int] = Counter()
        self.handler_seconds = Histogram(HANDLER_BOUNDS)
        self.loop_lag_seconds = Histogram(LOOP_LAG_BOUNDS)
        self.started_at = started_at

    def count_tls_failure(self, reason: str) -> None:
        self.tls_handshake_failures += 1
        self.tls_handshake_failures_by_reason[reason] += 1

    def reject(self, refusal: Refusal) -> None:
        """A connection refused (or dropped before its handshake finished), by reason."""
        self.connections_rejected += 1
        self.connections_rejected_by_reason[refusal.value] += 1

    def snapshot(self) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for name in self.__slots__:
            value = getattr(self, name)
            if isinstance(value, Histogram):
                out[name] = value.snapshot()
            elif isinstance(value, Counter):
                out[name] = {str(code): n for code, n in sorted(value.items())}
            else:
                out[name] = value
        return out


# Keys of a snapshot that describe one process rather than add up over several.
_PER_PROCESS = frozenset({"pid", "worker", "started_at", "uptime_seconds"})


def sum_snapshots(snapshots: Iterable[dict[str, Any]]) -> dict[str, Any]:
    """Several processes' snapshots as one: numbers add up, counters by key, histograms bucket
    by bucket (every process uses the same bounds); per-process keys (pid, worker, uptime) are
    left out for the caller to fill in."""
    out: dict[str, Any] = {}
    for snapshot in snapshots:
        for key, value in snapshot.items():
            if key in _PER_PROCESS or value is None or isinstance(value, bool | str | list):
                continue
            if isinstance(value, dict):
                into = out.setdefault(key, {})
                if "bounds" in value:  # a Histogram.snapshot()
                    if not into:
                        into.update(bounds=list(value["bounds"]), counts=[0] * len(value["counts"]),
                                    sum=0.0, count=0)
                    into["counts"] = [a + b for a, b in zip(into["counts"], value["counts"],
                                                            strict=True)]
                    into["sum"] += value["sum"]
                    into["count"] += value["count"]
                else:
                    for name, count in value.items():
                        into[name] = into.get(name, 0) + count
            else:
                out[key] = out.get(key, 0) + value
    return out
