"""GET /metrics: the stats snapshot in the Prometheus text exposition format (version 0.0.4).

Rendered by hand from the same snapshot as /stats: the format is a few lines of text, and
prometheus_client would add a registry and a second set of counters to keep in step. With
`--workers N` the supervisor renders every worker's snapshot with a `worker` label
(`render_workers`).
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

# (snapshot key, metric name, type, help)
_SCALARS: tuple[tuple[str, str, str, str], ...] = (
    ("connections_open", "webscale_connections_open", "gauge", "TCP connections open now"),
    ("websockets_open", "webscale_websockets_open", "gauge", "WebSocket sessions open now"),
    ("connections_total", "webscale_connections_accepted_total", "counter",
     "TCP connections accepted"),
    ("connections_handshaking", "webscale_connections_handshaking", "gauge",
     "connections that have not finished their handshake (PROXY header, TLS, upgrade)"),
    ("tls_handshake_failures", "webscale_tls_handshake_failures_total", "counter",
     "TLS handshakes that failed"),
    ("ws_handshake_failures", "webscale_ws_handshake_failures_total", "counter",
     "HTTP upgrade requests refused"),
    ("handshake_timeouts", "webscale_handshake_timeouts_total", "counter",
     "connections closed by --handshake-timeout"),
    ("http_requests", "webscale_http_requests_total", "counter", "plain HTTP requests answered"),
    ("messages_received", "webscale_messages_received_total", "counter",
     "complete WebSocket messages received"),
    ("messages_decoded", "webscale_messages_decoded_total", "counter",
     "messages decoded into the payload struct"),
    ("messages_handled", "webscale_messages_handled_total", "counter",
     "messages the pool finished with"),
    ("decode_errors", "webscale_decode_errors_total", "counter", "messages that failed to decode"),
    ("handler_errors", "webscale_handler_errors_total", "counter", "handler calls that raised"),
    ("messages_out", "webscale_messages_sent_total", "counter", "messages sent by handlers"),
    ("bytes_in", "webscale_bytes_received_total", "counter", "bytes received (after TLS)"),
    ("bytes_out", "webscale_bytes_sent_total", "counter", "bytes sent (before TLS)"),
    ("in_flight", "webscale_messages_in_flight", "gauge", "messages queued or in the pool"),
    ("pool_queue_depth", "webscale_pool_batches", "gauge", "batches queued or running in the pool"),
    ("pool_gil_bound", "webscale_pool_gil_bound", "gauge",
     "1 while pool work is GIL-bound, so at most two batches run at once"),
    ("paused_connections", "webscale_connections_paused", "gauge",
     "connections not read because of backpressure"),
    ("accept_pauses", "webscale_accept_pauses_total", "counter",
     "times accepting paused on EMFILE/ENFILE"),
    ("buffered_bytes", "webscale_buffered_bytes", "gauge",
     "bytes buffered for clients, charged to --max-buffered-bytes"),
    ("max_buffered_bytes", "webscale_buffered_bytes_limit", "gauge",
     "the memory budget (--max-buffered-bytes, this process's share)"),
    ("memory_sheds", "webscale_memory_sheds_total", "counter",
     "connections closed to bring the memory budget back"),
    ("uptime_seconds", "webscale_uptime_seconds", "gauge", "seconds since start"),
)

# (snapshot key, metric name, label, help): counters kept per reason or code. The by-reason
# families have their own names: mixed into the unlabelled total's family, sum() would count
# every failure twice.
_LABELLED: tuple[tuple[str, str, str, str], ...] = (
    ("closes_by_code", "webscale_closes_total", "code", "WebSocket closes by close code"),
    ("connections_rejected_by_reason", "webscale_connections_rejected_total", "reason",
     "connections refused or dropped before their handshake finished, by reason (sum over "
     "reason for the total)"),
    ("tls_handshake_failures_by_reason", "webscale_tls_handshake_failures_by_reason_total",
     "reason", "TLS handshakes that failed, by reason (no_certificate, unknown_ca, "
     "bad_certificate, other)"),
    ("upgrades_refused_by_reason", "webscale_upgrades_refused_total", "reason",
     "upgrade requests refused by --allowed-origin or the --authorize hook, by reason"),
)

_HISTOGRAMS = (
    ("handler_seconds", "webscale_handler_seconds", "decode + handler time per message"),
    ("loop_lag_seconds", "webscale_loop_iteration_seconds", "time the loop spends per iteration"),
)


def _labels(labels: str) -> str:
    return "{" + labels + "}" if labels else ""


def render_prometheus(snapshot: dict[str, Any], labels: str = "") -> str:
    """`labels` is e.g. 'worker="1"' to tell several processes' series apart."""
    lines: list[str] = []
    sep = "," if labels else ""
    for key, name, kind, help_text in _SCALARS:
        if key not in snapshot:
            continue
        lines += [f"# HELP {name} {help_text}", f"# TYPE {name} {kind}",
                  f"{name}{_labels(labels)} {snapshot[key]}"]
    for key, name, label, help_text in _LABELLED:
        lines += [f"# HELP {name} {help_text}", f"# TYPE {name} counter"]
        for value, count in snapshot.get(key, {}).items():
            lines.append(f'{name}{{{labels}{sep}{label}="{value}"}} {count}')
    for key, name, help_text in _HISTOGRAMS:
        hist = snapshot.get(key)
        if not hist:
            continue
        lines += [f"# HELP {name} {help_text}", f"# TYPE {name} histogram"]
        cumulative = 0
        for bound, count in zip([*hist["bounds"], "+Inf"], hist["counts"], strict=True):
            cumulative += count
            lines.append(f'{name}_bucket{{{labels}{sep}le="{bound}"}} {cumulative}')
        lines.append(f"{name}_sum{_labels(labels)} {hist['sum']}")
        lines.append(f"{name}_count{_labels(labels)} {hist['count']}")
    return "\n".join(lines) + "\n"


def render_workers(snapshots: dict[int, dict[str, Any] | None]) -> str:
    """Every worker's series labelled worker="i", one block per family, and
    `webscale_worker_up`: 0 for a worker that did not answer (its series are then absent)."""
    texts = [render_prometheus(snapshot, f'worker="{worker}"')
             for worker, snapshot in sorted(snapshots.items()) if snapshot is not None]
    name = "webscale_worker_up"
    up = [f"# HELP {name} 1 if the worker answered this scrape in time, else 0",
          f"# TYPE {name} gauge"]
    up += [f'{name}{{worker="{worker}"}} {0 if snapshot is None else 1}'
           for worker, snapshot in sorted(snapshots.items())]
    return merge_families([*texts, "\n".join(up) + "\n"])


def merge_families(texts: Iterable[str]) -> str:
    """Concatenate exposition texts, keeping one HELP/TYPE per family with all its samples
    together (a family split in two is an error for Prometheus' parser)."""
    families: dict[str, list[str]] = {}
    current: list[str] = []
    for text in texts:
        for line in text.splitlines():
            if line.startswith("# HELP "):
                name = line.split(" ", 3)[2]
                current = families.setdefault(name, [line])
            elif line.startswith("# TYPE "):
                if len(current) == 1:
                    current.append(line)
            elif line:
                current.append(line)
    return "\n".join(line for lines in families.values() for line in lines) + "\n"
