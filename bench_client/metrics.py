"""What one worker counts, in a shape that crosses the pipe to the parent and merges there.

Counters are plain ints bumped on the hot path; `snapshot()` turns them (and the histograms, see
`stats.py`) into a dict of builtins that pickles cheaply and `merge_snapshots` adds up exactly.
"""

from __future__ import annotations

from collections import Counter
from typing import Any

from bench_client.stats import LatencyHistogram

COUNTER_NAMES = (
    "attempted",  # connections whose TCP connect was started
    "established",  # connections that completed the WebSocket handshake
    "failed",  # connections that never got established (reason in failures)
    "dropped",  # established connections lost before we closed them (reason in failures)
    "closed_clean",  # our close 1000 answered by the server's close frame
    "closed_unanswered",  # our close 1000 not answered before the deadline or EOF
    "messages_scheduled",  # sends whose time came while the connection was open
    "messages_written",  # frames fully handed to the kernel
    "messages_received",  # data messages the server sent us
    "bytes_written",
    "pings_sent",
    "pongs_received",  # pings answered (a pong with the token of a ping we still waited for)
    "pings_lost",  # pings given up on: 8 newer ones sent, or the connection ended first
)


class WorkerMetrics:
    def __init__(self) -> None:
        self.attempted = 0
        self.established = 0
        self.failed = 0
        self.dropped = 0
        self.closed_clean = 0
        self.closed_unanswered = 0
        self.messages_scheduled = 0
        self.messages_written = 0
        self.messages_received = 0
        self.bytes_written = 0
        self.pings_sent = 0
        self.pongs_received = 0
        self.pings_lost = 0
        self.failure_reasons: Counter[str] = Counter()
        # `lateness` is where sends record; at the start of steady state the worker moves the
        # ramp's samples to `lateness_ramp` and starts `lateness` afresh, so the headline
        # numbers are not mixed with the (expected) lateness while the server handshakes
        self.lateness = LatencyHistogram()
        self.lateness_ramp = LatencyHistogram()
        # Likewise for ping round trips: a server busy with thousands of TLS handshakes answers
        # pings late, which says nothing about its steady state.
        self.ping_rtt = LatencyHistogram()
        self.ping_rtt_ramp = LatencyHistogram()
        # monotonic clock, comparable across processes on Linux
        self.first_attempt_at: float | None = None
        self.last_established_at: float | None = None

    def record_failure(self, reason: str, established: bool) -> None:
        if established:
            self.dropped += 1
        else:
            self.failed += 1
        self.failure_reasons[reason] += 1

    def snapshot(self) -> dict[str, Any]:
        data: dict[str, Any] = {name: getattr(self, name) for name in COUNTER_NAMES}
        data["failure_reasons"] = dict(self.failure_reasons)
        data["lateness"] = self.lateness.to_dict()
        data["lateness_ramp"] = self.lateness_ramp.to_dict()
        data["ping_rtt"] = self.ping_rtt.to_dict()
        data["ping_rtt_ramp"] = self.ping_rtt_ramp.to_dict()
        data["first_attempt_at"] = self.first_attempt_at
        data["last_established_at"] = self.last_established_at
        return data


def merge_snapshots(snapshots: list[dict[str, Any]]) -> dict[str, Any]:
    """Add up worker snapshots; histograms merge exactly (same bucket layout everywhere)."""
    merged: dict[str, Any] = {name: 0 for name in COUNTER_NAMES}
    reasons: Counter[str] = Counter()
    lateness = LatencyHistogram()
    lateness_ramp = LatencyHistogram()
    ping_rtt = LatencyHistogram()
    ping_rtt_ramp = LatencyHistogram()
    firsts: list[float] = []
    lasts: list[float] = []
    for snap in snapshots:
        for name in COUNTER_NAMES:
            merged[name] += snap[name]
        reasons.update(snap["failure_reasons"])
        lateness.merge(LatencyHistogram.from_dict(snap["lateness"]))
        lateness_ramp.merge(LatencyHistogram.from_dict(snap["lateness_ramp"]))
        ping_rtt.merge(LatencyHistogram.from_dict(snap["ping_rtt"]))
        ping_rtt_ramp.merge(LatencyHistogram.from_dict(snap["ping_rtt_ramp"]))
        if snap["first_attempt_at"] is not None:
            firsts.append(snap["first_attempt_at"])
        if snap["last_established_at"] is not None:
            lasts.append(snap["last_established_at"])
    merged["failure_reasons"] = dict(reasons.most_common())
    merged["lateness"] = lateness
    merged["lateness_ramp"] = lateness_ramp
    merged["ping_rtt"] = ping_rtt
    merged["ping_rtt_ramp"] = ping_rtt_ramp
    merged["first_attempt_at"] = min(firsts) if firsts else None
    merged["last_established_at"] = max(lasts) if lasts else None
    return merged
