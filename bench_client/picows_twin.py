"""The picows twin: webscale's job written with picows (Cython) on uvloop, as its docs show.

    python -m bench_client.picows_twin --host 127.0.0.1 --port 0 --cert C --key K

It serves wss:// (or ws:// with --no-tls) from one process, decodes every text message with
webscale's own decoder (`bench_client.twins.decode`: orjson into the same dataclasses), counts,
and answers `GET /stats` (JSON counters, the same keys as webscale's and the asyncio twin's) and
`GET /healthz` on the same port: picows hands every request head to the listener factory, which
may answer a plain GET with a 200 and a body instead of upgrading. When listening it prints
exactly one line, `listening on wss://HOST:PORT`, to stdout. SIGTERM/SIGINT close every
connection with 1001 and exit.

How this works: picows calls `on_ws_frame` once per frame on the uvloop thread, so the listener
reassembles fragmented messages itself (picows does not), decodes each complete message inline
as the asyncio twin does, and answers a close frame (picows leaves that to the user too). Pings
from clients are answered by picows (`enable_auto_pong`, its default); keepalive pings go out
every 20 s to every connection, like websockets' `ping_interval` in the asyncio twin and
webscale's `--ping-interval`. Everything else is picows's default, as a new user would have it
(aiofastnet, which picows installs and uses when present, included).
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import signal
import sys

import orjson
import uvloop
from picows import (
    WSAutoPingStrategy,
    WSCloseCode,
    WSFrame,
    WSListener,
    WSMsgType,
    WSTransport,
    WSUpgradeRequest,
    WSUpgradeResponse,
    WSUpgradeResponseWithListener,
    ws_create_server,
)

from bench_client.twins import (
    MAX_MESSAGE_SIZE,
    PING_INTERVAL,
    TwinStats,
    add_twin_flags,
    make_tls_context,
)

logger = logging.getLogger("bench_client.picows_twin")

CLOSE_TIMEOUT = 10.0  # websockets' default close_timeout, which the asyncio twin uses


class TelemetryListener(WSListener):
    """One connection: count and decode every complete message."""

    def __init__(self, twin: PicowsTwin) -> None:
        self.twin = twin
        self.fragments: bytearray | None = None  # a fragmented message being reassembled
        self.fragments_are_text = False

    def on_ws_connected(self, transport: WSTransport) -> None:
        twin = self.twin
        twin.open.add(transport)
        twin.stats.counters.connections_open += 1
        twin.stats.counters.connections_total += 1
        peer = transport.underlying_transport.get_extra_info("peername")
        if peer:
            twin.stats.peer_hosts.add(str(peer[0]))

    def on_ws_disconnected(self, transport: WSTransport) -> None:
        self.twin.open.discard(transport)
        self.twin.stats.counters.connections_open -= 1

    def on_ws_frame(self, transport: WSTransport, frame: WSFrame) -> None:
        kind = frame.msg_type
        if kind is WSMsgType.TEXT or kind is WSMsgType.BINARY:
            if frame.fin:
                self.twin.stats.count_message(frame.get_payload_as_bytes(),
                                              kind is WSMsgType.TEXT)
            else:
                self.fragments = bytearray(frame.get_payload_as_memoryview())
                self.fragments_are_text = kind is WSMsgType.TEXT
        elif kind is WSMsgType.CONTINUATION:
            if self.fragments is None:
                transport.send_close(WSCloseCode.PROTOCOL_ERROR, b"unexpected continuation")
                transport.disconnect()
                return
            self.fragments += frame.get_payload_as_memoryview()
            if len(self.fragments) > MAX_MESSAGE_SIZE:
                self.fragments = None
                transport.send_close(WSCloseCode.MESSAGE_TOO_BIG, b"")
                transport.disconnect()
            elif frame.fin:
                message, self.fragments = bytes(self.fragments), None
                self.twin.stats.count_message(message, self.fragments_are_text)
        elif kind is WSMsgType.CLOSE:
            transport.send_close(frame.get_close_code(), frame.get_close_message())
            transport.disconnect()


class PicowsTwin:
    def __init__(self) -> None:
        self.stats = TwinStats()
        self.open: set[WSTransport] = set()

    def route(self, request: WSUpgradeRequest) -> TelemetryListener | WSUpgradeResponseWithListener:
        """picows's listener factory: upgrade, or answer /stats and /healthz as plain HTTP."""
        if request.headers.get("Upgrade", "").lower() == "websocket":
            return TelemetryListener(self)
        path = request.path.split(b"?", 1)[0]
        if path == b"/stats":
            body = orjson.dumps(self.stats.snapshot())
            response = WSUpgradeResponse.create_ok_response(
                body, {"Content-Type": "application/json"})
        elif path == b"/healthz":
            response = WSUpgradeResponse.create_ok_response(b"ok\n")
        else:
            response = WSUpgradeResponse.create_error_response(
                426, b"WebSocket upgrade required\n")
        return WSUpgradeResponseWithListener(response, None)

    async def close_all(self, timeout: float) -> None:
        """Send 1001 to every connection and wait up to `timeout` for the clients' close
        replies (what websockets' `server.close(close_connections=True)` does), then drop the
        rest."""
        transports = list(self.open)
        for transport in transports:
            transport.send_close(WSCloseCode.GOING_AWAY, b"")
        waits = [asyncio.ensure_future(t.wait_disconnected()) for t in transports]
        if waits:
            await asyncio.wait(waits, timeout=timeout)
        for transport in list(self.open):
            transport.disconnect(graceful=False)


async def serve_forever(args: argparse.Namespace) -> None:
    twin = PicowsTwin()
    tls = None if args.no_tls else make_tls_context(args.cert, args.key, args.client_ca)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    server = await ws_create_server(
        twin.route,
        args.host,
        args.port,
        ssl=tls,
        backlog=args.backlog,
        max_frame_size=MAX_MESSAGE_SIZE,
        enable_auto_ping=True,
        auto_ping_idle_timeout=PING_INTERVAL,
        auto_ping_reply_timeout=PING_INTERVAL,
        auto_ping_strategy=WSAutoPingStrategy.PING_PERIODICALLY,
    )
    host, port = server.sockets[0].getsockname()[:2]
    print(f"listening on {'ws' if tls is None else 'wss'}://{host}:{port}", flush=True)
    await stop.wait()
    server.close()
    await twin.close_all(CLOSE_TIMEOUT)
    await server.wait_closed()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="picows_twin", description=__doc__.splitlines()[0])
    add_twin_flags(parser)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.WARNING, stream=sys.stderr)
    uvloop.run(serve_forever(args))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
