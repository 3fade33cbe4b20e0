"""bench_client's statistics: exact percentiles, the histogram's bounded error and merging, the
live rate, and what the summary shows."""

from __future__ import annotations

import io
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from bench_client.config import BenchConfig
from bench_client.metrics import WorkerMetrics, merge_snapshots
from bench_client.report import ProgressPrinter, RateWindow, build_report, render_table
from bench_client.timeline import HistogramDelta, Timeline, histogram_from_counts
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


# -- the live rate and the report's rows --------------------------------------------------------


def test_live_rate_is_smooth_when_workers_report_once_a_second_at_their_own_moments() -> None:
    # Two workers writing 500 messages/s each, reporting once a second, half a second apart;
    # the screen is redrawn every 0.1 s. Raw totals between redraws read 0 or ~5,000/s.
    window = RateWindow(window=5.0)
    rates = []
    for tick in range(1, 201):  # 20 s of redraws
        now = tick / 10
        for worker, offset in ((0, 0.0), (1, 0.5)):
            if tick % 10 == int(offset * 10):
                window.add(worker, now, int(500 * now))
        if now >= 2:
            rates.append(window.rate())
    assert min(rates) == pytest.approx(1000, rel=0.01)
    assert max(rates) == pytest.approx(1000, rel=0.01)


def test_progress_line_prints_the_rate_it_is_given() -> None:
    stream = io.StringIO()
    printer = ProgressPrinter(stream, clients=10, every=1.0)
    totals = {"open": 10, "established": 10, "failed": 0, "dropped": 0, "messages_written": 42}
    printer.update(3.0, totals, "steady", 1234.4)
    printer.update(3.5, totals, "steady", 0.0)  # within `every` of the last line: not printed
    assert stream.getvalue().count("\n") == 1
    assert "1234 msg/s, 42 written" in stream.getvalue()


def _report(ping_sample: int, rate: float, **counters: int) -> dict[str, Any]:
    metrics = WorkerMetrics()
    for name, value in counters.items():
        setattr(metrics, name, value)
    config = BenchConfig(url="wss://127.0.0.1:1/", clients=10, rate=rate,
                         ping_sample=ping_sample)
    merged = merge_snapshots([metrics.snapshot()])
    return build_report(config, 1, merged, 0.0, 1.0, 2.0, 3.0,
                        {"user_s": 0.1, "system_s": 0.0}, False, 0)


def test_summary_has_no_empty_ping_rows_when_no_pings_were_asked_for() -> None:
    quiet = render_table(_report(ping_sample=0, rate=1.0))
    assert "ping" not in quiet.lower()
    assert "send lateness" in quiet
    idle = render_table(_report(ping_sample=0, rate=0.0))
    assert "lateness" not in idle  # --rate 0 sends nothing to be late with
    report = _report(ping_sample=5, rate=1.0, pings_sent=12, pongs_received=9, pings_lost=3)
    assert report["pings"] == {"sent": 12, "answered": 9, "lost": 3}
    table = render_table(report)
    assert "pings sent / answered / lost" in table and "12 / 9 / 3" in table
    assert "ping RTT p50 / p99 / max" in table


# -- the timeline behind --html ------------------------------------------------------------------


def _progress(at: float, written: int, reasons: dict[str, int] | None = None,
              lateness: dict[int, int] | None = None) -> dict[str, Any]:
    return {"at": at, "established": 10, "failed": 0, "dropped": 0, "open": 10,
            "messages_scheduled": written, "messages_written": written,
            "failure_reasons": reasons or {}, "lateness": lateness or {}, "ping_rtt": {}}


def test_timeline_rates_are_exact_when_workers_report_at_their_own_moments() -> None:
    timeline = Timeline(started_at=100.0)
    for k in range(1, 11):  # worker 0 at 100.3, 101.3, ...; worker 1 at 100.8, 101.8, ...
        timeline.add(0, _progress(100.0 + k - 0.7, 300 * (k - 0.7)))
        timeline.add(1, _progress(100.0 + k - 0.2, 200 * (k - 0.2),
                                  {"dropped: server closed with 1001": 1} if k >= 5 else None))
    series = timeline.series(duration=9.0)
    assert series["t"] == list(range(10))
    assert series["messages_written_per_s"][2:9] == [500.0] * 7  # 300/s + 200/s, no jitter
    drops = series["failures_by_reason_per_s"]["dropped: server closed with 1001"]
    assert sum(drops) == 1 and drops[5] == 1  # worker 1's report at 104.8 lands in second 5


def test_histogram_delta_reports_only_what_came_since_the_last_report() -> None:
    delta = HistogramDelta()
    histogram = LatencyHistogram()
    histogram.record_many([0.001, 0.001, 0.010])
    first = delta.since_last(histogram)
    assert sum(first.values()) == 3
    histogram.record(0.010)
    assert delta.since_last(histogram) == {bucket_index(10_000): 1}
    fresh = LatencyHistogram()  # the steady state starts a new histogram
    fresh.record(0.002)
    assert delta.since_last(fresh) == {bucket_index(2_000): 1}
    assert histogram_from_counts(first).percentile(50) == pytest.approx(0.001, rel=0.01)
