"""The asyncio twin: webscale's job written the way most people would, with `websockets`.

    python -m bench_client.asyncio_twin --host 127.0.0.1 --port 0 --cert C --key K

It serves wss:// (or ws:// with --no-tls), decodes every text message with webscale's own
decoder (`bench_client.twins.decode`: orjson into the same dataclasses), counts, and
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
import signal
import sys

import orjson
from websockets.asyncio.server import ServerConnection, serve
from websockets.exceptions import ConnectionClosed
from websockets.http11 import Request, Response

from bench_client.twins import (
    MAX_MESSAGE_SIZE,
    PING_INTERVAL,
    TwinStats,
    add_twin_flags,
    make_tls_context,
)

logger = logging.getLogger("bench_client.asyncio_twin")


class TwinServer:
    def __init__(self) -> None:
        self.stats = TwinStats()

    async def handler(self, websocket: ServerConnection) -> None:
        stats = self.stats
        counters = stats.counters
        counters.connections_open += 1
        counters.connections_total += 1
        stats.peer_hosts.add(str(websocket.remote_address[0]))
        try:
            async for message in websocket:
                stats.count_message(message, isinstance(message, str))
        except ConnectionClosed:
            pass
        finally:
            counters.connections_open -= 1

    def process_request(self, connection: ServerConnection, request: Request) -> Response | None:
        path = request.path.split("?", 1)[0]
        if request.headers.get("Upgrade", "").lower() == "websocket":
            return None
        if path == "/healthz":
            return connection.respond(http.HTTPStatus.OK, "ok\n")
        if path == "/stats":
            response = connection.respond(http.HTTPStatus.OK, "")
            body = orjson.dumps(self.stats.snapshot())
            response.body = body
            # Headers is a multi-dict: assigning appends, so drop respond()'s values first
            del response.headers["Content-Type"]
            del response.headers["Content-Length"]
            response.headers["Content-Type"] = "application/json"
            response.headers["Content-Length"] = str(len(body))
            return response
        return connection.respond(http.HTTPStatus.UPGRADE_REQUIRED, "WebSocket upgrade required\n")


async def serve_forever(args: argparse.Namespace) -> None:
    twin = TwinServer()
    tls = None if args.no_tls else make_tls_context(args.cert, args.key, args.client_ca)
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
        ping_interval=PING_INTERVAL,
        ping_timeout=PING_INTERVAL,
    ) as server:
        host, port = next(iter(server.sockets)).getsockname()[:2]
        print(f"listening on {'ws' if tls is None else 'wss'}://{host}:{port}", flush=True)
        await stop.wait()
        server.close(close_connections=True)
        await server.wait_closed()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="asyncio_twin", description=__doc__.splitlines()[0])
    add_twin_flags(parser)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.WARNING, stream=sys.stderr)
    asyncio.run(serve_forever(args))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
