"""Plain HTTP on the WebSocket port: /healthz, /stats and /metrics; anything else gets 426.

A request that is not a WebSocket upgrade is answered here and the connection closed (no
keep-alive: these are health checks and scrapes, not traffic). HEAD gets the headers only.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import orjson

from .metrics import render_prometheus

if TYPE_CHECKING:
    from .connection import Connection
    from .protocol import HttpRequest
    from .server import Server

_PROMETHEUS = b"text/plain; version=0.0.4; charset=utf-8"
_ROUTES = frozenset({"/healthz", "/stats", "/metrics"})


def respond(server: Server, conn: Connection, request: HttpRequest) -> None:
    path = request.target.split("?", 1)[0]
    head_only = request.method == "HEAD"
    proto = conn.proto
    if path in _ROUTES and request.method not in ("GET", "HEAD"):
        proto.respond_http(405, b"method not allowed\n", extra_headers=((b"Allow", b"GET"),))
        return
    status, body, content_type = 200, b"", b"text/plain; charset=utf-8"
    if path == "/healthz":
        # 503 while draining, so a load balancer stops sending clients here (--drain-grace).
        status, body = (503, b"draining\n") if server.draining else (200, b"ok\n")
    elif path == "/stats":
        body, content_type = orjson.dumps(server.snapshot()), b"application/json"
    elif path == "/metrics":
        snapshot = server.snapshot()
        text = (server.peer_stats.render_metrics(snapshot) if server.peer_stats is not None
                else render_prometheus(snapshot))
        body, content_type = text.encode(), _PROMETHEUS
    else:
        proto.respond_http(426, b"this endpoint speaks WebSocket\n",
                           extra_headers=((b"Upgrade", b"websocket"),))
        return
    proto.respond_http(status, body, content_type=content_type, head_only=head_only)
