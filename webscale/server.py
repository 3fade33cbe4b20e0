"""The server: listening sockets, accepting, routing plain HTTP, and an orderly shutdown.

How this works: `Server.start()` binds (or adopts socket-activated) listeners and registers them
with the loop; each readable listener is accepted until EAGAIN, each client wrapped for TLS and
handed to a `Connection`. `serve_forever()` runs the loop on the calling thread; signal handlers
only record the signal (and `set_wakeup_fd` interrupts the wait), and the loop acts on it:
SIGTERM/SIGINT begin a drain (stop accepting, close every WebSocket with 1001, let the pool
finish what was received) bounded by --shutdown-timeout; a second SIGINT exits at once; SIGHUP
reloads the certificate for new connections.

The service manager hears about all of this through a `Notifier` (systemd.SystemdNotifier, a no-op
without $NOTIFY_SOCKET): READY=1 once listening, STATUS= with connection counts from a loop timer,
WATCHDOG=1 from another loop timer (so a hung loop stops feeding it), STOPPING=1 when a drain
begins, RELOADING=1 then READY=1 around a SIGHUP. A worker under `webscale.supervisor` speaks the
same protocol to its supervisor instead of systemd.
"""

from __future__ import annotations

import errno
import itertools
import logging
import os
import signal
import socket
import ssl
import sys
import threading
import time
from types import FrameType
from typing import Any, Protocol


from . import limits, routes, tls
from .config import Config
from .connection import Connection, ConnState
from .dispatch import Dispatcher, Handler, load_handler
from .loop import EVENT_READ, EventLoop
from .protocol import HttpRequest, ProtocolLimits
from .stats import Stats
from .systemd import SystemdNotifier, listen_fds

logger = logging.getLogger(__name__)

# Connections accepted beyond --max-connections still get a 503 (so clients see why); past this
# many more they are closed at once, since each still costs a file descriptor.
_REFUSAL_HEADROOM = 256
# After EMFILE/ENFILE, stop accepting this long instead of spinning on a listener that stays
# readable (the kernel keeps the pending connections in the backlog meanwhile).
_ACCEPT_PAUSE = 0.5
# Accepts per readiness event: enough to drain a burst, bounded so reads keep flowing.
_ACCEPTS_PER_EVENT = 256
# STATUS= every few seconds: `systemctl status` stays current without flooding PID 1.
_STATUS_INTERVAL = 5.0


class Notifier(Protocol):
    """What the server tells its service manager (systemd.SystemdNotifier's calls)."""

    def ready(self, status: str | None = None) -> bool: ...

    def status(self, text: str) -> bool: ...

    def stopping(self, status: str | None = None) -> bool: ...

    def reloading(self) -> bool: ...

    def watchdog(self) -> bool: ...

    def watchdog_interval(self) -> float | None: ...


class PeerStats(Protocol):
    """Workers under a supervisor share snapshots so /metrics covers all of them."""

    def publish(self, snapshot: dict[str, Any]) -> None: ...

    def render_metrics(self, own_snapshot: dict[str, Any]) -> str: ...


class _Listener:
    def __init__(self, server: Server, sock: socket.socket) -> None:
        self.server = server
        self.sock = sock

    def on_readable(self) -> None:
        self.server._accept(self.sock)

    def on_writable(self) -> None:  # pragma: no cover - never registered for writing
        pass


class Server:
    def __init__(self, config: Config, *, handler: Handler | None = None,
                 listen_sockets: list[socket.socket] | None = None,
                 notifier: Notifier | None = None, worker_id: int | None = None,
                 peer_stats: PeerStats | None = None) -> None:
        self.config = config
        self.notifier: Notifier = notifier if notifier is not None else SystemdNotifier()
        # Set under a supervisor: shown in /stats and as a metrics label; the parent's pid is
        # watched so a worker orphaned by a killed supervisor drains instead of living on.
        self.worker_id = worker_id
        self._parent_pid = os.getppid() if worker_id is not None else None
        self.peer_stats = peer_stats
        self.loop = EventLoop()
        self.stats = Stats(started_at=time.time())
        self.protocol_limits = ProtocolLimits(
            max_message_size=config.max_message_size,
            max_header_bytes=config.max_header_bytes,
            max_headers=config.max_headers,
            compression=config.compression == "deflate",
            deflate_window_bits=config.deflate_window_bits,
        )
        self.ssl_context = self._make_ssl_context() if config.tls else None
        if handler is None:
            handler = load_handler(config.handler)
        self.dispatcher = Dispatcher(self.loop, config, self.stats, handler)
        self.max_connections = config.max_connections or _default_max_connections()
        self.connections: dict[int, Connection] = {}
        self._ids = itertools.count(1)
        self._listeners: list[_Listener] = []
        self._given_sockets = listen_sockets
        self._accept_paused = False
        self._pending_signals: list[int] = []
        self._sigint_count = 0
        self.draining = False
        self._drain_deadline = 0.0
        self._stopped = threading.Event()
        self.exit_code = 0
        self.loop.on_iteration = self.stats.loop_lag_seconds.observe

    # -- set-up -----------------------------------------------------------------------------
    def _make_ssl_context(self) -> ssl.SSLContext:
        cert, key = self.config.cert, self.config.key
        if cert is None or key is None:
            from .certs import ensure_certs  # only needed when no certificate was given

            paths = ensure_certs(self.config.certs_dir)
            cert, key = paths.server_cert, paths.server_key
        return tls.make_server_context(cert, key)

    def start(self) -> None:
        socks = self._given_sockets or [self._bind()]
        for sock in socks:
            sock.setblocking(False)
            listener = _Listener(self, sock)
            self.loop.register(sock, EVENT_READ, listener)
            self._listeners.append(listener)
        logger.info("listening on %s (max %d connections, %d threads)", self.urls()[0],
                    self.max_connections, self.config.threads)
        self.notifier.ready(self.status_text())
        self.loop.call_later(_STATUS_INTERVAL, self._report_status)
        interval = self.notifier.watchdog_interval()
        if interval is not None:
            self.loop.call_later(interval, self._feed_watchdog, interval)
        if self.peer_stats is not None:
            self._publish_stats()

    def _bind(self) -> socket.socket:
        family = socket.AF_INET6 if ":" in self.config.host else socket.AF_INET
        sock = socket.socket(family, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if self.config.workers > 1 and hasattr(socket, "SO_REUSEPORT"):
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        sock.bind((self.config.host, self.config.port))
        sock.listen(self.config.backlog)
        return sock

    @property
    def address(self) -> tuple[str, int]:
        host, port = self._listeners[0].sock.getsockname()[:2]
        return host, port

    def urls(self) -> list[str]:
        out = []
        for listener in self._listeners:
            host, port = listener.sock.getsockname()[:2]
            host = f"[{host}]" if ":" in host else host
            out.append(f"{self.config.scheme}://{host}:{port}")
        return out

    # -- service manager --------------------------------------------------------------------
    def status_text(self) -> str:
        websockets = sum(1 for c in self.connections.values() if c.state is ConnState.OPEN)
        state = "draining; " if self.draining else ""
        return (f"{state}{len(self.connections)} connections open ({websockets} WebSockets), "
                f"{self.stats.connections_total} accepted")

    def _report_status(self) -> None:
        self.notifier.status(self.status_text())
        self.loop.call_later(_STATUS_INTERVAL, self._report_status)

    def _feed_watchdog(self, interval: float) -> None:
        # A timer, not a thread: if the loop hangs, the pings stop and the manager restarts us.
        self.notifier.watchdog()
        if self._parent_pid is not None and os.getppid() != self._parent_pid:
            self.begin_shutdown("supervisor exited")
        self.loop.call_later(interval, self._feed_watchdog, interval)

    def _publish_stats(self) -> None:
        assert self.peer_stats is not None
        self.peer_stats.publish(self.snapshot())
        self.loop.call_later(1.0, self._publish_stats)

    # -- accepting --------------------------------------------------------------------------
    def _accept(self, listen_sock: socket.socket) -> None:
        for _ in range(_ACCEPTS_PER_EVENT):
            try:
                sock, address = listen_sock.accept()
            except (BlockingIOError, InterruptedError):
                return
            except OSError as exc:
                if exc.errno in (errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM):
                    self._pause_accepting(exc)
                    return
                if exc.errno in (errno.ECONNABORTED, errno.EPROTO):
                    continue  # the client gave up while queued: not our problem
                raise
            self._adopt(sock, address)

    def _adopt(self, sock: socket.socket, address: Any) -> None:
        open_now = len(self.connections)
        if open_now >= self.max_connections + _REFUSAL_HEADROOM:
            self.stats.connections_rejected += 1
            sock.close()
            return
        # Over the limit, only an upgrade is refused (and counted, when the 503 goes out):
        # /healthz and /stats stay answerable on a full server.
        refuse = 503 if (open_now >= self.max_connections or self.draining) else 0
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        try:
            wrapped = tls.wrap(self.ssl_context, sock)
        except (ssl.SSLError, OSError) as exc:
            self.stats.tls_handshake_failures += 1
            logger.debug("TLS wrap failed for %s: %r", address, exc)
            sock.close()
            return
        conn = Connection(self, wrapped, address, next(self._ids), refuse)
        self.connections[conn.conn_id] = conn
        self.stats.connections_open = len(self.connections)
        self.stats.connections_total += 1
        conn.start()

    def _pause_accepting(self, exc: OSError) -> None:
        if self._accept_paused:
            return
        self._accept_paused = True
        self.stats.accept_pauses += 1
        logger.warning("accept failed (%s) with %d connections open: pausing accepts for %.1fs",
                       os.strerror(exc.errno or 0), len(self.connections), _ACCEPT_PAUSE)
        for listener in self._listeners:
            self.loop.unregister(listener.sock)
        self.loop.call_later(_ACCEPT_PAUSE, self._resume_accepting)

    def _resume_accepting(self) -> None:
        self._accept_paused = False
        if self.draining:
            return
        for listener in self._listeners:
            self.loop.register(listener.sock, EVENT_READ, listener)

    # -- connection callbacks ---------------------------------------------------------------
    def connection_closed(self, conn: Connection) -> None:
        self.connections.pop(conn.conn_id, None)
        self.stats.connections_open = len(self.connections)
        self.dispatcher.forget(conn)

    def respond_http(self, conn: Connection, request: HttpRequest) -> None:
        routes.respond(self, conn, request)

    def snapshot(self) -> dict[str, Any]:
        snap = self.stats.snapshot()
        snap["websockets_open"] = sum(1 for c in self.connections.values()
                                      if c.state is ConnState.OPEN)
        snap["uptime_seconds"] = time.time() - self.stats.started_at
        snap["max_connections"] = self.max_connections
        snap["pid"] = os.getpid()
        snap["worker"] = self.worker_id
        return snap

    # -- running and stopping ---------------------------------------------------------------
    def install_signal_handlers(self) -> None:
        """Main thread only: signals set a flag; the wake-up fd interrupts select()."""
        signal.set_wakeup_fd(self.loop.wakeup_fd, warn_on_full_buffer=False)
        for signum in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
            signal.signal(signum, self._on_signal)

    def _on_signal(self, signum: int, frame: FrameType | None) -> None:
        self._pending_signals.append(signum)

    def serve_forever(self) -> int:
        """Run until drained or stopped; returns the process exit code."""
        loop = self.loop
        try:
            while not self._stopped.is_set():
                loop.run_once(max_wait=1.0)
                if self._pending_signals:
                    self._handle_signals()
        finally:
            self._close_everything()
        return self.exit_code

    def _handle_signals(self) -> None:
        pending, self._pending_signals = self._pending_signals, []
        for signum in pending:
            if signum == signal.SIGHUP:
                self.notifier.reloading()
                self.reload_certificate()
                self.notifier.ready(self.status_text())
            elif signum == signal.SIGINT:
                self._sigint_count += 1
                if self._sigint_count >= 2:
                    logger.warning("second SIGINT: exiting now")
                    self.exit_code = 130
                    self._stopped.set()
                    return
                self.begin_shutdown("SIGINT")
            else:
                self.begin_shutdown(signal.Signals(signum).name)

    def reload_certificate(self) -> None:
        if not self.config.tls:
            return
        try:
            self.ssl_context = self._make_ssl_context()
        except (ssl.SSLError, OSError) as exc:
            logger.error("certificate reload failed, keeping the old one: %s", exc)
            return
        logger.info("certificate reloaded; new connections use it")

    def request_shutdown(self) -> None:
        """Thread-safe: begin a graceful shutdown."""
        self.loop.call_soon_threadsafe(self.begin_shutdown, "request")

    def begin_shutdown(self, why: str) -> None:
        if self.draining:
            return
        self.draining = True  # from here /healthz and new upgrades get 503
        grace = self.config.drain_grace
        self._drain_deadline = self.loop.time() + grace + self.config.shutdown_timeout
        self.notifier.stopping(f"draining {len(self.connections)} connections")
        logger.info("%s: draining %d connections, %d messages in flight (grace %.1fs, deadline "
                    "%.1fs)", why, len(self.connections), self.dispatcher.in_flight_total,
                    grace, grace + self.config.shutdown_timeout)
        if grace > 0:
            self.loop.call_later(grace, self._close_for_shutdown)
        else:
            self._close_for_shutdown()

    def _close_for_shutdown(self) -> None:
        """Stop accepting, close every connection with 1001, then wait for the drain."""
        for listener in self._listeners:
            try:
                self.loop.unregister(listener.sock)
            except (KeyError, ValueError):
                pass
            listener.sock.close()
        for conn in list(self.connections.values()):
            conn.close(1001, "server shutting down")
        self._check_drained()

    def _check_drained(self) -> None:
        if not self.connections and self.dispatcher.idle:
            logger.info("drained: all connections closed and all messages handled")
            self._stopped.set()
            return
        if self.loop.time() >= self._drain_deadline:
            logger.error("shutdown deadline passed with %d connections open and %d messages "
                         "unhandled", len(self.connections), self.dispatcher.in_flight_total)
            self.exit_code = 1 if self.dispatcher.in_flight_total else 0
            self._stopped.set()
            return
        self.loop.call_later(0.02, self._check_drained)

    def stop(self) -> None:
        """Thread-safe: stop at once (tests, embedding)."""
        self._stopped.set()
        self.loop.wake()

    def _close_everything(self) -> None:
        for conn in list(self.connections.values()):
            conn.proto.abort()
            conn._close_transport()
        for listener in self._listeners:
            if listener.sock.fileno() != -1:
                try:
                    self.loop.unregister(listener.sock)
                except (KeyError, ValueError):
                    pass
                listener.sock.close()
        graceful = self.exit_code == 0 and self.dispatcher.idle
        self.dispatcher.shutdown(wait=graceful)
        self.loop.close()


def _default_max_connections() -> int:
    """The open-files limit (read after run() raised it) less limits.DEFAULT_RESERVE."""
    try:
        import resource

        soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    except (ImportError, ValueError, OSError):
        return 1000
    if soft == resource.RLIM_INFINITY:
        return 100_000
    return max(1, soft - limits.DEFAULT_RESERVE)


def run(config: Config, *, handler: Handler | None = None,
        listen_sockets: list[socket.socket] | None = None, worker_id: int | None = None,
        announce: bool = True, peer_stats: PeerStats | None = None) -> int:
    """Start a server on this (main) thread and serve until shutdown; the exit code.

    Without `listen_sockets`, sockets passed by systemd ($LISTEN_FDS) are used when present,
    else --host/--port is bound. `announce` prints the `listening on URL` line on stdout (a
    supervisor prints it for its workers).
    """
    soft, _ = limits.raise_nofile_limit()
    if listen_sockets is None:
        listen_sockets = listen_fds()
        if listen_sockets:
            logger.info("socket activation: serving on %d passed socket(s), not binding %s:%d",
                        len(listen_sockets), config.host, config.port)
    server = Server(config, handler=handler, listen_sockets=listen_sockets or None,
                    worker_id=worker_id, peer_stats=peer_stats)
    warning = limits.check_connection_budget(server.max_connections, soft)
    if warning:
        logger.warning("%s", warning)
    if threading.current_thread() is threading.main_thread():
        # Before start(): READY=1 invites a SIGTERM, which must find our handler in place.
        server.install_signal_handlers()
    server.start()
    if announce:
        for url in server.urls():
            print(f"listening on {url}", flush=True)
    code = server.serve_forever()
    sys.stdout.flush()
    return code
