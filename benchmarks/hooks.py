"""The --authorize hook `server_cost.py --server webscale-secure` runs: a device is let in when
its client certificate names it, and its name becomes the handler's `handle.identity`.

Real deployments look the name up (a database, a list of enrolled devices); this one does the
work every hook does (read the request's certificate identity) and nothing slower, so the
measurement shows the machinery's cost, not a lookup's.
"""

from __future__ import annotations

from webscale import Request


def allow_devices(request: Request) -> str | None:
    cert = request.peer_cert
    return cert.common_name if cert is not None else None
