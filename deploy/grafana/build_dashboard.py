#!/usr/bin/env python3
"""Writes deploy/grafana/webscale.json, the Grafana dashboard for webscale's /metrics.

    python deploy/grafana/build_dashboard.py          # rewrite webscale.json
    python deploy/grafana/build_dashboard.py --check  # exit 1 if webscale.json is out of date

How this works: the panels are listed below as data (title, PromQL, unit, size) and laid out
left to right in rows of 24 grid units; everything Grafana needs around them (the import
inputs, the variables, ids and grid positions) is filled in here, so the JSON is never edited
by hand and tests/test_grafana.py checks the two agree. Edit a dashboard in Grafana, then carry
the change back into this file.

The data source: panels name `${DS_PROMETHEUS}`. Importing in the UI, Grafana asks for a
Prometheus data source (`__inputs`) and writes its uid in place of that text. Provisioned from a
file, nothing is substituted, so a data source variable of the same name (`DS_PROMETHEUS`, in
`templating`) resolves it at view time: the same file works both ways.

Every selector carries `instance=~"$instance", worker=~"$worker"`: one process's series have no
`worker` label, and `=~".*"` (the variables' "All") also matches a series without the label.
"""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

OUT = Path(__file__).resolve().parent / "webscale.json"

DS = {"type": "prometheus", "uid": "${DS_PROMETHEUS}"}
# The variables' filter, in every selector.
F = 'instance=~"$instance",worker=~"$worker"'
# Grafana's range for rate(): at least four scrape intervals, whatever the zoom.
R = "[$__rate_interval]"
PER = "instance, worker"  # one series per process
WHO = "{{instance}} {{worker}}"


def rate(name: str, by: str = "", extra: str = "") -> str:
    """sum [by (...)] (rate(name{filter}[interval]))"""
    labels = F + ("," + extra if extra else "")
    grouping = f" by ({by})" if by else ""
    return f"sum{grouping} (rate({name}{{{labels}}}{R}))"


def gauge(name: str, agg: str = "sum", by: str = "") -> str:
    grouping = f" by ({by})" if by else ""
    return f"{agg}{grouping} ({name}{{{F}}})"


def quantile(q: float, name: str, by: str = "") -> str:
    grouping = f"{by}, le" if by else "le"
    return f"histogram_quantile({q}, sum by ({grouping}) (rate({name}_bucket{{{F}}}{R})))"


def mean(name: str, by: str = "") -> str:
    return f"{rate(name + '_sum', by)} / {rate(name + '_count', by)}"


@dataclass(frozen=True, slots=True)
class Query:
    expr: str
    legend: str = ""


@dataclass(frozen=True, slots=True)
class Panel:
    title: str
    queries: tuple[Query, ...]
    description: str
    unit: str = "short"
    kind: str = "timeseries"  # or "stat", "heatmap"
    width: int = 12
    height: int = 8
    # timeseries only: "stepAfter" for 0/1 flags and counts that jump
    interpolation: str = "linear"
    stack: bool = False
    decimals: int | None = None
    extra: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class Row:
    title: str
    panels: tuple[Panel, ...]


def q(expr: str, legend: str = "") -> Query:
    return Query(expr, legend)


def stat(title: str, expr: str, description: str, unit: str = "short",
         decimals: int | None = None) -> Panel:
    return Panel(title, (q(expr),), description, unit, "stat", width=4, height=4,
                 decimals=decimals)


def heatmap(title: str, name: str, description: str) -> Panel:
    expr = f"sum by (le) (increase({name}_bucket{{{F}}}{R}))"
    return Panel(title, (Query(expr, "{{le}}"),), description, "s", "heatmap")


ROWS: tuple[Row, ...] = (
    Row("Overview", (
        stat("WebSockets open", gauge("webscale_websockets_open"),
             "WebSocket sessions open now, all selected processes."),
        stat("Messages received /s", rate("webscale_messages_received_total"),
             "Complete WebSocket messages received per second."),
        stat("Decode errors /s", rate("webscale_decode_errors_total"),
             "Messages that failed to decode into the message type, per second.", decimals=2),
        stat("Handler p99", quantile(0.99, "webscale_handler_seconds"),
             "99th percentile of decode + handler time per message.", "s"),
        stat("Pool GIL-bound", gauge("webscale_pool_gil_bound", "max"),
             "1 when any selected process finds its pool work GIL-bound (at most two batches "
             "run at once), else 0."),
        stat("Workers up", gauge("webscale_worker_up"),
             "Workers that answered the last scrape (--workers N only; a single process has "
             "no such series and shows No data)."),
    )),
    Row("Connections", (
        Panel("Connections open", (
            q(gauge("webscale_connections_open", by=PER), "TCP " + WHO),
            q(gauge("webscale_websockets_open", by=PER), "WebSocket " + WHO),
            q(gauge("webscale_connections_handshaking", by=PER), "handshaking " + WHO),
        ), "TCP connections, WebSocket sessions, and connections still in their handshake "
           "(PROXY header, TLS, upgrade), per process."),
        Panel("Connections accepted /s", (
            q(rate("webscale_connections_accepted_total", PER), WHO),
        ), "TCP connections accepted per second, per process (admin-listener scrapes are not "
           "counted)."),
        Panel("Handshake failures /s", (
            q(rate("webscale_tls_handshake_failures_by_reason_total", "reason"), "TLS {{reason}}"),
            q(rate("webscale_ws_handshake_failures_total"), "upgrade refused"),
            q(rate("webscale_handshake_timeouts_total"), "handshake timeout"),
            q(rate("webscale_upgrades_refused_total", "reason"), "policy {{reason}}"),
        ), "Failed TLS handshakes by reason (no_certificate, unknown_ca, bad_certificate, "
           "other), HTTP upgrades refused, --handshake-timeout closes, and upgrades refused by "
           "--allowed-origin or the --authorize hook by reason.", stack=True),
        Panel("Connections refused /s by reason", (
            q(rate("webscale_connections_rejected_total", "reason"), "{{reason}}"),
        ), "Connections refused or dropped before their handshake finished: max_connections, "
           "the handshaking share, per-address limits, PROXY header problems, draining.",
           stack=True),
        Panel("Backpressure", (
            q(gauge("webscale_connections_paused", by=PER), "paused " + WHO),
            q(rate("webscale_accept_pauses_total", PER), "accept pauses/s " + WHO),
        ), "Connections not read because the pool is behind (--max-in-flight-*), and times "
           "accepting paused on EMFILE/ENFILE, per process.", interpolation="stepAfter"),
        Panel("Closes /s by code", (
            q(rate("webscale_closes_total", "code"), "{{code}}"),
        ), "WebSocket closes by close code: 1000 normal, 1001 going away, 1006 no close frame, "
           "1007 invalid payload, 1008 policy (outbound limit), 1009 too big, 1011 handler "
           "error.", stack=True),
    )),
    Row("Messages", (
        Panel("Messages /s", (
            q(rate("webscale_messages_received_total"), "received"),
            q(rate("webscale_messages_decoded_total"), "decoded"),
            q(rate("webscale_messages_handled_total"), "handled"),
            q(rate("webscale_messages_sent_total"), "sent by handlers"),
        ), "Complete messages received, decoded into the message type, finished by the pool, "
           "and sent by handlers, per second.", width=8),
        Panel("Bytes /s", (
            q(rate("webscale_bytes_received_total"), "received"),
            q(rate("webscale_bytes_sent_total"), "sent"),
        ), "Bytes received (after TLS) and sent (before TLS) per second.", unit="Bps", width=8),
        Panel("Decode and handler errors /s", (
            q(rate("webscale_decode_errors_total"), "decode errors"),
            q(rate("webscale_handler_errors_total"), "handler errors"),
        ), "Messages that failed to decode (counted; --invalid-json close also closes with "
           "1007) and handler calls that raised (closed with 1011).", decimals=2, width=8),
    )),
    Row("Pool and loop", (
        Panel("Pool queue", (
            q(gauge("webscale_pool_batches", by=PER), "batches " + WHO),
            q(gauge("webscale_messages_in_flight", by=PER), "messages in flight " + WHO),
        ), "Batches queued or running in the thread pool, and messages queued or in the pool, "
           "per process."),
        Panel("Pool GIL-bound", (
            q(gauge("webscale_pool_gil_bound", "max", PER), WHO),
        ), "1 while a process finds its pool work GIL-bound, so at most two batches run at "
           "once; 0 when handlers release the GIL (I/O) and more threads help.",
           interpolation="stepAfter", extra={"min": 0, "max": 1}),
        Panel("Handler latency", (
            q(quantile(0.5, "webscale_handler_seconds"), "p50"),
            q(quantile(0.95, "webscale_handler_seconds"), "p95"),
            q(quantile(0.99, "webscale_handler_seconds"), "p99"),
            q(mean("webscale_handler_seconds"), "mean"),
        ), "Decode + handler time per message, from the webscale_handler_seconds histogram "
           "(buckets 100 us to 5 s).", unit="s"),
        heatmap("Handler latency distribution", "webscale_handler_seconds",
                "Messages per handler-time bucket over each interval."),
        Panel("Loop iteration time", (
            q(quantile(0.5, "webscale_loop_iteration_seconds"), "p50"),
            q(quantile(0.99, "webscale_loop_iteration_seconds"), "p99"),
            q(quantile(0.999, "webscale_loop_iteration_seconds"), "p99.9"),
        ), "Time the event loop spends per iteration (from waking up to waiting again): every "
           "connection of a process waits this long at worst. Healthy: well under 10 ms.",
           unit="s"),
        heatmap("Loop iteration distribution", "webscale_loop_iteration_seconds",
                "Loop iterations per iteration-time bucket over each interval."),
    )),
    Row("Workers", (
        Panel("Workers up", (
            q(gauge("webscale_worker_up", "max", "worker"), "worker {{worker}}"),
        ), "1 if the worker answered the scrape in time, else 0 (its other series are then "
           "absent for that scrape). --workers N only.", interpolation="stepAfter",
           extra={"min": 0, "max": 1}),
        Panel("Messages received /s per worker", (
            q(rate("webscale_messages_received_total", PER), WHO),
        ), "How evenly the kernel (SO_REUSEPORT) spreads the load over the workers."),
        Panel("Loop iterations /s", (
            q(rate("webscale_loop_iteration_seconds_count", PER), WHO),
        ), "Event-loop iterations per second, per process."),
        Panel("Uptime", (
            q(gauge("webscale_uptime_seconds", "max", PER), WHO),
        ), "Seconds since each process started: a drop to zero is a restart.", unit="s"),
        Panel("Handler p99 per worker", (
            q(quantile(0.99, "webscale_handler_seconds", PER), WHO),
        ), "99th percentile of decode + handler time per message, per process.", unit="s"),
        Panel("Loop iteration p99 per worker", (
            q(quantile(0.99, "webscale_loop_iteration_seconds", PER), WHO),
        ), "99th percentile of the event loop's iteration time, per process: a worker whose "
           "loop falls behind shows here first.", unit="s"),
    )),
)

PANEL_TYPES = {"timeseries": "Time series", "stat": "Stat", "heatmap": "Heatmap",
               "row": "Row"}


def _targets(panel: Panel) -> list[dict[str, Any]]:
    targets = []
    for index, query in enumerate(panel.queries):
        target: dict[str, Any] = {"datasource": DS, "editorMode": "code", "expr": query.expr,
                                  "legendFormat": query.legend or "__auto", "range": True,
                                  "refId": chr(ord("A") + index)}
        if panel.kind == "heatmap":
            target["format"] = "heatmap"
        if panel.kind == "stat":
            target.update(range=False, instant=True)
        targets.append(target)
    return targets


def _field_config(panel: Panel) -> dict[str, Any]:
    defaults: dict[str, Any] = {"unit": panel.unit, **panel.extra}
    if panel.decimals is not None:
        defaults["decimals"] = panel.decimals
    if panel.kind == "timeseries":
        defaults["custom"] = {"drawStyle": "line", "lineInterpolation": panel.interpolation,
                              "lineWidth": 1, "fillOpacity": 10, "showPoints": "never",
                              "spanNulls": False,
                              "stacking": {"mode": "normal" if panel.stack else "none",
                                           "group": "A"}}
        defaults["min"] = defaults.get("min", 0)
    if panel.kind == "stat":
        defaults["color"] = {"mode": "thresholds"}
        defaults["thresholds"] = {"mode": "absolute", "steps": [{"color": "green",
                                                                  "value": None}]}
    return {"defaults": defaults, "overrides": []}


def _options(panel: Panel) -> dict[str, Any]:
    if panel.kind == "stat":
        return {"reduceOptions": {"calcs": ["lastNotNull"], "fields": "", "values": False},
                "colorMode": "value", "graphMode": "none", "justifyMode": "auto",
                "orientation": "auto", "textMode": "auto"}
    if panel.kind == "heatmap":
        return {"calculate": False, "cellGap": 1, "yAxis": {"unit": "s", "axisPlacement": "left"},
                "rowsFrame": {"layout": "auto"},
                "color": {"mode": "scheme", "scheme": "Oranges", "fill": "dark-orange",
                          "scale": "exponential", "exponent": 0.5, "steps": 64,
                          "reverse": False},
                "tooltip": {"mode": "single", "yHistogram": True},
                "legend": {"show": True}, "exemplars": {"color": "rgba(255,0,255,0.7)"}}
    return {"legend": {"displayMode": "list", "placement": "bottom", "showLegend": True},
            "tooltip": {"mode": "multi", "sort": "desc"}}


def _variable(name: str, label: str, query: str) -> dict[str, Any]:
    return {"name": name, "label": label, "type": "query", "datasource": DS,
            "definition": query, "query": query, "refresh": 2, "regex": "", "sort": 1,
            "includeAll": True, "multi": True, "allValue": ".*", "hide": 0, "options": [],
            "current": {"selected": True, "text": ["All"], "value": ["$__all"]}}


def build() -> dict[str, Any]:
    panels: list[dict[str, Any]] = []
    ids = iter(range(1, 1000))
    y = 0
    for row in ROWS:
        panels.append({"type": "row", "title": row.title, "collapsed": False, "id": next(ids),
                       "gridPos": {"h": 1, "w": 24, "x": 0, "y": y}, "panels": []})
        y += 1
        x, line_height = 0, 0
        for panel in row.panels:
            if x + panel.width > 24:
                x, y, line_height = 0, y + line_height, 0
            panels.append({
                "type": panel.kind, "title": panel.title, "description": panel.description,
                "id": next(ids), "datasource": DS,
                "gridPos": {"h": panel.height, "w": panel.width, "x": x, "y": y},
                "fieldConfig": _field_config(panel), "options": _options(panel),
                "targets": _targets(panel)})
            x += panel.width
            line_height = max(line_height, panel.height)
        y += line_height
    kinds = sorted({panel["type"] for panel in panels})
    return {
        "__inputs": [{"name": "DS_PROMETHEUS", "label": "Prometheus",
                      "description": "The Prometheus that scrapes webscale's admin listener "
                                     "(deploy/prometheus/prometheus.yml)",
                      "type": "datasource", "pluginId": "prometheus",
                      "pluginName": "Prometheus"}],
        "__elements": {},
        "__requires": [
            {"type": "grafana", "id": "grafana", "name": "Grafana", "version": "10.0.0"},
            {"type": "datasource", "id": "prometheus", "name": "Prometheus", "version": "1.0.0"},
            *({"type": "panel", "id": kind, "name": PANEL_TYPES[kind], "version": ""}
              for kind in kinds if kind != "row"),
        ],
        "annotations": {"list": [{
            "builtIn": 1, "datasource": {"type": "grafana", "uid": "-- Grafana --"},
            "enable": True, "hide": True, "iconColor": "rgba(0, 211, 255, 1)",
            "name": "Annotations & Alerts", "type": "dashboard"}]},
        "description": "webscale's /metrics (admin listener): connections, handshakes, "
                       "messages, pool and loop, per worker.",
        "editable": True,
        "fiscalYearStartMonth": 0,
        "graphTooltip": 1,
        "id": None,
        "links": [],
        "panels": panels,
        "refresh": "30s",
        "schemaVersion": 38,
        "tags": ["webscale", "websocket"],
        "templating": {"list": [
            {"name": "DS_PROMETHEUS", "label": "Data source", "type": "datasource",
             "query": "prometheus", "refresh": 1, "regex": "", "hide": 0,
             "includeAll": False, "multi": False, "options": [], "current": {}},
            _variable("instance", "Instance", "label_values(webscale_uptime_seconds, instance)"),
            _variable("worker", "Worker",
                      'label_values(webscale_uptime_seconds{instance=~"$instance"}, worker)'),
        ]},
        "time": {"from": "now-1h", "to": "now"},
        "timepicker": {},
        "timezone": "",
        "title": "webscale",
        "uid": "webscale-overview",
        "version": 1,
        "weekStart": "",
    }


def render() -> str:
    return json.dumps(build(), indent=2) + "\n"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true",
                        help="exit 1 if the committed JSON differs from what this builds")
    args = parser.parse_args()
    text = render()
    if args.check:
        if OUT.read_text() != text:
            print(f"{OUT} is out of date: run python {sys.argv[0]}", file=sys.stderr)
            return 1
        return 0
    OUT.write_text(text)
    print(f"wrote {OUT}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
