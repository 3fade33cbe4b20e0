"""What the comparison servers (the asyncio twin and the picows twin) share.

How this works: each twin is webscale's job written the way most users of another library would
write it: serve wss://, decode every text message with webscale's own decoder (`decode`, below:
the one import line to change if the decoder moves), count, and answer `GET /stats` with the
same JSON keys webscale's /stats has, so `benchmarks/server_cost.py` and the tests read any of
the three servers alike. This module holds only what must be the same in both twins for the
comparison to be fair: the counters and their /stats shape, the TLS context (one factory, the
same settings as webscale's), the 1 MiB message limit, the 20 s keepalive, and the flags.
"""

from __future__ import annotations

import argparse
import resource
import ssl
import time
from dataclasses import asdict, dataclass
from typing import Any

from webscale.decoder import build_decoder
from webscale.errors import DecodeError
from webscale.examples.telemetry import Telemetry

# The decoder webscale's pool runs by default: generated once for the Telemetry example.
decode = build_decoder(Telemetry)

__all__ = ["MAX_MESSAGE_SIZE", "PING_INTERVAL", "Counters", "DecodeError", "TwinStats",
           "add_twin_flags", "decode", "make_tls_context"]

MAX_MESSAGE_SIZE = 1 << 20  # the same 1 MiB limit webscale enforces
PING_INTERVAL = 20.0  # keepalive ping every 20 s, as webscale's default --ping-interval


@dataclass(slots=True)
class Counters:
    connections_open: int = 0
    connections_total: int = 0
    messages_received: int = 0
    messages_decoded: int = 0
    decode_errors: int = 0
    bytes_received: int = 0


class TwinStats:
    """The counters plus what /stats adds to them (the same keys as webscale's /stats)."""

    def __init__(self) -> None:
        self.counters = Counters()
        self.started_at = time.monotonic()
        self.peer_hosts: set[str] = set()  # lets a test see bench_client's --source-addrs work

    def count_message(self, message: str | bytes, is_text: bool) -> None:
        """Count one complete message and decode it, as webscale's pool does."""
        counters = self.counters
        counters.messages_received += 1
        counters.bytes_received += len(message)
        if not is_text:
            counters.decode_errors += 1
            return
        try:
            decode(message)
        except DecodeError:
            counters.decode_errors += 1
        else:
            counters.messages_decoded += 1

    def snapshot(self) -> dict[str, Any]:
        data: dict[str, Any] = asdict(self.counters)
        usage = resource.getrusage(resource.RUSAGE_SELF)
        data["peer_hosts"] = len(self.peer_hosts)
        data["uptime_seconds"] = time.monotonic() - self.started_at
        data["cpu_user_s"] = usage.ru_utime
        data["cpu_system_s"] = usage.ru_stime
        data["max_rss_kb"] = usage.ru_maxrss
        return data


def make_tls_context(cert: str, key: str, client_ca: str | None = None) -> ssl.SSLContext:
    """The one TLS setup of both twins; with `client_ca`, every client must present a
    certificate signed by it (mutual TLS, as webscale's --client-ca), or its handshake fails."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.set_alpn_protocols(["http/1.1"])
    context.load_cert_chain(cert, key)
    if client_ca is not None:
        context.verify_mode = ssl.CERT_REQUIRED
        context.load_verify_locations(cafile=client_ca)
    return context


def add_twin_flags(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8443)
    parser.add_argument("--cert", default="certs/server.pem")
    parser.add_argument("--key", default="certs/server.key")
    parser.add_argument("--client-ca", default=None, metavar="FILE",
                        help="require a client certificate signed by this CA (mutual TLS)")
    parser.add_argument("--no-tls", action="store_true", help="serve plain ws://")
    parser.add_argument("--backlog", type=int, default=4096,
                        help="listen backlog; the kernel caps it at net.core.somaxconn")
    parser.add_argument("-v", "--verbose", action="store_true")
