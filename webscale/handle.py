"""What a handler holds: its connection's handle, safe to use from any thread and after a close.

A handle never touches the socket or the loop's state: `send` and `close` queue a call for the
loop thread (`EventLoop.call_soon_threadsafe`), which acts on the connection between two
readiness events (curio's `wake()`; gunicorn's gthread method queue).

Backpressure for handlers: `send(data, timeout=...)` waits while the connection's outbound queue
is over its high-water mark (--outbound-limit-bytes). The handle counts what it sent since the
loop last confirmed the queue was low; past half the mark it asks the loop (through the same
queue, so everything sent before is applied first) to set an event once the queue is at or
below half the mark, and waits for that. A handler that produces faster than its client reads
is slowed to the client's pace instead of being closed as a slow reader; if the client takes
nothing for `timeout` seconds, `SendTimeout` is raised. Without a timeout `send` never waits.
"""

from __future__ import annotations

import threading
from typing import Any, Protocol

from .errors import SendTimeout
from .http import PeerCertificate

# Guards the handles' counts of unconfirmed bytes for timed sends from several threads; held
# for a few bytecodes by pool threads only, never by the loop.
_send_lock = threading.Lock()


class Sender(Protocol):
    """The loop-thread side a handle talks to (connection.Connection implements it)."""

    def send_message(self, data: str | bytes) -> None: ...

    def close(self, code: int = 1000, reason: str = "") -> None: ...

    def notify_when_drained(self, waiter: threading.Event, level: int) -> None: ...


class ThreadsafeCalls(Protocol):
    """The one loop method a handle needs (loop.EventLoop implements it)."""

    def call_soon_threadsafe(self, callback: Any, *args: Any, wake: bool = True) -> None: ...


class ConnectionHandle:
    """A handler's view of its connection.

    `remote_address` is the client's (host, port); `peer_cert` the identity in its TLS client
    certificate (None without one); `identity` what the --authorize hook returned (None without
    a hook)."""

    __slots__ = ("conn_id", "remote_address", "peer_cert", "identity", "sent", "_loop", "_conn",
                 "_high_water", "_unconfirmed")

    def __init__(self, loop: ThreadsafeCalls, conn: Sender, conn_id: int, remote_address: Any,
                 peer_cert: PeerCertificate | None = None, identity: Any = None,
                 high_water: int = 1 << 20) -> None:
        self.conn_id = conn_id
        self.remote_address = remote_address
        self.peer_cert = peer_cert
        self.identity = identity
        # Messages sent through this handle; the dispatcher reads it to tell a handler that
        # answers (its client waits) from one that only ingests.
        self.sent = 0
        self._loop = loop
        self._conn = conn
        self._high_water = high_water
        self._unconfirmed = 0  # bytes of timed sends since the loop last confirmed room

    def send(self, data: str | bytes, timeout: float | None = None) -> None:
        """Queue a text (str) or binary (bytes) message, from any thread.

        Without `timeout` it returns at once. With one it first waits while the connection's
        outbound queue is over its high-water mark (--outbound-limit-bytes), and raises
        `SendTimeout` if it does not drain within `timeout` seconds (the message is then not
        sent). On a closed connection the message is dropped, as without a timeout."""
        if timeout is not None:
            self._wait_for_room(len(data), timeout)
        self.sent += 1
        self._loop.call_soon_threadsafe(self._conn.send_message, data)

    def _wait_for_room(self, size: int, timeout: float) -> None:
        low_water = self._high_water // 2
        with _send_lock:
            if self._unconfirmed < low_water:
                self._unconfirmed += size
                return
        waiter = threading.Event()
        self._loop.call_soon_threadsafe(self._conn.notify_when_drained, waiter, low_water)
        if not waiter.wait(timeout):
            raise SendTimeout(f"conn {self.conn_id}: the client took too little of its queue "
                              f"within {timeout:g}s")
        with _send_lock:
            self._unconfirmed = size

    def close(self, code: int = 1000, reason: str = "") -> None:
        """Start a clean close with `code`; returns at once, from any thread."""
        self._loop.call_soon_threadsafe(self._conn.close, code, reason)

    def __repr__(self) -> str:
        return f"<ConnectionHandle {self.conn_id} {self.remote_address}>"
