"""The comparison servers (the asyncio twin and the picows twin) do the same job, seen alike.

Each twin runs as a subprocess on 127.0.0.1 port 0 with a throwaway CA; an independent client
(`websockets`' asyncio client) sends to it, and the twin's own /stats must count exactly what was
sent: whole and fragmented text messages decoded, binary and malformed ones as decode errors.
SIGTERM must close open connections with 1001 and exit 0.
"""

from __future__ import annotations

import asyncio
import signal
from collections.abc import Iterator
from pathlib import Path

import pytest
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed

from helpers import PICOWS_TWIN, TWIN, UNIT, ServerProcess, client_ssl_context, start_server
from payloads import telemetry_json

TWINS = {"asyncio": TWIN, "picows": PICOWS_TWIN}
STATS_KEYS = {"connections_open", "connections_total", "messages_received", "messages_decoded",
              "decode_errors", "bytes_received", "peer_hosts", "uptime_seconds", "cpu_user_s",
              "cpu_system_s", "max_rss_kb"}


@pytest.fixture(params=sorted(TWINS))
def twin(request: pytest.FixtureRequest, certs: Path, tmp_path: Path) -> Iterator[ServerProcess]:
    server = start_server([], certs=certs, tmp_path=tmp_path, command=TWINS[request.param])
    try:
        yield server
    finally:
        server.stop()


def test_stats_healthz_and_plain_get(twin: ServerProcess) -> None:
    stats = twin.stats()
    assert set(stats) == STATS_KEYS
    assert stats["connections_total"] == stats["messages_received"] == 0
    assert twin.http_get("/healthz") == (200, b"ok\n")
    status, _ = twin.http_get("/")
    assert status == 426


def test_counts_and_decodes_whole_and_fragmented_messages(twin: ServerProcess) -> None:
    assert twin.cafile is not None
    document = telemetry_json(client_id=1, seq=1)

    async def send_all() -> None:
        async with connect(twin.url, ssl=client_ssl_context(twin.cafile), compression=None,
                           open_timeout=5 * UNIT) as ws:
            await ws.send(document)
            await ws.send([document[:100], document[100:5000], document[5000:]])  # 3 frames
            await ws.send(document.encode())  # binary: not a telemetry document
            await ws.send('{"client_id": "one"}')  # text, but the wrong shape
            await asyncio.wait_for(await ws.ping(), 5 * UNIT)  # everything before was read

    asyncio.run(send_all())
    stats = twin.stats()
    assert stats["connections_total"] == 1
    assert stats["messages_received"] == 4
    assert stats["messages_decoded"] == 2
    assert stats["decode_errors"] == 2
    assert stats["peer_hosts"] == 1


def test_sigterm_closes_open_connections_with_1001(twin: ServerProcess) -> None:
    assert twin.cafile is not None

    async def held_until_the_server_stops() -> int | None:
        async with connect(twin.url, ssl=client_ssl_context(twin.cafile),
                           open_timeout=5 * UNIT) as ws:
            await asyncio.wait_for(await ws.ping(), 5 * UNIT)
            twin.signal(signal.SIGTERM)
            try:
                await asyncio.wait_for(ws.recv(), 10 * UNIT)
            except ConnectionClosed as closed:
                return closed.rcvd.code if closed.rcvd is not None else None
        return None

    assert asyncio.run(held_until_the_server_stops()) == 1001
    assert twin.wait() == 0
