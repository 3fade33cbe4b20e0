"""What a handler holds: its connection's handle, safe to use from any thread and after a close.

A handle never touches the socket or the loop's state: `send` and `close` queue a call for the
loop thread (`EventLoop.call_soon_threadsafe`), which acts on the connection between two
readiness events (curio's `wake()`; gunicorn's gthread method queue).
"""

from __future__ import annotations

from typing import Any, Protocol

from .http import PeerCertificate


class Sender(Protocol):
    """The loop-thread side a handle talks to (connection.Connection implements it)."""

    def send_message(self, data: str | bytes) -> None: ...

    def close(self, code: int = 1000, reason: str = "") -> None: ...


class ThreadsafeCalls(Protocol):
    """The one loop method a handle needs (loop.EventLoop implements it)."""

    def call_soon_threadsafe(self, callback: Any, *args: Any, wake: bool = True) -> None: ...


class ConnectionHandle:
    """A handler's view of its connection.

    `remote_address` is the client's (host, port); `peer_cert` the identity in its TLS client
    certificate (None without one); `identity` what the --authorize hook returned (None without
    a hook)."""

    __slots__ = ("conn_id", "remote_address", "peer_cert", "identity", "sent", "_loop", "_conn")

    def __init__(self, loop: ThreadsafeCalls, conn: Sender, conn_id: int, remote_address: Any,
                 peer_cert: PeerCertificate | None = None, identity: Any = None) -> None:
        self.conn_id = conn_id
        self.remote_address = remote_address
        self.peer_cert = peer_cert
        self.identity = identity
        # Messages sent through this handle; the dispatcher reads it to tell a handler that
        # answers (its client waits) from one that only ingests.
        self.sent = 0
        self._loop = loop
        self._conn = conn

    def send(self, data: str | bytes) -> None:
        """Queue a text (str) or binary (bytes) message; returns at once, from any thread."""
        self.sent += 1
        self._loop.call_soon_threadsafe(self._conn.send_message, data)

    def close(self, code: int = 1000, reason: str = "") -> None:
        """Start a clean close with `code`; returns at once, from any thread."""
        self._loop.call_soon_threadsafe(self._conn.close, code, reason)

    def __repr__(self) -> str:
        return f"<ConnectionHandle {self.conn_id} {self.remote_address}>"
