"""Plain HTTP answers: /healthz on the WebSocket port; /healthz, /stats and /metrics on --admin.

Both are pure functions from a request (and a read-only view of the server) to a response value,
like websockets' `process_request`; the connection sends it and closes (no keep-alive: these are
health checks and scrapes, not traffic). HEAD gets the headers only (the connection knows the
method).

The public port answers /healthz only: a load balancer must reach it there (deploy/haproxy), and
it says nothing about the server but "serving" or "draining". /stats and /metrics describe the
server's internals, so they live on the admin listener (admin.py), on loopback by default; asked
for on the public port they get 404 naming the flag, any other path the usual 426.
"""

from __future__ import annotations

from typing import Any, Protocol

import orjson

from .http import Request, Response

_PROMETHEUS = "text/plain; version=0.0.4; charset=utf-8"
_ADMIN_ROUTES = frozenset({"/healthz", "/stats", "/metrics"})


class StatusView(Protocol):
    """What the routes read (server.Server implements it, and the supervisor for its workers)."""

    @property
    def draining(self) -> bool: ...

    def snapshot(self) -> dict[str, Any]: ...

    def metrics_text(self) -> str: ...


def public_route(request: Request, view: StatusView) -> Response:
    """The WebSocket port's plain requests."""
    path = request.path
    if path == "/healthz":
        return _method_allowed(request) or _healthz(view)
    if path in _ADMIN_ROUTES:
        return Response.text(404, f"{path} is served on the admin listener (--admin)")
    return Response.text(426, "this endpoint speaks WebSocket",
                         headers=(("Upgrade", "websocket"),))


def admin_route(request: Request, view: StatusView) -> Response:
    """The admin listener's requests (plain HTTP; upgrades are refused before they get here)."""
    path = request.path
    if path not in _ADMIN_ROUTES:
        return Response.text(404)
    refused = _method_allowed(request)
    if refused is not None:
        return refused
    if path == "/healthz":
        return _healthz(view)
    if path == "/stats":
        return Response(200, orjson.dumps(view.snapshot()), "application/json")
    return Response(200, view.metrics_text().encode(), _PROMETHEUS)


def _method_allowed(request: Request) -> Response | None:
    if request.method in ("GET", "HEAD"):
        return None
    return Response.text(405, "method not allowed", headers=(("Allow", "GET"),))


def _healthz(view: StatusView) -> Response:
    # 503 while draining, so a load balancer stops sending clients here (--drain-grace).
    return Response.text(503, "draining") if view.draining else Response.text(200, "ok")
