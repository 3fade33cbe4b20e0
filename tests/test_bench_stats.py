"""bench_client's statistics: exact percentiles, and the histogram's bounded error and merging."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from bench_client.metrics import WorkerMetrics, merge_snapshots
from bench_client.stats import (
    EXACT_BELOW,
    RELATIVE_ERROR,
    LatencyHistogram,
    bucket_bounds,
    bucket_index,
    percentile,
)


def test_exact_percentile_nearest_rank_on_known_input() -> None:
    samples = [float(n) for n in range(100, 0, -1)]  # 1..100, unsorted
    assert percentile(samples, 50) == 50
    assert percentile(samples, 99) == 99
    assert percentile(samples, 100) == 100
    assert percentile(samples, 0) == 1
    assert percentile(samples, 0.5) == 1
    assert percentile(samples, 1.5) == 2
    assert percentile([7.0], 99) == 7.0
    # nearest rank, not interpolation: p50 of four values is the second one
    assert percentile([1.0, 2.0, 3.0, 4.0], 50) == 2.0


def test_exact_percentile_rejects_bad_input() -> None:
    with pytest.raises(ValueError):
        percentile([], 50)
    with pytest.raises(ValueError):
        percentile([1.0], 101)


def test_histogram_exact_below_128_microseconds() -> None:
    histogram = LatencyHistogram()
    histogram.record_many(n / 1_000_000 for n in range(1, 101))  # 1..100 us
    assert histogram.percentile(50) == pytest.approx(50e-6)
    assert histogram.percentile(99) == pytest.approx(99e-6)
    assert histogram.max_seconds() == pytest.approx(100e-6)
    assert histogram.count == 100


def test_histogram_known_input_in_milliseconds() -> None:
    histogram = LatencyHistogram()
    histogram.record_many(n / 1000 for n in range(1, 1001))  # 1 ms .. 1 s
    assert histogram.percentile(50) == pytest.approx(0.500, rel=RELATIVE_ERROR)
    assert histogram.percentile(99) == pytest.approx(0.990, rel=RELATIVE_ERROR)
    assert histogram.max_seconds() == pytest.approx(1.0)
    summary = histogram.summary()
    assert summary["count"] == 1000
    assert summary["mean"] == pytest.approx(0.5005, rel=1e-6)


def test_empty_histogram_reports_none() -> None:
    histogram = LatencyHistogram()
    assert histogram.percentile(50) is None
    assert histogram.summary() == {"count": 0, "p50": None, "p99": None, "max": None,
                                   "mean": None}


def test_negative_durations_count_as_zero() -> None:
    histogram = LatencyHistogram()
    histogram.record(-0.5)
    assert histogram.percentile(50) == 0.0


@given(st.integers(min_value=0, max_value=10**12))
def test_every_value_lands_inside_its_bucket(micros: int) -> None:
    low, high = bucket_bounds(bucket_index(micros))
    assert low <= micros < high
    if micros >= EXACT_BELOW:
        assert (high - low) / low <= 2 * RELATIVE_ERROR


@given(st.lists(st.floats(min_value=0, max_value=100), min_size=1, max_size=300),
       st.floats(min_value=0, max_value=100))
def test_histogram_percentile_within_stated_error(values: list[float], q: float) -> None:
    histogram = LatencyHistogram()
    histogram.record_many(values)
    exact = percentile([int(v * 1_000_000) / 1_000_000 for v in values], q)
    got = histogram.percentile(q)
    assert got is not None
    assert got == pytest.approx(exact, rel=RELATIVE_ERROR, abs=1e-6)


@given(st.lists(st.floats(min_value=0, max_value=10), max_size=200),
       st.lists(st.floats(min_value=0, max_value=10), max_size=200))
def test_merging_equals_recording_everything_in_one(a: list[float], b: list[float]) -> None:
    left, right, both = LatencyHistogram(), LatencyHistogram(), LatencyHistogram()
    left.record_many(a)
    right.record_many(b)
    both.record_many(a + b)
    left.merge(LatencyHistogram.from_dict(right.to_dict()))  # through the pipe's shape
    assert left.to_dict() == both.to_dict()
    for q in (50, 99, 100):
        assert left.percentile(q) == both.percentile(q)


def test_worker_snapshots_merge_counters_and_reasons() -> None:
    first, second = WorkerMetrics(), WorkerMetrics()
    first.attempted, second.attempted = 3, 4
    first.messages_written, second.messages_written = 10, 5
    first.record_failure("connect: ECONNREFUSED", established=False)
    second.record_failure("connect: ECONNREFUSED", established=False)
    second.record_failure("dropped: server closed with 1011", established=True)
    first.lateness.record(0.001)
    second.lateness.record(0.003)
    first.first_attempt_at, second.first_attempt_at = 5.0, 4.0
    merged = merge_snapshots([first.snapshot(), second.snapshot()])
    assert merged["attempted"] == 7
    assert merged["messages_written"] == 15
    assert merged["failed"] == 2
    assert merged["dropped"] == 1
    assert merged["failure_reasons"] == {"connect: ECONNREFUSED": 2,
                                         "dropped: server closed with 1011": 1}
    assert merged["lateness"].count == 2
    assert merged["lateness"].max_seconds() == pytest.approx(0.003)
    assert merged["first_attempt_at"] == 4.0
