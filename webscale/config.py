"""Server configuration: one frozen, typed dataclass, validated once at start-up.

Every default says why. Limits are compared with other servers' where that helps a user choose.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from .errors import ConfigError

DecodeMode = Literal["json", "telemetry", "none"]
InvalidJsonPolicy = Literal["keep", "close"]
Compression = Literal["off", "deflate"]


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
    # inflated with deflate), plus 64 for each frame before a message's last (protocol.py).
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
    shutdown_timeout: float = 10.0
    # Seconds after SIGTERM during which the server keeps listening but answers /healthz and
    # new upgrades with 503, so a load balancer's health checks take it out of rotation before
    # connections are closed. 0: close at once (no balancer, or one drained by hand).
    drain_grace: float = 0.0
    # Messages handed to the pool but not yet handled, per connection and in all. At the bound
    # the loop stops reading that connection (TCP backpressure), so memory stays bounded.
    # Fast messages wait up to this long for company before their pool unit is handed off.
    # Each hand-off wakes a pool thread and then the loop (~100 us of context switches on a
    # small VM), so at 3,000 msg/s lingering 2 ms cut server CPU per message from ~295 to
    # ~210 us (benchmarks/server_cost.py). Request/response handlers that want the lowest
    # latency at low load can set 0.
    batch_linger: float = 0.002
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
        return self

    @property
    def scheme(self) -> str:
        return "wss" if self.tls else "ws"


