"""The asyncio twin: webscale's job written the way most people would, with `websockets`.

    python -m bench_client.asyncio_twin --host 127.0.0.1 --port 0 --cert C --key K

It serves wss:// (or ws:// with --no-tls), decodes every text message with webscale's own
decoder (`webscale.messages.decode_telemetry`: orjson into the same dataclasses), counts, and
answers `GET /stats` (JSON counters, the same keys as webscale's) and `GET /healthz` on the same
port. When listening it prints exactly one line, `listening on wss://HOST:PORT`, to stdout.
SIGTERM/SIGINT close every connection with 1001 and exit. This is the comparison baseline for
`scripts/pudding` and `benchmarks/peer_table.py`, so it stays deliberately plain: one coroutine
per connection, decoding inline on the event loop.
"""

from __future__ import annotations

import argparse
import asyncio
import http
import logging
import resource
import signal
import ssl
import sys
import time
from dataclasses import asdict, dataclass
from typing import Any

import orjson
from websockets.asyncio.server import ServerConnection, serve
from websockets.exceptions import ConnectionClosed
from websockets.http11 import Request, Response

from webscale.errors import DecodeError
from webscale.messages import decode_telemetry

logger = logging.getLogger("bench_client.asyncio_twin")

MAX_MESSAGE_SIZE = 1 << 20  # the same 1 MiB limit webscale enforces


@dataclass(slots=True)
class Counters:
    connections_open: int = 0
    connections_total: int = 0
    messages_received: int = 0
    messages_decoded: int = 0
    decode_errors: int = 0
    bytes_received: int = 0


class TwinServer:
    def __init__(self) -> None:
        self.counters = Counters()
        self.started_at = time.monotonic()
        self.peer_hosts: set[str] = set()  # lets a test see bench_client's --source-addrs work

    async def handler(self, websocket: ServerConnection) -> None:
        counters = self.counters
        counters.connections_open += 1
        counters.connections_total += 1
        self.peer_hosts.add(str(websocket.remote_address[0]))
        try:
            async for message in websocket:
                counters.messages_received += 1
                counters.bytes_received += len(message)
                if not isinstance(message, str):
                    counters.decode_errors += 1
                    continue
                try:
                    decode_telemetry(message)
                except DecodeError:
                    counters.decode_errors += 1
                else:
                    counters.messages_decoded += 1
        except ConnectionClosed:
            pass
        finally:
            counters.connections_open -= 1

    def stats(self) -> dict[str, Any]:
        data: dict[str, Any] = asdict(self.counters)
        usage = resource.getrusage(resource.RUSAGE_SELF)
        data["peer_hosts"] = len(self.peer_hosts)
        data["uptime_s"] = time.monotonic() - self.started_at
        data["cpu_user_s"] = usage.ru_utime
        data["cpu_system_s"] = usage.ru_stime
        data["max_rss_kb"] = usage.ru_maxrss
        return data

    def process_request(self, connection: ServerConnection, request: Request) -> Response | None:
        path = request.path.split("?", 1)[0]
        if request.headers.get("Upgrade", "").lower() == "websocket":
            return None
        if path == "/healthz":
            return connection.respond(http.HTTPStatus.OK, "ok\n")
        if path == "/stats":
            response = connection.respond(http.HTTPStatus.OK, "")
            body = orjson.dumps(self.stats())
            response.body = body
            # Headers is a multi-dict: assigning appends, so drop respond()'s values first
            del response.headers["Content-Type"]
            del response.headers["Content-Length"]
            response.headers["Content-Type"] = "application/json"
            response.headers["Content-Length"] = str(len(body))
            return response
        return connection.respond(http.HTTPStatus.UPGRADE_REQUIRED, "WebSocket upgrade required\n")


def make_tls_context(cert: str, key: str) -> ssl.SSLContext:
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.set_alpn_protocols(["http/1.1"])
    context.load_cert_chain(cert, key)
    return context


async def serve_forever(args: argparse.Namespace) -> None:
    twin = TwinServer()
    tls = None if args.no_tls else make_tls_context(args.cert, args.key)
    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        asyncio.get_running_loop().add_signal_handler(sig, stop.set)
    async with serve(
        twin.handler,
        args.host,
        args.port,
        ssl=tls,
        process_request=twin.process_request,
        max_size=MAX_MESSAGE_SIZE,
        compression=None,  # webscale negotiates no extensions either
        backlog=args.backlog,
        ping_interval=20,
        ping_timeout=20,
    ) as server:
        host, port = next(iter(server.sockets)).getsockname()[:2]
        print(f"listening on {'ws' if tls is None else 'wss'}://{host}:{port}", flush=True)
        await stop.wait()
        server.close(close_connections=True)
        await server.wait_closed()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="asyncio_twin", description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8443)
    parser.add_argument("--cert", default="certs/server.pem")
    parser.add_argument("--key", default="certs/server.key")
    parser.add_argument("--no-tls", action="store_true", help="serve plain ws://")
    parser.add_argument("--backlog", type=int, default=4096,
                        help="listen backlog; the kernel caps it at net.core.somaxconn")
    parser.add_argument("-v", "--verbose", action="store_true")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.WARNING, stream=sys.stderr)
    asyncio.run(serve_forever(args))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
