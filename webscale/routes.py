"""Plain HTTP on the WebSocket port: /healthz, /stats and /metrics; anything else gets 426.

`route` is a pure function from a request (and a read-only view of the server) to a response
value, like websockets' `process_request`; the connection sends it and closes (no keep-alive:
these are health checks and scrapes, not traffic). HEAD gets the headers only (the connection
knows the method).
"""

from __future__ import annotations

from typing import Any, Protocol

import orjson

from .http import Request, Response

_PROMETHEUS = "text/plain; version=0.0.4; charset=utf-8"
_ROUTES = frozenset({"/healthz", "/stats", "/metrics"})


class StatusView(Protocol):
    """What the routes read (server.Server implements it)."""

    @property
    def draining(self) -> bool: ...

    def snapshot(self) -> dict[str, Any]: ...

    def metrics_text(self) -> str: ...


def route(request: Request, view: StatusView) -> Response:
    path = request.path
    if path not in _ROUTES:
        return Response.text(426, "this endpoint speaks WebSocket",
                             headers=(("Upgrade", "websocket"),))
    if request.method not in ("GET", "HEAD"):
        return Response.text(405, "method not allowed", headers=(("Allow", "GET"),))
    if path == "/healthz":
        # 503 while draining, so a load balancer stops sending clients here (--drain-grace).
        return Response.text(503, "draining") if view.draining else Response.text(200, "ok")
    if path == "/stats":
        return Response(200, orjson.dumps(view.snapshot()), "application/json")
    return Response(200, view.metrics_text().encode(), _PROMETHEUS)
