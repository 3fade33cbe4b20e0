"""The gate: what happens to an accepted TCP socket before it may cost us a TLS handshake.

How this works: the server hands every accepted socket to `Gate.offer`. Three checks, each
before any TLS work, so a refused client costs an accept and a close:

1. **Room for handshakes.** A socket that has not finished its handshake (PROXY header, TLS,
   HTTP upgrade) is *handshaking*. At most `max_handshaking` sockets may be (--max-handshaking,
   by default a quarter of --max-connections), and at most --max-connections plus a small
   headroom may be open in all. Past either bound the **oldest handshaking socket is dropped**
   to make room for the new one. Refusing newcomers instead would hand the server to whoever
   holds the most idle sockets: 1,300 silent TCP connections from one address (no TLS cost to
   their owner) would lock every new client out for as long as they are renewed. Dropping the
   oldest means such sockets last only until that many newer ones arrive, while a real client
   finishes its handshake in milliseconds and is rarely the oldest; to push one out, an attacker
   must open `max_handshaking` connections within that client's handshake time. Only when every
   open socket is an established WebSocket is a newcomer refused. (WebSockets themselves are
   bounded by --max-connections at the upgrade: 503.)
2. **The PROXY protocol** (--proxy-protocol-from CIDR): a connection from a listed balancer must
   start with a PROXY v1 or v2 header (proxy_protocol.py), read with MSG_PEEK and consumed
   exactly, within --handshake-timeout and 2 KiB; its client address then replaces the peer's
   for everything after (limits, logs, `request.remote_address`, `handle.remote_address`). A
   missing or malformed header closes the connection. A connection from any other address is
   served as a direct client, but if its first bytes begin a PROXY header it is closed: such a
   header would be a client naming its own address. A header for the balancer's own connection
   (v2 LOCAL, v1 UNKNOWN: its health checks) keeps the balancer's address and is exempt from
   per-address limits.
3. **Per-address limits** (peer_limits.PerAddressLimits): connections held and handshakes per
   second per client address, off unless configured.

Every refusal is counted by reason (`Stats.reject`: connections_rejected_by_reason in /stats,
webscale_connections_rejected_total{reason} in /metrics) and logged at most once per reason
every `_LOG_EVERY` seconds, with the address and how many more were refused meanwhile.
"""

from __future__ import annotations

import logging
import socket
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol

from .peer_limits import PerAddressLimits, Refusal, TrustedNetworks, address_key
from .errors import ProxyHeaderError
from .loop import EVENT_READ, EventLoop, Timer
from .proxy_protocol import (
    V1_MAX_LENGTH,
    V2_DEFAULT_MAX_LENGTH,
    ProxyHeader,
    ProxyHeaderParser,
    looks_like_proxy_header,
)
from .stats import Stats

logger = logging.getLogger(__name__)

# One line per refusal reason at most this often: an attack must not flood the journal (the
# same rule as the upgrade refusals' log lines).
_LOG_EVERY = 1.0
# Full buckets are dropped this often (peer_limits.PerAddressLimits.expire).
_EXPIRE_EVERY = 5.0
# The most a PROXY header may take: v2's fixed part plus its bounded payload (v1 is shorter).
_MAX_HEADER = max(V1_MAX_LENGTH, 16 + V2_DEFAULT_MAX_LENGTH)
# Enough of a direct client's first bytes to tell a PROXY signature from TLS or HTTP.
_SNIFF_BYTES = 16


class Handshaking(Protocol):
    """A socket between accept and a finished handshake (connection.Connection, or the PROXY
    header reader below): the gate drops the oldest with `abort()`."""

    @property
    def address(self) -> Any: ...

    def abort(self) -> None: ...


@dataclass(frozen=True, slots=True)
class GateSettings:
    max_connections: int
    max_handshaking: int
    # Sockets accepted past --max-connections still get a 503 (so clients see why); past this
    # many more they are closed at once, since each costs a file descriptor.
    refusal_headroom: int = 256
    # How long a balancer has to send its PROXY header (--handshake-timeout).
    header_timeout: float = 10.0
    trusted_proxies: TrustedNetworks | None = None


OpenConnection = Callable[[socket.socket, Any], Handshaking | None]


class Gate:
    def __init__(self, loop: EventLoop, stats: Stats, settings: GateSettings,
                 per_address: PerAddressLimits | None, open_connection: OpenConnection) -> None:
        self.loop = loop
        self.stats = stats
        self.settings = settings
        self.per_address = per_address
        # Wraps the socket for TLS and starts a Connection (the server's); None if that failed.
        self._open_connection = open_connection
        # Insertion-ordered: the first is the oldest (dropped first when room is needed).
        self.handshaking: dict[Handshaking, None] = {}
        self.open = 0  # sockets held: connections the server owns plus header readers
        # Admitted without counting against --max-connections-per-ip (the balancer's own
        # connections); every other connection's count is released by its address on close, so
        # nothing is kept per open connection.
        self._uncounted: set[Handshaking] = set()
        self._readers: set[_ProxyHeaderReader] = set()
        self._log_last: dict[Refusal, float] = {}
        self._log_suppressed: dict[Refusal, int] = {}

    def start(self) -> None:
        if self.per_address is not None and self.per_address.rate is not None:
            self.loop.call_later(_EXPIRE_EVERY, self._expire)

    # -- accepting --------------------------------------------------------------------------
    def offer(self, sock: socket.socket, peer: Any) -> None:
        """An accepted socket: refuse it, read a PROXY header first, or open a connection."""
        proxies = self.settings.trusted_proxies
        if proxies is None:
            self._admit(sock, peer, limited=True)
            return
        if not self._make_room():
            self._refuse(sock, peer, Refusal.MAX_CONNECTIONS)
            return
        reader = _ProxyHeaderReader(self, sock, peer, required=_host(peer) in proxies)
        self._readers.add(reader)
        self.handshaking[reader] = None
        self.open += 1
        reader.start()

    def _admit(self, sock: socket.socket, address: Any, *, limited: bool) -> None:
        limits = self.per_address
        counted = None  # the key counted against --max-connections-per-ip, if any
        if limited and limits is not None:
            key = address_key(address)
            refusal = limits.admit(key, self.loop.now)
            if refusal is not None:
                self._refuse(sock, address, refusal)
                return
            if limits.counts_connections:
                counted = key
        if not self._make_room():
            if counted is not None and limits is not None:
                limits.release(counted)
            self._refuse(sock, address, Refusal.MAX_CONNECTIONS)
            return
        conn = self._open_connection(sock, address)
        if conn is None:
            if counted is not None and limits is not None:
                limits.release(counted)
            return
        self.handshaking[conn] = None
        self.open += 1
        if counted is None and limits is not None and limits.counts_connections:
            self._uncounted.add(conn)

    def _make_room(self) -> bool:
        """Room for one more socket, dropping the oldest handshaking one if need be; False
        when every open socket is an established connection and the total is at its cap."""
        settings = self.settings
        if (len(self.handshaking) < settings.max_handshaking
                and self.open < settings.max_connections + settings.refusal_headroom):
            return True
        if not self.handshaking:
            return False
        oldest = next(iter(self.handshaking))
        self.count_refusal(Refusal.HANDSHAKE_SHARE, oldest.address)
        oldest.abort()  # its close comes back through closed() / _reader_closed()
        if oldest in self.handshaking:  # pragma: no cover - abort always reports back
            self.handshaking.pop(oldest)
            self.open -= 1
        return True

    def _refuse(self, sock: socket.socket, address: Any, refusal: Refusal) -> None:
        self.count_refusal(refusal, address)
        sock.close()

    # -- what the server tells us -------------------------------------------------------------
    def handshake_done(self, conn: Handshaking) -> None:
        """The upgrade was accepted: no longer handshaking (it stays open and counted)."""
        self.handshaking.pop(conn, None)

    def closed(self, conn: Handshaking) -> None:
        """A connection the gate admitted has closed."""
        self.handshaking.pop(conn, None)
        self.open -= 1
        limits = self.per_address
        if limits is not None and limits.counts_connections:
            if conn in self._uncounted:
                self._uncounted.discard(conn)
            else:
                limits.release(address_key(conn.address))

    def abort_pending(self) -> None:
        """Shutdown: drop every socket still waiting for its PROXY header."""
        for reader in list(self._readers):
            reader.abort()

    # -- the PROXY header readers' results --------------------------------------------------
    def _header_read(self, reader: _ProxyHeaderReader, header: ProxyHeader | None) -> None:
        self._forget(reader)
        if header is None or header.source is None:
            # A direct client (not a balancer), or the balancer's own connection: its health
            # checks must pass whatever the per-address limits, so only direct clients count.
            self._admit(reader.sock, reader.address, limited=header is None)
        else:
            self._admit(reader.sock, header.source, limited=True)

    def _reader_closed(self, reader: _ProxyHeaderReader) -> None:
        self._forget(reader)

    def _forget(self, reader: _ProxyHeaderReader) -> None:
        if reader in self._readers:
            self._readers.discard(reader)
            self.handshaking.pop(reader, None)
            self.open -= 1

    # -- bookkeeping --------------------------------------------------------------------------
    def count_refusal(self, refusal: Refusal, address: Any, detail: str = "") -> None:
        """Count a refusal and log it, at most one line per reason every _LOG_EVERY seconds."""
        self.stats.reject(refusal)
        now = self.loop.now
        last = self._log_last.get(refusal)
        if last is not None and now - last < _LOG_EVERY:
            self._log_suppressed[refusal] = self._log_suppressed.get(refusal, 0) + 1
            return
        self._log_last[refusal] = now
        more = self._log_suppressed.pop(refusal, 0)
        logger.warning("refused a connection from %s: %s%s%s", _describe(address),
                       refusal.value, f" ({detail})" if detail else "",
                       f" (and {more} more {refusal.value} refusals not logged since the last "
                       "line)" if more else "")

    def _expire(self) -> None:
        if self.per_address is not None:
            self.per_address.expire(self.loop.now)
        self.loop.call_later(_EXPIRE_EVERY, self._expire)


class _ProxyHeaderReader:
    """Reads a PROXY header off a raw socket (a listed balancer), or checks that a direct
    client does not send one (`required` False), then hands the socket back to the gate."""

    __slots__ = ("gate", "sock", "address", "required", "parser", "timer", "done")

    def __init__(self, gate: Gate, sock: socket.socket, address: Any, *, required: bool) -> None:
        self.gate = gate
        self.sock = sock
        self.address = address
        self.required = required
        self.parser = ProxyHeaderParser()
        self.timer: Timer | None = None
        self.done = False

    def start(self) -> None:
        self.sock.setblocking(False)
        self.gate.loop.register(self.sock, EVENT_READ, self)
        self.timer = self.gate.loop.call_later(self.gate.settings.header_timeout,
                                               self._timed_out)

    def on_readable(self) -> None:
        if self.done:
            return
        # Peek, so that bytes after the header (the client's TLS handshake) stay in the socket.
        try:
            data = self.sock.recv(_MAX_HEADER if self.required else _SNIFF_BYTES, socket.MSG_PEEK)
        except (BlockingIOError, InterruptedError):
            return
        except OSError as exc:
            self._fail(Refusal.PROXY_HEADER, f"connection lost: {exc}")
            return
        if not data:
            if self.required:
                self._fail(Refusal.PROXY_HEADER, "closed before a PROXY header")
            else:
                self.abort()
            return
        if not self.required:
            if looks_like_proxy_header(data):
                self._fail(Refusal.PROXY_UNTRUSTED, "a PROXY header from an address not in "
                           "--proxy-protocol-from")
            else:
                self._finish(None)
            return
        try:
            header = self.parser.feed(data)
        except ProxyHeaderError as exc:
            self._fail(Refusal.PROXY_HEADER, str(exc))
            return
        # Consume what belongs to the header: all of it while incomplete (so the level-triggered
        # poller does not report the same bytes again), exactly the header's end once complete.
        used = len(data) - (self.parser.surplus if header is not None else 0)
        try:
            consumed = self.sock.recv(used)
        except OSError as exc:
            self._fail(Refusal.PROXY_HEADER, f"connection lost: {exc}")
            return
        if len(consumed) != used:  # pragma: no cover - peeked bytes are in the socket
            self._fail(Refusal.PROXY_HEADER, "the header's bytes vanished")
            return
        if header is not None:
            self._finish(header)

    def on_writable(self) -> None:  # pragma: no cover - never registered for writing
        pass

    def _timed_out(self) -> None:
        self.timer = None
        if self.done:
            return
        if self.required:
            self._fail(Refusal.PROXY_HEADER, "no PROXY header within --handshake-timeout")
        else:
            self.gate.stats.handshake_timeouts += 1  # a silent direct client, as ever
            self.abort()

    def _fail(self, refusal: Refusal, detail: str) -> None:
        self.gate.count_refusal(refusal, self.address, detail)
        self.abort()

    def _release(self) -> None:
        self.done = True
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None
        try:
            self.gate.loop.unregister(self.sock)
        except (KeyError, ValueError, OSError):
            pass

    def _finish(self, header: ProxyHeader | None) -> None:
        self._release()
        self.gate._header_read(self, header)

    def abort(self) -> None:
        if self.done:
            return
        self._release()
        self.sock.close()
        self.gate._reader_closed(self)


def _host(address: Any) -> str:
    return str(address[0]) if isinstance(address, tuple) else str(address)


def _describe(address: Any) -> str:
    if isinstance(address, tuple) and len(address) >= 2:
        host = str(address[0])
        return f"[{host}]:{address[1]}" if ":" in host else f"{host}:{address[1]}"
    return str(address)
