"""The run's configuration: one frozen dataclass, validated once, and how it splits per worker."""

from __future__ import annotations

import ipaddress
import math
import os
import resource
import socket
import ssl
from dataclasses import dataclass, field
from urllib.parse import urlsplit

from bench_client.errors import ConfigError
from bench_client.payload import MessageTemplate

# This machine's per-process limit is 20,000 files; keep ~1,000 for the pipe, the selector,
# Python's own files and headroom.
SOCKETS_PER_PROCESS = 19_000
FD_HEADROOM = 1_000


@dataclass(frozen=True, slots=True)
class BenchConfig:
    url: str
    clients: int = 100
    rate: float = 1.0  # messages per client per second; 0 = connect and hold idle
    size: int = 10_240  # the ~10 KB telemetry document of the spec
    # the document's shape (payload.DOCUMENTS): "telemetry", or "notes" (issue 10's second
    # shape: 40 readings, a free-text note padding to the size, two strings the struct lacks)
    document: str = "telemetry"
    duration: float = 10.0  # seconds of steady state, counted once every client has settled
    # seconds between "every client settled" and the steady state, recorded with the ramp: a
    # server that fell behind while handshaking drains its backlog here, not in steady state
    warmup: float = 0.0
    ramp: float = 1000.0  # new connections per second, all workers together; a server's listen
    # backlog (often 128-4096) overflows under an unpaced connect storm and SYN retries then
    # cost whole seconds, which would measure the kernel rather than the server
    procs: int = 0  # 0 = choose (see `worker_count`)
    source_addrs: tuple[str, ...] = ()  # () = let the kernel pick
    cafile: str | None = None
    insecure: bool = False
    # a client certificate and its key, for servers that require one (mutual TLS)
    cert: str | None = None
    key: str | None = None
    ping_sample: int = 0  # connections that ping once a second to measure round-trip time
    json_path: str | None = None
    max_failures: int = 0
    handshake_timeout: float = 10.0  # connect + TLS + upgrade, per connection
    close_timeout: float = 3.0  # how long to wait for close replies at the end
    inflight: int = 500  # handshakes in progress per worker; bounds server accept-queue pressure
    progress_interval: float = 1.0
    # parsed from url
    scheme: str = field(init=False)
    host: str = field(init=False)
    port: int = field(init=False)
    path: str = field(init=False)

    def __post_init__(self) -> None:
        parts = urlsplit(self.url)
        if parts.scheme not in ("ws", "wss"):
            raise ConfigError(f"--url must be ws:// or wss://, got {self.url!r}")
        if not parts.hostname:
            raise ConfigError(f"--url has no host: {self.url!r}")
        try:
            port = parts.port or (443 if parts.scheme == "wss" else 80)
        except ValueError as exc:
            raise ConfigError(f"--url: {exc}") from None
        path = parts.path or "/"
        if parts.query:
            path += "?" + parts.query
        object.__setattr__(self, "scheme", parts.scheme)
        object.__setattr__(self, "host", parts.hostname)
        object.__setattr__(self, "port", port)
        object.__setattr__(self, "path", path)
        if self.clients < 1:
            raise ConfigError("--clients must be at least 1")
        if self.rate < 0:
            raise ConfigError("--rate must be >= 0")
        if self.duration < 0:
            raise ConfigError("--duration must be >= 0")
        if self.warmup < 0:
            raise ConfigError("--warmup must be >= 0")
        if self.ramp <= 0:
            raise ConfigError("--ramp must be > 0")
        if self.procs < 0:
            raise ConfigError("--procs must be >= 0")
        if self.ping_sample < 0 or self.ping_sample > self.clients:
            raise ConfigError("--ping-sample must be between 0 and --clients")
        if self.max_failures < 0:
            raise ConfigError("--max-failures must be >= 0")
        if (self.cert is None) != (self.key is None):
            raise ConfigError("--cert and --key go together")
        if self.cert is not None and parts.scheme != "wss":
            raise ConfigError("--cert needs a wss:// URL")
        try:
            MessageTemplate(self.size, self.document)  # what a worker builds: fail here instead
        except ValueError as exc:
            raise ConfigError(f"--size/--document: {exc}") from None

    @property
    def tls(self) -> bool:
        return self.scheme == "wss"


def parse_source_addrs(text: str) -> tuple[str, ...]:
    """'127.0.0.1-127.0.0.16' or '127.0.0.1,127.0.0.2' -> the IPv4 addresses, in order."""
    addrs: list[str] = []
    for item in filter(None, (part.strip() for part in text.split(","))):
        first, sep, last = item.partition("-")
        try:
            start = ipaddress.IPv4Address(first)
            end = ipaddress.IPv4Address(last) if sep else start
        except ipaddress.AddressValueError as exc:
            raise ConfigError(f"--source-addrs: {exc}") from None
        if end < start:
            raise ConfigError(f"--source-addrs: empty range {item!r}")
        if int(end) - int(start) > 65_535:
            raise ConfigError(f"--source-addrs: range {item!r} is too large")
        addrs.extend(str(ipaddress.IPv4Address(n)) for n in range(int(start), int(end) + 1))
    if not addrs:
        raise ConfigError("--source-addrs: no addresses")
    return tuple(addrs)


def raise_file_limit() -> int:
    """Raise RLIMIT_NOFILE's soft limit to the hard limit; return the new soft limit."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard == resource.RLIM_INFINITY:
        hard = 1 << 20
    if soft != resource.RLIM_INFINITY and soft < hard:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
            soft = hard
        except (ValueError, OSError):
            pass  # keep the soft limit; worker_count sizes processes to it
    return soft if soft != resource.RLIM_INFINITY else 1 << 20


def sockets_per_process(file_limit: int) -> int:
    return max(1, min(SOCKETS_PER_PROCESS, file_limit - FD_HEADROOM))


def worker_count(config: BenchConfig, file_limit: int) -> int:
    """Enough processes that each holds <= sockets_per_process sockets, and one per core."""
    if config.procs:
        return config.procs
    needed = math.ceil(config.clients / sockets_per_process(file_limit))
    return max(1, needed, min(os.cpu_count() or 1, config.clients))


def resolve(config: BenchConfig) -> tuple[str, int]:
    """Resolve the host once, in the parent, so workers do not each hit the resolver."""
    try:
        infos = socket.getaddrinfo(config.host, config.port, socket.AF_INET, socket.SOCK_STREAM)
    except socket.gaierror as exc:
        raise ConfigError(f"cannot resolve {config.host!r}: {exc}") from None
    address = infos[0][4]
    return str(address[0]), int(address[1])


def client_tls_context(config: BenchConfig) -> ssl.SSLContext:
    """The one factory for the client SSL context."""
    context = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=config.cafile)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.set_alpn_protocols(["http/1.1"])
    if config.cert is not None:
        context.load_cert_chain(config.cert, config.key)
    if config.insecure:
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
    return context


@dataclass(frozen=True, slots=True)
class WorkerPlan:
    """One worker's share of the run."""

    index: int
    first_client_id: int
    clients: int
    ramp: float
    address: tuple[str, int]
    source_addrs: tuple[str, ...]


def split_plans(config: BenchConfig, workers: int, address: tuple[str, int]) -> list[WorkerPlan]:
    plans: list[WorkerPlan] = []
    base, extra = divmod(config.clients, workers)
    first = 0
    for index in range(workers):
        count = base + (1 if index < extra else 0)
        if count == 0:
            continue
        # each worker takes a disjoint slice of source addresses when there are enough, so two
        # processes never compete for the same (source, port) space
        addrs = config.source_addrs
        if len(addrs) >= workers:
            addrs = addrs[index::workers]
        plans.append(WorkerPlan(index, first, count, config.ramp * count / config.clients,
                                address, addrs))
        first += count
    return plans
