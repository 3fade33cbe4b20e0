"""Server configuration: one frozen, typed dataclass, validated once at start-up.

Every default says why. Limits are compared with other servers' where that helps a user choose.
"""

from __future__ import annotations

import re
import ipaddress
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Literal

from .errors import ConfigError

# The admin listener (/stats, /metrics, /healthz; admin.py). Loopback: these figures are for the
# operator, not the network. Port 8442, next to the public 8443 and outside 9100-9999, the range
# Prometheus allocates to exporters (all of it taken: 9100 node exporter, 9464 OpenTelemetry's
# Prometheus exporter, 9901 Envoy's admin); nor 9090/9091/9093 (Prometheus, Pushgateway,
# Alertmanager), 8404 (HAProxy's stats page in its docs), 8444 (Chia, which people run on Pis),
# 8448 (Matrix) or 3000/8000/8080 (dashboards and development servers).
DEFAULT_ADMIN = "127.0.0.1:8442"

DecodeMode = Literal["json", "telemetry", "none"]
InvalidJsonPolicy = Literal["keep", "close"]
Compression = Literal["off", "deflate"]
ClientCertMode = Literal["required", "optional"]

# What a browser sends as Origin (RFC 6454 §6.2): scheme://host[:port], lower case, no path;
# "null" for opaque origins (sandboxed frames, file: pages).
_ORIGIN = re.compile(r"[a-z][a-z0-9+.-]*://[^/?#\s]+|null|\*")


def _default_threads() -> int:
    # Handlers may block (a database call), so more threads than cores pay off; 16 stays small
    # enough that decode-only workloads do not thrash the GIL.
    return 16


@dataclass(frozen=True, slots=True)
class Config:
    # Loopback by default: exposing a server is a decision the operator makes with --host.
    host: str = "127.0.0.1"
    # 8443: the conventional unprivileged TLS port; 443 needs a capability or socket activation.
    port: int = 8443
    cert: Path | None = None
    key: Path | None = None
    # Where a first start writes a throwaway CA and server certificate when --cert is not given.
    certs_dir: Path = Path("certs")
    tls: bool = True
    # A CA certificate (PEM): clients must present a certificate it signed (mutual TLS). None:
    # no client certificates are asked for.
    client_ca: Path | None = None
    # With --client-ca: "optional" also accepts clients without a certificate (the handler sees
    # handle.peer_cert None); one that is presented must still verify.
    client_cert: ClientCertMode = "required"
    # "module:function" called in the pool with each upgrade Request; its result decides (see
    # authorize.py). None: every upgrade that passes the other checks is accepted.
    authorize: str | None = None
    # Origins a browser page may connect from (exact matches, "*" for any); when given, an
    # upgrade without a listed Origin gets 403. Empty: Origin is not checked, since devices and
    # other non-browser clients send none.
    allowed_origin: tuple[str, ...] = ()
    threads: int = field(default_factory=_default_threads)
    # "module:function" called in the pool with (handle, message); None counts and drops.
    handler: str | None = None
    # "module:Class", a dataclass messages are decoded into; None: the handler's annotation,
    # else the Telemetry example (the seed's workload).
    message_type: str | None = None
    # "json" ("telemetry" is its old name): decode each message into the message type before
    # the handler sees it; "none": hand the handler the raw str/bytes (echo servers).
    decode: DecodeMode = "json"
    # Invalid JSON is always counted; "close" also closes that connection with 1007.
    invalid_json: InvalidJsonPolicy = "keep"
    # 1 MiB, as websockets' default: 100x the workload's message. Bytes as sent (text encoded,
    # inflated with deflate), plus 64 for each frame before a message's last (reassembly.py).
    max_message_size: int = 1 << 20
    # 16 KiB of request head and 100 headers, as h11 and nginx (large_client_header_buffers) allow.
    max_header_bytes: int = 16 * 1024
    max_headers: int = 100
    # 20 s, as websockets: frequent enough to keep NAT mappings alive, cheap at 10k connections.
    ping_interval: float = 20.0
    ping_timeout: float = 20.0
    # A client has 10 s from TCP accept to a completed WebSocket upgrade (slowloris bound).
    handshake_timeout: float = 10.0
    # Nothing at all received (pongs count) for this long closes the connection; it only bites
    # when pings are off or the peer stops answering them. 0 disables.
    idle_timeout: float = 120.0
    # How long we wait for the peer's close frame after sending ours before dropping TCP.
    close_timeout: float = 5.0
    # None: the open-files limit minus a reserve, decided at start-up (see limits.py).
    max_connections: int | None = None
    # Sockets that have not finished their handshake (PROXY header, TLS, upgrade) may hold at
    # most this many of those connections; past it the oldest is dropped for a new one (gate.py
    # says why). None: a quarter of --max-connections, at least 64 (or all of them if fewer):
    # far more than a reconnect storm at a few hundred handshakes per second keeps in flight.
    max_handshaking: int | None = None
    # Per client address (IPv6: per /64), checked before TLS; None is off, as nginx's limit_conn
    # and limit_req are by default: devices behind one NAT share an address, so the right value
    # depends on the fleet (deploy/rpi's env file suggests some).
    max_connections_per_ip: int | None = None
    # Token bucket per address: this many new connections per second, bursts of as many (at
    # least 1).
    max_handshakes_per_ip_per_s: float | None = None
    # Balancers that send the PROXY protocol (v1 or v2) first: their clients' real addresses
    # replace theirs. Empty: no PROXY protocol.
    proxy_protocol_from: tuple[str, ...] = ()
    # HOST:PORT of the admin listener, or "off" (see DEFAULT_ADMIN).
    admin: str = DEFAULT_ADMIN
    shutdown_timeout: float = 10.0
    # Seconds after SIGTERM during which the server keeps listening but answers /healthz and
    # new upgrades with 503, so a load balancer's health checks take it out of rotation before
    # connections are closed. 0: close at once (no balancer, or one drained by hand).
    drain_grace: float = 0.0
    # Fast messages wait up to this long for company before their pool unit is handed off.
    # Each hand-off wakes a pool thread (a futex wake, two context switches, a GIL hand-off):
    # at 500 clients x 1 msg/s, 10 ms cut server CPU per message from ~200 to ~160 us against
    # 2 ms (benchmarks/server_cost.py); at 5,000 clients units fill up before it matters.
    # Handlers that reply skip it (their clients wait); 0 turns it off for everyone.
    batch_linger: float = 0.010
    # Messages handed to the pool but not yet handled, per connection and in all. At the bound
    # the loop stops reading that connection (TCP backpressure), so memory stays bounded.
    max_in_flight_per_connection: int = 64
    max_in_flight_total: int = 8192
    # The same bound in bytes: four messages at the default --max-message-size, 400 of the
    # workload's. In all, messages are bounded by --max-buffered-bytes.
    max_in_flight_bytes_per_connection: int = 4 << 20
    # Everything buffered for clients (partial messages, mailboxes and the pool, queued replies,
    # inflated data; budget.py). None: a quarter of memory (256 MiB on a 1 GB Raspberry Pi 4),
    # split between --workers. Past it connections stop being read, and if it does not recover
    # within half a second those holding the most are closed.
    max_buffered_bytes: int | None = None
    # The high-water mark of a client's queued replies: over it, handle.send(timeout=...) waits,
    # and the client must take at least this much every --slow-reader-timeout seconds or it is
    # closed (1008). One reply bigger than this does not make a reader slow.
    outbound_limit_bytes: int = 1 << 20
    # 10 s: a client on a 1 Mbit/s uplink drains 1 MiB in 8 s; a dead one is found well before
    # the keepalive's 40 s.
    slow_reader_timeout: float = 10.0
    # Bytes read per recv; a TLS record is at most 16 KiB of plaintext, so 64 KiB covers several
    # plain-socket messages per call without holding large buffers.
    read_chunk_bytes: int = 64 * 1024
    # The listen() backlog: enough for thousands of clients connecting at once (the kernel caps
    # it at net.core.somaxconn).
    backlog: int = 4096
    compression: Compression = "off"
    # permessage-deflate window bits (RFC 7692 §7.1.2); 15 is zlib's and the RFC's default.
    deflate_window_bits: int = 15
    workers: int = 1
    # With --workers: seconds without a heartbeat (a worker's loop sends one a second) before the
    # supervisor kills and restarts that worker. A loop iteration takes well under a millisecond,
    # so ten missed beats is a hung loop, not a busy one; below systemd's usual WatchdogSec=30 so
    # the supervisor acts before systemd restarts everything.
    worker_hang_timeout: float = 10.0
    log_level: str = "info"

    def validate(self) -> Config:
        """Raise ConfigError naming the first invalid value; return self for chaining."""
        if not 0 <= self.port <= 65535:
            raise ConfigError(f"--port {self.port} is not a TCP port")
        positive = ("threads", "max_message_size", "max_header_bytes", "max_headers",
                    "max_in_flight_per_connection", "max_in_flight_total",
                    "max_in_flight_bytes_per_connection", "outbound_limit_bytes",
                    "read_chunk_bytes", "backlog", "workers")
        for name in positive:
            if getattr(self, name) <= 0:
                raise ConfigError(f"--{name.replace('_', '-')} must be positive")
        non_negative = ("ping_interval", "ping_timeout", "idle_timeout", "close_timeout",
                        "shutdown_timeout", "drain_grace", "batch_linger", "slow_reader_timeout")
        for name in non_negative:
            if getattr(self, name) < 0:
                raise ConfigError(f"--{name.replace('_', '-')} must not be negative")
        if self.read_chunk_bytes <= 16384:
            # A read shorter than the chunk must mean "drained": a TLS read returns one record.
            raise ConfigError("--read-chunk-bytes must be above 16384 (a TLS record's plaintext)")
        if self.handshake_timeout <= 0:
            raise ConfigError("--handshake-timeout must be positive")
        if self.worker_hang_timeout < 2:
            raise ConfigError("--worker-hang-timeout must be at least 2 seconds (workers "
                              "heartbeat once a second)")
        if self.max_connections is not None and self.max_connections <= 0:
            raise ConfigError("--max-connections must be positive")
        if self.max_buffered_bytes is not None and self.max_buffered_bytes <= 0:
            raise ConfigError("--max-buffered-bytes must be positive")
        if self.tls and (self.cert is None) != (self.key is None):
            raise ConfigError("--cert and --key go together")
        for path in (self.cert, self.key):
            if path is not None and self.tls and not path.is_file():
                raise ConfigError(f"{path} does not exist")
        if not 9 <= self.deflate_window_bits <= 15:
            raise ConfigError("--deflate-window-bits must be between 9 and 15")
        if self.handler is not None and ":" not in self.handler:
            raise ConfigError("--handler must be module:function")
        if self.message_type is not None and ":" not in self.message_type:
            raise ConfigError("--message-type must be module:Class")
        if self.authorize is not None and ":" not in self.authorize:
            raise ConfigError("--authorize must be module:function")
        self._validate_client_certs()
        if isinstance(self.allowed_origin, str):
            raise ConfigError("allowed_origin is a tuple of origins, not one string")
        for origin in self.allowed_origin:
            if not _ORIGIN.fullmatch(origin) or origin != origin.lower():
                raise ConfigError(f"--allowed-origin {origin!r}: an origin is scheme://host[:port] "
                                  "in lower case, without a path or trailing slash (as browsers "
                                  "send it), or '*'")
        for name in ("max_handshaking", "max_connections_per_ip", "max_handshakes_per_ip_per_s"):
            value = getattr(self, name)
            if value is not None and value <= 0:
                raise ConfigError(f"--{name.replace('_', '-')} must be positive")
        if not isinstance(self.proxy_protocol_from, tuple):
            raise ConfigError("proxy_protocol_from must be a tuple of addresses or CIDRs")
        for cidr in self.proxy_protocol_from:
            try:
                ipaddress.ip_network(cidr, strict=False)
            except ValueError:
                raise ConfigError(f"--proxy-protocol-from {cidr!r} is not an address or "
                                  "network (CIDR)") from None
        self.admin_address()  # raises ConfigError when malformed
        return self

    def _validate_client_certs(self) -> None:
        if self.client_cert not in ("required", "optional"):
            raise ConfigError("--client-cert must be required or optional")
        if self.client_ca is None:
            if self.client_cert == "optional":
                raise ConfigError("--client-cert optional needs --client-ca")
            return
        if not self.tls:
            raise ConfigError("--client-ca needs TLS (it cannot be used with --no-tls)")
        if not self.client_ca.is_file():
            raise ConfigError(f"--client-ca {self.client_ca} does not exist")

    def connection_settings(self) -> ConnectionSettings:
        """The part of this configuration every connection reads."""
        return ConnectionSettings(**{f.name: getattr(self, f.name)
                                     for f in fields(ConnectionSettings)})

    def admin_address(self) -> tuple[str, int] | None:
        """--admin as (host, port), None when off; ConfigError when malformed."""
        if self.admin == "off":
            return None
        host, sep, port_text = self.admin.rpartition(":")
        host = host[1:-1] if host.startswith("[") and host.endswith("]") else host
        if not sep or not host or not port_text.isdigit() or int(port_text) > 65535:
            raise ConfigError(f"--admin {self.admin!r} is not HOST:PORT (or 'off')")
        return host, int(port_text)

    @property
    def scheme(self) -> str:
        return "wss" if self.tls else "ws"


@dataclass(frozen=True, slots=True)
class ConnectionSettings:
    """What a connection needs from the configuration: `Config.connection_settings()` (Config
    has the defaults and the reasons)."""

    handshake_timeout: float
    ping_interval: float
    ping_timeout: float
    idle_timeout: float
    close_timeout: float
    outbound_limit_bytes: int
    slow_reader_timeout: float
    read_chunk_bytes: int
