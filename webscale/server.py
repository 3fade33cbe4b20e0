"""The server: listening sockets, accepting, owning connections, and an orderly shutdown.

How this works: `Server.start()` binds (or adopts socket-activated) listeners and registers them
with the loop; each readable listener is accepted until EAGAIN and every accepted socket goes
through the gate (gate.py: room for handshakes, the PROXY protocol, per-address limits) before
it is wrapped for TLS and handed to a `Connection`, whose owner the server is
(`connection.Owner`): it answers plain requests with `routes.public_route` (/healthz), decides
upgrades, gives each WebSocket a mailbox in the dispatcher and a handle for its handler, and
forgets connections when they close. /stats and /metrics are served by the admin listener
(admin.py, --admin) on the same loop; a worker under a supervisor has none, and answers its
supervisor's snapshot requests instead (snapshots.py).

Who gets in, in order: the gate before TLS; the TLS handshake (with --client-ca, a client
certificate that CA signed); then, for the upgrade request, 503 past --max-connections or while
draining, then admission.py: 403 for an Origin --allowed-origin does not list, and the
--authorize hook, run in the thread pool. --handshake-timeout covers all of it.

`serve_forever()` runs the loop through the process scaffold: SIGTERM/SIGINT begin a drain (stop
accepting, close every WebSocket with 1001, let the pool finish what was received) bounded by
--shutdown-timeout; a second SIGINT exits at once; SIGHUP reloads the certificate and the client
CA for new connections (drain.py, a part of the class).

The service manager hears about all of this through a `Notifier` (systemd.SystemdNotifier, a no-op
without $NOTIFY_SOCKET): READY=1 once listening, STATUS= with connection counts, WATCHDOG=1 from a
loop timer, STOPPING=1 when a drain begins, RELOADING=1 then READY=1 around a SIGHUP. A worker
under `webscale.supervisor` speaks the same protocol to its supervisor instead of systemd.
"""

from __future__ import annotations

import itertools
import logging
import os
import signal
import socket
import ssl
import sys
import threading
import time
from pathlib import Path
from typing import Any

from . import fastmask, limits, routes, tls
from .admin import AdminListener, bind_admin
from .peer_limits import PerAddressLimits, Refusal, TrustedNetworks
from .app import App, resolve
from .admission import Admission
from .authorize import Authorizer, OriginPolicy
from .budget import MemoryBudget, MemoryGuard, default_max_buffered_bytes, physical_memory
from .config import Config
from .connection import Connection
from .dispatch import Dispatcher
from .drain import Draining
from .units import Decoder, Handler
from .gate import Gate, GateSettings
from .handle import ConnectionHandle
from .http import Request, Response
from .listeners import Listeners
from .loop import EventLoop
from .metrics import render_prometheus
from .process import Notifier, ProcessScaffold, bind, urls
from .protocol import ProtocolLimits, ServerProtocol
from .snapshots import SnapshotResponder
from .rejections import log_rejection, peer
from .stats import Stats
from .systemd import SystemdNotifier, listen_fds

logger = logging.getLogger(__name__)

# Connections accepted beyond --max-connections still get a 503 (so clients see why); past this
# many more they are closed at once, since each still costs a file descriptor.
_REFUSAL_HEADROOM = 256


class Server(Draining):
    def __init__(self, config: Config, *, handler: Handler | None = None,
                 decode: Decoder | None = None,
                 listen_sockets: list[socket.socket] | None = None,
                 notifier: Notifier | None = None, worker_id: int | None = None,
                 snapshot_path: Path | None = None,
                 authorize: Authorizer | None = None) -> None:
        self.config = config
        # Set under a supervisor: shown in /stats and as a metrics label; the parent's pid is
        # watched so a worker orphaned by a killed supervisor drains instead of living on.
        self.worker_id = worker_id
        self._parent_pid = os.getppid() if worker_id is not None else None
        # Under a supervisor: where it asks this worker for its figures (snapshots.py).
        self.snapshot_path = snapshot_path
        self.snapshot_responder: SnapshotResponder | None = None
        self.admin: AdminListener | None = None
        self.loop = EventLoop()
        self.stats = Stats(started_at=time.time())
        notifier = notifier if notifier is not None else SystemdNotifier()
        self.scaffold = ProcessScaffold(self.loop, notifier, self.status_text, self._on_signal)
        self.notifier = notifier
        self.protocol_limits = ProtocolLimits(
            max_message_size=config.max_message_size,
            max_header_bytes=config.max_header_bytes,
            max_headers=config.max_headers,
            compression=config.compression == "deflate",
            deflate_window_bits=config.deflate_window_bits,
        )
        self.settings = config.connection_settings()
        self.ssl_context = self._make_ssl_context() if config.tls else None
        # One budget per process: --max-buffered-bytes is shared out between the workers.
        self.budget = MemoryBudget(max(1, (config.max_buffered_bytes
                                           or default_max_buffered_bytes()) // config.workers))
        self.dispatcher = Dispatcher(
            self.loop, self.stats, handler, decode, threads=config.threads,
            close_on_invalid=config.invalid_json == "close",
            max_in_flight_per_connection=config.max_in_flight_per_connection,
            max_in_flight_total=config.max_in_flight_total,
            max_in_flight_bytes_per_connection=config.max_in_flight_bytes_per_connection,
            batch_linger=config.batch_linger, budget=self.budget)
        self.memory_guard = MemoryGuard(self.budget, self.loop, self._memory_holders,
                                        self._shed, on_recovered=[self.dispatcher.resume_held])
        self.admission = Admission(self.loop, self.dispatcher.pool, self.stats, admit=self._admit,
                                   origins=OriginPolicy(config.allowed_origin),
                                   authorizer=authorize,
                                   handshake_timeout=config.handshake_timeout)
        self.on_message = self.dispatcher.deliver  # type: ignore[method-assign, assignment]
        self.max_connections = config.max_connections or limits.default_max_connections(
            physical_memory(), config.workers)
        self.max_handshaking = (config.max_handshaking
                                or limits.default_max_handshaking(self.max_connections))
        self.connections: dict[int, Connection] = {}
        self.websockets = 0  # upgrades accepted and not yet closed: what --max-connections caps
        per_address = None
        if config.max_connections_per_ip or config.max_handshakes_per_ip_per_s:
            per_address = PerAddressLimits(config.max_connections_per_ip,
                                           config.max_handshakes_per_ip_per_s)
        self.gate = Gate(self.loop, self.stats, GateSettings(
            max_connections=self.max_connections, max_handshaking=self.max_handshaking,
            refusal_headroom=_REFUSAL_HEADROOM, header_timeout=config.handshake_timeout,
            trusted_proxies=(TrustedNetworks(config.proxy_protocol_from)
                             if config.proxy_protocol_from else None)),
            per_address, self._open_connection)
        self._ids = itertools.count(1)
        self.listeners: Listeners | None = None
        self._given_sockets = listen_sockets
        self._sigint_count = 0
        self._draining = False
        self._drain_deadline = 0.0
        self.exit_code = 0
        self.loop.on_iteration = self.stats.loop_lag_seconds.observe

    # -- set-up -----------------------------------------------------------------------------
    def _make_ssl_context(self) -> ssl.SSLContext:
        cert, key = self.config.cert, self.config.key
        if cert is None or key is None:
            from .certs import ensure_certs  # only needed when no certificate was given

            paths = ensure_certs(self.config.certs_dir)
            cert, key = paths.server_cert, paths.server_key
        return tls.make_server_context(cert, key, self.config.client_ca,
                                       self.config.client_cert == "required")

    def start(self) -> None:
        admin_address = self.config.admin_address()
        if admin_address is not None:
            # First: a port already taken is a start-up error before anything else is bound.
            self.admin = AdminListener(self.loop, bind_admin(admin_address), self,
                                       self.settings, self.protocol_limits)
        if fastmask.install():
            logger.debug("wsproto unmasks client frames with websockets' C apply_mask")
        socks = self._given_sockets or [bind(self.config.host, self.config.port,
                                             self.config.backlog,
                                             reuseport=self.config.workers > 1)]
        self.listeners = Listeners(self.loop, socks, self._accepted, self._accept_paused)
        self.listeners.start()
        self.gate.start()
        if self.admin is not None:
            self.admin.start()
            logger.info("admin endpoints (/healthz, /stats, /metrics) on %s", self.admin.url)
        if self.snapshot_path is not None:
            self.snapshot_responder = SnapshotResponder(self.loop, self.snapshot_path,
                                                        self.snapshot)
            self.snapshot_responder.start()
        logger.info("serving %s: max %d connections (%d handshaking), %d pool threads, %s "
                    "poller, %d MiB memory budget", ", ".join(self.urls()), self.max_connections,
                    self.max_handshaking, self.config.threads, self.loop.poller_name,
                    self.budget.limit >> 20)
        self.notifier.ready(self.status_text())
        self.scaffold.start_reporting()
        self.scaffold.healthy = self._still_supervised

    def urls(self) -> list[str]:
        return urls(self.listeners.sockets if self.listeners else [], self.config.scheme)

    # -- service manager --------------------------------------------------------------------
    @property
    def draining(self) -> bool:
        return self._draining

    def status_text(self) -> str:
        websockets = sum(1 for c in self.connections.values() if c.is_websocket)
        state = "draining; " if self._draining else ""
        return (f"{state}{len(self.connections)} connections open ({websockets} WebSockets), "
                f"{self.stats.connections_total} accepted")

    def _still_supervised(self) -> bool:
        if self._parent_pid is not None and os.getppid() != self._parent_pid:
            self.begin_shutdown("supervisor exited")
        return True

    # -- accepting --------------------------------------------------------------------------
    def _accepted(self, sock: socket.socket, address: Any) -> None:
        self.stats.connections_total += 1
        self.gate.offer(sock, address)

    def _open_connection(self, sock: socket.socket, address: Any) -> Connection | None:
        """The gate admitted `sock` (from the client at `address`): TLS and a Connection."""
        try:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            wrapped = tls.wrap(self.ssl_context, sock)
        except (ssl.SSLError, OSError) as exc:
            self.stats.count_tls_failure(tls.failure_reason(exc))
            logger.debug("TLS wrap failed for %s: %r", address, exc)
            sock.close()
            return None
        conn_id = next(self._ids)
        conn = Connection(self.loop, wrapped,
                          ServerProtocol(self.protocol_limits, conn_id, self.budget),
                          self.settings, self, self.stats, address, self.budget)
        self.connections[conn_id] = conn
        self.stats.connections_open = len(self.connections)
        conn.start()
        return conn

    def _accept_paused(self, exc: OSError) -> None:
        self.stats.accept_pauses += 1  # (listeners.py logs it)

    # -- connection.Owner -------------------------------------------------------------------
    def route(self, request: Request) -> Response:
        return routes.public_route(request, self)

    def upgrade_requested(self, conn: Connection, request: Request) -> None:
        if self.websockets >= self.max_connections or self._draining:
            # Over the limit only upgrades are refused: /healthz stays answerable.
            self.gate.count_refusal(Refusal.DRAINING if self._draining
                                    else Refusal.MAX_CONNECTIONS, conn.address)
            if not self._draining:
                log_rejection(logger, "conn %d: refused an upgrade from %s with 503: %d "
                              "WebSockets open (--max-connections %d)", conn.conn_id,
                              peer(conn.address), self.websockets, self.max_connections)
            conn.respond(Response.text(503))
            return
        self.admission.check(conn, request)

    def _admit(self, conn: Connection, identity: Any) -> None:
        """Admission let `conn` in (at once, or once the --authorize hook answered)."""
        if self._draining:  # began while the hook ran
            self.gate.count_refusal(Refusal.DRAINING, conn.address)
            conn.respond(Response.text(503))
            return
        handle = ConnectionHandle(self.loop, conn, conn.conn_id, conn.address, conn.peer_cert,
                                  identity, high_water=self.settings.outbound_limit_bytes)
        self.dispatcher.open(conn, handle)
        conn.accept_upgrade()
        if conn.websocket:
            # Counted here and uncounted in on_closed, which may already have run (a close
            # frame right behind the request): the pair adds up either way.
            self.websockets += 1
            self.gate.handshake_done(conn)

    def tls_failed(self, conn: Connection, reason: str, error: BaseException) -> None:
        self.admission.tls_failed(conn, reason, error)

    def on_message(self, conn: Connection, data: str | bytes) -> None:
        # Replaced per instance by the dispatcher's own bound method in __init__: one call less
        # per message.
        self.dispatcher.deliver(conn, data)

    def on_closed(self, conn: Connection) -> None:
        self.connections.pop(conn.conn_id, None)
        self.stats.connections_open = len(self.connections)
        if conn.websocket:
            self.websockets -= 1
        self.gate.closed(conn)
        self.dispatcher.close(conn)

    # -- the memory budget's guard ----------------------------------------------------------
    def _memory_holders(self) -> list[tuple[Connection, int, int]]:
        queued = self.dispatcher.queued_bytes
        return [(conn, conn.proto.partial_bytes, conn.out_accounted + queued(conn))
                for conn in self.connections.values()]

    def _shed(self, conn: Connection, code: int) -> None:
        self.dispatcher.discard(conn)
        conn.shed(code)

    # -- routes.StatusView ------------------------------------------------------------------
    def snapshot(self) -> dict[str, Any]:
        snap = self.stats.snapshot()
        snap["websockets_open"] = sum(1 for c in self.connections.values() if c.is_websocket)
        snap["connections_handshaking"] = len(self.gate.handshaking)
        if self.gate.per_address is not None:
            # The per-address tables' sizes: entries leave at a count of 0 and full buckets
            # expire, so these follow the open connections and the recent arrivals.
            connections, buckets = self.gate.per_address.tracked
            snap["per_address_tracked"] = {"connections": connections, "buckets": buckets}
        snap["uptime_seconds"] = time.time() - self.stats.started_at
        snap["max_connections"] = self.max_connections
        snap["buffered_bytes"] = self.budget.used
        snap["max_buffered_bytes"] = self.budget.limit
        snap["pid"] = os.getpid()
        snap["worker"] = self.worker_id
        return snap

    def metrics_text(self) -> str:
        return render_prometheus(self.snapshot())

    # -- running and stopping ---------------------------------------------------------------
    def install_signal_handlers(self) -> None:
        """Main thread only: signals set a flag; the wake-up fd interrupts the wait."""
        self.scaffold.install_signal_handlers((signal.SIGTERM, signal.SIGINT, signal.SIGHUP))

    def serve_forever(self) -> int:
        """Run until drained or stopped; returns the process exit code."""
        try:
            self.scaffold.run()
        finally:
            self._close_everything()
        return self.exit_code


def run(config: Config, *, app: App | None = None,
        listen_sockets: list[socket.socket] | None = None, worker_id: int | None = None,
        announce: bool = True, snapshot_path: Path | None = None) -> int:
    """Start a server on this (main) thread and serve until shutdown; the exit code.

    Without `listen_sockets`, sockets passed by systemd ($LISTEN_FDS) are used when present,
    else --host/--port is bound. `announce` prints the `listening on URL` line on stdout, then
    `admin on URL` when there is an admin listener (a supervisor prints both for its workers).
    Without `app`, the handler and message type come from the flags (`app.resolve`).
    `snapshot_path`: a worker's socket for its supervisor's snapshot requests.
    """
    if app is None:
        app = resolve(config)
    if app.message_type is not None:
        logger.debug("messages are decoded into %s.%s", app.message_type.__module__,
                     app.message_type.__qualname__)
    soft, _ = limits.raise_nofile_limit()
    if listen_sockets is None:
        listen_sockets = listen_fds()
        if listen_sockets:
            logger.info("socket activation: serving on %d passed socket(s), not binding %s:%d",
                        len(listen_sockets), config.host, config.port)
    server = Server(config, handler=app.handler, decode=app.decode,
                    listen_sockets=listen_sockets or None, worker_id=worker_id,
                    snapshot_path=snapshot_path, authorize=app.authorize)
    warning = limits.check_connection_budget(server.max_connections, soft)
    if warning:
        logger.warning("%s", warning)
    if threading.current_thread() is threading.main_thread():
        # Before start(): READY=1 invites a SIGTERM, which must find our handler in place.
        server.install_signal_handlers()
    try:
        server.start()
    except BaseException:
        server._close_everything()  # e.g. the admin port was taken: release what we hold
        raise
    if announce:
        for url in server.urls():
            print(f"listening on {url}", flush=True)
        if server.admin is not None:
            print(f"admin on {server.admin.url}", flush=True)
    code = server.serve_forever()
    sys.stdout.flush()
    return code
