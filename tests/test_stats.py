"""stats.py and metrics.py without a server: refusals by reason, several workers' snapshots
added up, and every worker's series in one exposition (prometheus_client's parser reads it)."""

from __future__ import annotations

from prometheus_client.parser import text_string_to_metric_families

from webscale.peer_limits import Refusal
from webscale.metrics import render_workers
from webscale.stats import Stats, sum_snapshots


def test_reject_counts_the_total_and_the_reason() -> None:
    stats = Stats()
    assert set(stats.snapshot()["connections_rejected_by_reason"]) == {r.value for r in Refusal}
    stats.reject(Refusal.PER_IP_CONNECTIONS)
    stats.reject(Refusal.PER_IP_CONNECTIONS)
    stats.reject(Refusal.HANDSHAKE_SHARE)
    snap = stats.snapshot()
    assert snap["connections_rejected"] == 3
    assert snap["connections_rejected_by_reason"]["per_ip_connections"] == 2
    assert snap["connections_rejected_by_reason"]["handshake_share"] == 1
    assert snap["connections_rejected_by_reason"]["proxy_header"] == 0


def worker_snapshot(worker: int, received: int) -> dict[str, object]:
    stats = Stats(started_at=100.0 + worker)
    stats.messages_received = received
    stats.closes_by_code[1000] += received
    stats.closes_by_code[4000 + worker] += 1
    stats.handler_seconds.observe(0.0002 * (worker + 1))
    snap = stats.snapshot()
    snap.update(worker=worker, pid=1000 + worker, uptime_seconds=5.0 + worker,
                websockets_open=worker)
    return snap


def test_sum_snapshots() -> None:
    total = sum_snapshots([worker_snapshot(0, 3), worker_snapshot(1, 4)])
    assert total["messages_received"] == 7
    assert total["websockets_open"] == 1
    assert total["closes_by_code"] == {"1000": 7, "4000": 1, "4001": 1}
    assert total["handler_seconds"]["count"] == 2
    assert sum(total["handler_seconds"]["counts"]) == 2
    assert abs(total["handler_seconds"]["sum"] - 0.0006) < 1e-12
    assert total["connections_rejected_by_reason"]["max_connections"] == 0
    for per_process in ("pid", "worker", "uptime_seconds", "started_at"):
        assert per_process not in total


def test_render_workers_labels_every_series_and_reports_the_missing() -> None:
    text = render_workers({0: worker_snapshot(0, 3), 1: None, 2: worker_snapshot(2, 5)})
    samples = {(s.name, tuple(sorted(s.labels.items()))): s.value
               for family in text_string_to_metric_families(text) for s in family.samples}
    assert samples[("webscale_messages_received_total", (("worker", "0"),))] == 3
    assert samples[("webscale_messages_received_total", (("worker", "2"),))] == 5
    assert ("webscale_messages_received_total", (("worker", "1"),)) not in samples
    assert samples[("webscale_worker_up", (("worker", "1"),))] == 0
    assert samples[("webscale_worker_up", (("worker", "2"),))] == 1
    assert samples[("webscale_connections_rejected_total",
                    (("reason", "handshake_share"), ("worker", "2")))] == 0
