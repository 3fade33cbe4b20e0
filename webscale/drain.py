"""How a server process stops: signals, the drain, the certificate reload, closing everything.

How this works: SIGTERM and SIGINT begin a drain: from then on /healthz and new upgrades get
503; after --drain-grace the listeners close, connections still in the gate are dropped and every
WebSocket is closed with 1001, and the process exits once every connection is closed and the
pool has handled every message it was given, or when --shutdown-timeout passes (exit code 1 if
messages were left unhandled). A second SIGINT exits at once (130). SIGHUP reloads the
certificate and the client CA for new connections, telling the service manager RELOADING=1 then
READY=1. `_close_everything` releases what the process holds on the way out, whatever the
reason.

`Draining` is a part of `server.Server` (a mixin, loop thread only).
"""

from __future__ import annotations

import logging
import signal
import ssl
from typing import TYPE_CHECKING

from .config import Config
from .dispatch import Dispatcher
from .budget import MemoryGuard
from .connection import Connection
from .gate import Gate
from .listeners import Listeners
from .loop import EventLoop
from .process import Notifier, ProcessScaffold
from .admin import AdminListener
from .snapshots import SnapshotResponder

logger = logging.getLogger("webscale.server")


class Draining:
    if TYPE_CHECKING:  # what it uses of server.Server, which defines all of these
        config: Config
        loop: EventLoop
        scaffold: ProcessScaffold
        notifier: Notifier
        dispatcher: Dispatcher
        memory_guard: MemoryGuard
        gate: Gate
        listeners: Listeners | None
        admin: AdminListener | None
        snapshot_responder: SnapshotResponder | None
        connections: dict[int, Connection]
        ssl_context: ssl.SSLContext | None
        exit_code: int
        _sigint_count: int
        _draining: bool
        _drain_deadline: float

        def status_text(self) -> str: ...

        def _make_ssl_context(self) -> ssl.SSLContext: ...

    def _on_signal(self, signum: int) -> None:
        if signum == signal.SIGHUP:
            self.notifier.reloading()
            self.reload_certificate()
            self.notifier.ready(self.status_text())
        elif signum == signal.SIGINT:
            self._sigint_count += 1
            if self._sigint_count >= 2:
                logger.warning("second SIGINT: exiting now")
                self.exit_code = 130
                self.scaffold.stop()
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
        client_ca = self.config.client_ca
        logger.info("certificate reloaded%s; new connections use it",
                    f" with client CA {client_ca}" if client_ca is not None else "")

    def begin_shutdown(self, why: str) -> None:
        if self._draining:
            return
        self._draining = True  # from here /healthz and new upgrades get 503
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
        if self.listeners is not None:
            self.listeners.close()
        self.gate.abort_pending()
        for conn in list(self.connections.values()):
            conn.close(1001, "server shutting down")
        self._check_drained()

    def _check_drained(self) -> None:
        if not self.connections and self.dispatcher.idle:
            logger.info("drained: all connections closed and all messages handled")
            self.scaffold.stop()
            return
        if self.loop.time() >= self._drain_deadline:
            logger.error("shutdown deadline passed with %d connections open and %d messages "
                         "unhandled", len(self.connections), self.dispatcher.in_flight_total)
            self.exit_code = 1 if self.dispatcher.in_flight_total else 0
            self.scaffold.stop()
            return
        self.loop.call_later(0.02, self._check_drained)

    def stop(self) -> None:
        """Thread-safe: stop at once (tests, embedding)."""
        self.scaffold.stop()

    def _close_everything(self) -> None:
        self.gate.abort_pending()
        for conn in list(self.connections.values()):
            conn.abort()
        # The admin listener stays up through the drain, so the drain can be watched.
        if self.admin is not None:
            self.admin.close()
        if self.snapshot_responder is not None:
            self.snapshot_responder.close()
        if self.listeners is not None:
            self.listeners.close()
        graceful = self.exit_code == 0 and self.dispatcher.idle
        self.memory_guard.cancel()
        self.dispatcher.shutdown(wait=graceful)
        self.loop.close()
