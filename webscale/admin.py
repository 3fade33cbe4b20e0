"""The admin listener (--admin HOST:PORT): /healthz, /stats and /metrics over plain HTTP.

How this works: an `AdminListener` owns one listening socket on the process's loop. Each
accepted socket becomes an ordinary `Connection` with its own `ServerProtocol` (the same request
parsing, limits and handshake timeout as the public port), and the listener is that connection's
owner (`connection.Owner`): a plain request is answered by `routes.admin_route` from a
`StatusView` (the server, or the supervisor speaking for its workers); an upgrade request is
refused with 404, so nothing but HTTP is ever served here. Its connections are counted in a
`Stats` of their own, so a scrape does not move the figures it reads (connections accepted,
bytes, requests).

Plain HTTP, because Prometheus and curl scrape it without a certificate, and loopback by
default (config.DEFAULT_ADMIN), because these figures describe the server to whoever can reach
them. At most `_MAX_CONNECTIONS` admin connections are open at once; more are closed on accept.
"""

from __future__ import annotations

import errno
import itertools
import logging
import socket
from . import routes
from .config import ConnectionSettings
from .connection import Connection
from .errors import ConfigError
from .http import Request, Response
from .loop import EVENT_READ, EventLoop
from .process import bind, urls
from .protocol import ProtocolLimits, ServerProtocol
from .stats import Stats

logger = logging.getLogger(__name__)

# Scrapers and health checks, not clients: a few at a time. Past this, new ones are closed.
_MAX_CONNECTIONS = 64
_BACKLOG = 64


def bind_admin(address: tuple[str, int]) -> socket.socket:
    """Bind the admin address or raise ConfigError saying what to do about it."""
    host, port = address
    try:
        return bind(host, port, _BACKLOG)
    except OSError as exc:
        raise ConfigError(f"cannot listen for admin requests on {host}:{port}: "
                          f"{exc.strerror or exc} (--admin HOST:PORT picks another address, "
                          "--admin off disables the admin listener)") from None


class AdminListener:
    def __init__(self, loop: EventLoop, sock: socket.socket, view: routes.StatusView,
                 settings: ConnectionSettings, limits: ProtocolLimits) -> None:
        self.loop = loop
        self.sock = sock
        self.view = view
        self.settings = settings
        self.limits = limits
        self.stats = Stats()  # the admin connections' own counters: never reported
        self.connections: dict[int, Connection] = {}
        self._ids = itertools.count(1)
        self._registered = False

    @property
    def url(self) -> str:
        return urls([self.sock], "http")[0]

    def start(self) -> None:
        self.sock.setblocking(False)
        self.loop.register(self.sock, EVENT_READ, self)
        self._registered = True

    # -- the loop's handler -----------------------------------------------------------------
    def on_readable(self) -> None:
        for _ in range(_MAX_CONNECTIONS):
            try:
                sock, address = self.sock.accept()
            except (BlockingIOError, InterruptedError):
                return
            except OSError as exc:
                if exc.errno in (errno.ECONNABORTED, errno.EPROTO):
                    continue
                # EMFILE and friends: the public listener's pause handles the shortage; here
                # the pending scrape simply waits in the backlog for the next event.
                logger.warning("admin listener: accept failed: %s", exc)
                return
            if len(self.connections) >= _MAX_CONNECTIONS:
                sock.close()
                continue
            sock.setblocking(False)
            conn_id = next(self._ids)
            conn = Connection(self.loop, sock, ServerProtocol(self.limits, conn_id),
                              self.settings, self, self.stats, address)
            self.connections[conn_id] = conn
            conn.start()

    def on_writable(self) -> None:  # pragma: no cover - never registered for writing
        pass

    # -- connection.Owner -------------------------------------------------------------------
    def route(self, request: Request) -> Response:
        return routes.admin_route(request, self.view)

    def upgrade_requested(self, conn: Connection, request: Request) -> None:
        conn.respond(Response.text(404, "no WebSockets on the admin listener"))

    def on_message(self, conn: Connection, data: str | bytes) -> None:  # pragma: no cover
        pass  # never upgraded, so never a message

    def tls_failed(self, conn: Connection, reason: str, error: BaseException) -> None:
        pass  # plain HTTP: no TLS handshake to fail

    def on_closed(self, conn: Connection) -> None:
        self.connections.pop(conn.conn_id, None)

    # -- stopping ---------------------------------------------------------------------------
    def close(self) -> None:
        """Stop listening and drop every admin connection (shutdown)."""
        for conn in list(self.connections.values()):
            conn.abort()
        if self._registered:
            self._registered = False
            try:
                self.loop.unregister(self.sock)
            except (KeyError, ValueError):
                pass
        self.sock.close()

