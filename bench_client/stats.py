"""Latency statistics that merge across worker processes.

How this works: each worker records send lateness and ping round-trip times into a
`LatencyHistogram`, a fixed log-linear bucket layout (the HDR-histogram idea): values are kept in
whole microseconds; below 128 µs every value has its own bucket, above that each power of two is
split into 64 equal buckets. A bucket therefore spans at most 1/64 of its lower bound, and a
percentile is reported as the bucket's midpoint, so it is within 1/128 (0.8%) of the exact
nearest-rank value, or within 1 µs for small values. Because every process uses the same layout,
merging is adding counts, which is exact: the merged percentile is the one the raw samples of all
processes would give, to within the same 0.8%. Min and max are tracked exactly.

`percentile` computes the exact nearest-rank percentile of raw samples; the unit tests use it as
the reference for the histogram.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from typing import Any

EXACT_BELOW = 128  # microseconds; values below this have one bucket each
SUB_BUCKETS = 64  # buckets per power of two above EXACT_BELOW
RELATIVE_ERROR = 1 / (2 * SUB_BUCKETS)  # midpoint of a bucket 1/64 wide


def percentile(samples: Sequence[float], q: float) -> float:
    """Exact nearest-rank percentile: the smallest value with at least q% of samples <= it."""
    if not samples:
        raise ValueError("percentile of no samples")
    if not 0 <= q <= 100:
        raise ValueError(f"percentile {q} outside 0..100")
    ordered = sorted(samples)
    rank = max(1, math.ceil(q / 100 * len(ordered)))
    return ordered[rank - 1]


def bucket_index(micros: int) -> int:
    if micros < EXACT_BELOW:
        return micros
    shift = micros.bit_length() - 7  # >= 1 here; leaves the top 7 bits: 64..127
    return EXACT_BELOW + (shift - 1) * SUB_BUCKETS + (micros >> shift) - SUB_BUCKETS


def bucket_bounds(index: int) -> tuple[int, int]:
    """[low, high) of the microsecond values that land in bucket `index`."""
    if index < EXACT_BELOW:
        return index, index + 1
    shift = (index - EXACT_BELOW) // SUB_BUCKETS + 1
    top = (index - EXACT_BELOW) % SUB_BUCKETS + SUB_BUCKETS
    return top << shift, (top + 1) << shift


class LatencyHistogram:
    """Counts of durations in fixed buckets; see the module docstring for the error bound."""

    __slots__ = ("count", "counts", "max_micros", "min_micros", "total_micros")

    def __init__(self) -> None:
        self.counts: dict[int, int] = {}
        self.count = 0
        self.total_micros = 0
        self.min_micros: int | None = None
        self.max_micros = 0

    def record(self, seconds: float) -> None:
        micros = int(seconds * 1_000_000) if seconds > 0 else 0
        index = bucket_index(micros)
        counts = self.counts
        counts[index] = counts.get(index, 0) + 1
        self.count += 1
        self.total_micros += micros
        self.max_micros = max(self.max_micros, micros)
        if self.min_micros is None or micros < self.min_micros:
            self.min_micros = micros

    def record_many(self, seconds: Iterable[float]) -> None:
        for value in seconds:
            self.record(value)

    def merge(self, other: LatencyHistogram) -> None:
        for index, n in other.counts.items():
            self.counts[index] = self.counts.get(index, 0) + n
        self.count += other.count
        self.total_micros += other.total_micros
        self.max_micros = max(self.max_micros, other.max_micros)
        if other.min_micros is not None and (
            self.min_micros is None or other.min_micros < self.min_micros
        ):
            self.min_micros = other.min_micros

    def percentile(self, q: float) -> float | None:
        """Nearest-rank percentile in seconds (bucket midpoint, clamped to the exact min/max)."""
        if not self.count:
            return None
        if not 0 <= q <= 100:
            raise ValueError(f"percentile {q} outside 0..100")
        rank = max(1, math.ceil(q / 100 * self.count))
        seen = 0
        for index in sorted(self.counts):
            seen += self.counts[index]
            if seen >= rank:
                low, high = bucket_bounds(index)
                mid = low if high - low == 1 else (low + high) / 2
                assert self.min_micros is not None
                return min(max(mid, self.min_micros), self.max_micros) / 1_000_000
        raise AssertionError("histogram counts do not add up")  # pragma: no cover

    def max_seconds(self) -> float | None:
        return self.max_micros / 1_000_000 if self.count else None

    def summary(self) -> dict[str, float | int | None]:
        return {
            "count": self.count,
            "p50": self.percentile(50),
            "p99": self.percentile(99),
            "max": self.max_seconds(),
            "mean": self.total_micros / self.count / 1_000_000 if self.count else None,
        }

    def to_dict(self) -> dict[str, Any]:
        return {
            "counts": dict(self.counts),
            "count": self.count,
            "total_micros": self.total_micros,
            "min_micros": self.min_micros,
            "max_micros": self.max_micros,
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> LatencyHistogram:
        histogram = cls()
        histogram.counts = {int(k): int(v) for k, v in data["counts"].items()}
        histogram.count = int(data["count"])
        histogram.total_micros = int(data["total_micros"])
        histogram.min_micros = data["min_micros"]
        histogram.max_micros = int(data["max_micros"])
        return histogram
