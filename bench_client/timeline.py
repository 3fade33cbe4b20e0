"""The run over time, second by second: what `--html` draws and the JSON's `timeline` holds.

How this works: every worker already reports its cumulative counters to the parent once a
second, stamped with the time it took them (`at`, one monotonic clock for all processes). It
adds what changed in its latency histograms since its last report (`HistogramDelta`: a diff of
bucket counts, once a second, nothing per message) and its failures by reason. The parent's
`Timeline` keeps every report; `series()` then lays one-second grid points over the run and, for
each worker, interpolates its cumulative counts linearly between the two reports around each
point (workers report at their own moments, so summing raw reports per second would jitter by a
whole second's worth of one worker), adds the workers up, and differentiates the message counts
into rates. A report's histogram delta belongs to the second its `at` falls in.
"""

from __future__ import annotations

import bisect
import math
from typing import Any

from bench_client.stats import LatencyHistogram, bucket_bounds

# Cumulative counters a progress report carries that the timeline draws.
COUNTS = ("established", "failed", "dropped", "open", "messages_scheduled", "messages_written")
HISTOGRAMS = ("lateness", "ping_rtt")


class HistogramDelta:
    """What one of a worker's histograms gained since the last call (bucket -> count)."""

    def __init__(self) -> None:
        self._histogram: LatencyHistogram | None = None
        self._seen: dict[int, int] = {}

    def since_last(self, histogram: LatencyHistogram) -> dict[int, int]:
        if histogram is not self._histogram:  # replaced (the steady state starts afresh)
            self._histogram, self._seen = histogram, {}
        seen = self._seen
        delta = {index: n - seen.get(index, 0) for index, n in histogram.counts.items()
                 if n != seen.get(index, 0)}
        self._seen = dict(histogram.counts)
        return delta


def histogram_from_counts(counts: dict[int, int]) -> LatencyHistogram:
    """A histogram of bucket counts alone: min and max are the outer buckets' bounds."""
    histogram = LatencyHistogram()
    if not counts:
        return histogram
    histogram.counts = dict(counts)
    histogram.count = sum(counts.values())
    low, high = min(counts), max(counts)
    histogram.min_micros = bucket_bounds(low)[0]
    histogram.max_micros = bucket_bounds(high)[1] - 1
    histogram.total_micros = sum(sum(bucket_bounds(i)) // 2 * n for i, n in counts.items())
    return histogram


class Timeline:
    """Every worker's progress reports, turned into per-second series at the end."""

    def __init__(self, started_at: float) -> None:
        self.started_at = started_at
        self._reports: dict[int, list[tuple[float, dict[str, float]]]] = {}
        self._reasons: dict[int, list[tuple[float, dict[str, int]]]] = {}
        self._histograms: dict[str, dict[int, dict[int, int]]] = {h: {} for h in HISTOGRAMS}

    def add(self, worker: int, report: dict[str, Any]) -> None:
        at = report["at"] - self.started_at
        self._reports.setdefault(worker, []).append(
            (at, {name: float(report[name]) for name in COUNTS}))
        self._reasons.setdefault(worker, []).append((at, dict(report["failure_reasons"])))
        second = max(0, math.ceil(at) - 1)  # the delta covers the second before `at`
        for name in HISTOGRAMS:
            bucket = self._histograms[name].setdefault(second, {})
            for index, n in report[name].items():
                bucket[int(index)] = bucket.get(int(index), 0) + n

    def series(self, duration: float) -> dict[str, Any]:
        """Per-second series over [0, duration] seconds from the start of the run."""
        seconds = list(range(math.ceil(duration) + 1))
        totals = {name: [0.0] * len(seconds) for name in COUNTS}
        for reports in self._reports.values():
            times = [at for at, _ in reports]
            for i, t in enumerate(seconds):
                for name in COUNTS:
                    totals[name][i] += _interpolate(times, reports, t, name)
        out: dict[str, Any] = {"t": seconds}
        for name in ("established", "failed", "dropped", "open"):
            out[name] = [round(v) for v in totals[name]]
        for name in ("messages_scheduled", "messages_written"):
            values = totals[name]
            out[f"{name}_per_s"] = [0.0] + [round(values[i] - values[i - 1], 1)
                                            for i in range(1, len(values))]
        for name in HISTOGRAMS:
            per_second = self._histograms[name]
            for q in (50, 99):
                out[f"{name}_p{q}_s"] = [
                    histogram_from_counts(per_second[s]).percentile(q) if per_second.get(s)
                    else None for s in seconds]
        out["failures_by_reason_per_s"] = self._reasons_per_second(seconds)
        return out

    def _reasons_per_second(self, seconds: list[int]) -> dict[str, list[int]]:
        """New failures and drops by reason in each second (from each worker's last report)."""
        cumulative: dict[str, list[int]] = {}
        for reports in self._reasons.values():
            times = [at for at, _ in reports]
            for i, t in enumerate(seconds):
                index = bisect.bisect_right(times, t) - 1
                if index < 0:
                    continue
                for reason, n in reports[index][1].items():
                    cumulative.setdefault(reason, [0] * len(seconds))[i] += n
        return {reason: [values[0]] + [values[i] - values[i - 1] for i in range(1, len(values))]
                for reason, values in cumulative.items()}


def _interpolate(times: list[float], reports: list[tuple[float, dict[str, float]]], t: float,
                 name: str) -> float:
    """A worker's cumulative `name` at time t: linear between its reports, flat outside."""
    index = bisect.bisect_right(times, t)
    if index == 0:
        return 0.0
    if index == len(times):
        return reports[-1][1][name]
    (t0, before), (t1, after) = reports[index - 1], reports[index]
    if t1 <= t0:
        return after[name]
    return before[name] + (after[name] - before[name]) * (t - t0) / (t1 - t0)
