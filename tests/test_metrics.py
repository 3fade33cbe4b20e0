"""GET /metrics parses as Prometheus text (with prometheus_client's own parser) and its counters
match what the test did, for one process and for --workers 2."""

from __future__ import annotations

import asyncio
from collections.abc import Callable

import pytest
from prometheus_client.parser import text_string_to_metric_families
from websockets.asyncio.client import connect

from helpers import UNIT, ServerProcess, client_ssl_context, wait_for
from payloads import telemetry_json

StartServer = Callable[..., ServerProcess]


def scrape(server: ServerProcess) -> dict[str, float]:
    """Sum every sample by name and labels other than `worker` (so workers add up)."""
    status, body = server.admin_get("/metrics")
    assert status == 200
    totals: dict[str, float] = {}
    for family in text_string_to_metric_families(body.decode()):
        for sample in family.samples:
            labels = ",".join(f"{k}={v}" for k, v in sorted(sample.labels.items())
                              if k != "worker")
            key = f"{sample.name}{{{labels}}}" if labels else sample.name
            totals[key] = totals.get(key, 0.0) + sample.value
    return totals


async def exercise(server: ServerProcess, clients: int) -> None:
    """Each client sends 3 good messages and 1 bad one, then closes with 1000."""
    ctx = client_ssl_context(server.cafile)  # type: ignore[arg-type]
    for client_id in range(clients):
        async with connect(server.url, ssl=ctx) as ws:
            for seq in range(3):
                await ws.send(telemetry_json(client_id, seq, size=2048))
            await ws.send("not json")
            await asyncio.wait_for(await ws.ping(), 5 * UNIT)


@pytest.mark.parametrize("workers", [1, 2])
def test_metrics_parse_and_match(server_factory: StartServer, workers: int) -> None:
    server = server_factory("--workers", str(workers))
    clients = 6
    asyncio.run(exercise(server, clients))

    def settled() -> dict[str, float] | None:
        m = scrape(server)
        done = m.get("webscale_messages_handled_total") == 4 * clients
        closes = m.get('webscale_closes_total{code=1000}') == clients
        return m if done and closes else None

    # The pool finishes the last messages after the clients have gone.
    metrics = wait_for(settled, 10, 0.1, "the counters to settle")
    assert metrics["webscale_messages_received_total"] == 4 * clients
    assert metrics["webscale_messages_decoded_total"] == 3 * clients
    assert metrics["webscale_decode_errors_total"] == clients
    assert metrics["webscale_handler_errors_total"] == 0
    assert metrics["webscale_tls_handshake_failures_total"] == 0
    # Scrapes go to the admin listener and are not counted: exactly the clients.
    assert metrics["webscale_connections_accepted_total"] == clients
    assert metrics["webscale_websockets_open"] == 0
    assert metrics["webscale_connections_handshaking"] == 0
    for reason in ("max_connections", "per_ip_connections", "handshake_share", "proxy_header"):
        assert metrics[f"webscale_connections_rejected_total{{reason={reason}}}"] == 0
    if workers > 1:
        assert metrics["webscale_worker_up"] == workers
    # A histogram's +Inf bucket is its count, and every message was timed.
    assert (metrics['webscale_handler_seconds_bucket{le=+Inf}']
            == metrics["webscale_handler_seconds_count"] == 4 * clients)
