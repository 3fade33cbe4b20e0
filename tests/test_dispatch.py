"""The pool hand-off end to end: backpressure, handler errors, handles, and exit paths."""

from __future__ import annotations

import asyncio
import signal
import time
from collections.abc import Callable

import pytest
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed

from helpers import UNIT, ServerProcess, client_ssl_context, wait_for
from payloads import telemetry_json

StartServer = Callable[..., ServerProcess]


def test_backpressure_pauses_reading_and_loses_nothing(server_factory: StartServer) -> None:
    limit, sent = 4, 30
    server = server_factory("--handler", "server_handlers:slow", "--threads", "2",
                            "--max-in-flight-per-connection", str(limit))
    peak_in_flight = 0
    paused_seen = False

    async def main() -> None:
        nonlocal peak_in_flight, paused_seen
        ctx = client_ssl_context(server.cafile)  # type: ignore[arg-type]
        async with connect(server.url, ssl=ctx) as ws:
            for seq in range(sent):
                await ws.send(telemetry_json(1, seq))
            end = time.monotonic() + 30 * UNIT
            while time.monotonic() < end:
                stats = await asyncio.to_thread(server.stats)
                peak_in_flight = max(peak_in_flight, stats["in_flight"])
                paused_seen = paused_seen or stats["paused_connections"] == 1
                if stats["messages_handled"] == sent:
                    break
                await asyncio.sleep(0.05)
            # While paused the socket is not read, yet the loop still answers once resumed.
            await asyncio.wait_for(await ws.ping(), 5 * UNIT)

    asyncio.run(main())
    stats = server.stats()
    assert stats["messages_handled"] == sent and stats["messages_decoded"] == sent
    assert paused_seen, "the connection was never paused"
    # One read can complete at most one more message than the bound (a TLS record < 16 KiB).
    assert peak_in_flight <= limit + 1
    assert stats["paused_connections"] == 0


def test_handler_exception_is_counted_and_connection_survives(server_factory: StartServer) -> None:
    server = server_factory("--handler", "server_handlers:crash")

    async def main() -> None:
        ctx = client_ssl_context(server.cafile)  # type: ignore[arg-type]
        async with connect(server.url, ssl=ctx) as ws:
            await ws.send(telemetry_json(1, 1))
            await ws.send(telemetry_json(1, 2))
            await asyncio.to_thread(wait_for, lambda: server.stats()["handler_errors"] == 2)
            await asyncio.wait_for(await ws.ping(), 5 * UNIT)

    asyncio.run(main())
    assert "RuntimeError: handler bug" in server.stderr()
    assert server.stats()["messages_handled"] == 2


def test_handle_close_from_the_pool(server_factory: StartServer) -> None:
    server = server_factory("--handler", "server_handlers:closer")

    async def main() -> int | None:
        ctx = client_ssl_context(server.cafile)  # type: ignore[arg-type]
        async with connect(server.url, ssl=ctx) as ws:
            await ws.send(telemetry_json(1, 7))
            with pytest.raises(ConnectionClosed):
                await asyncio.wait_for(ws.recv(), 5 * UNIT)
            return ws.close_code

    assert asyncio.run(main()) == 4007
    assert wait_for(lambda: server.stats()["closes_by_code"].get("4007") == 1)


def test_invalid_json_policy_close_sends_1007(server_factory: StartServer) -> None:
    server = server_factory("--invalid-json", "close")

    async def main() -> int | None:
        ctx = client_ssl_context(server.cafile)  # type: ignore[arg-type]
        async with connect(server.url, ssl=ctx) as ws:
            await ws.send("{not json")
            with pytest.raises(ConnectionClosed):
                await asyncio.wait_for(ws.recv(), 5 * UNIT)
            return ws.close_code

    assert asyncio.run(main()) == 1007
    assert server.stats()["decode_errors"] == 1


def test_second_sigint_exits_at_once(server_factory: StartServer) -> None:
    server = server_factory("--handler", "server_handlers:sleepy",
                            "--shutdown-timeout", str(30 * UNIT))

    async def main() -> None:
        ctx = client_ssl_context(server.cafile)  # type: ignore[arg-type]
        ws = await connect(server.url, ssl=ctx)
        await ws.send(telemetry_json(0, 1))  # its handler blocks for 3 s
        await asyncio.to_thread(wait_for, lambda: server.stats()["in_flight"] == 1)
        server.signal(signal.SIGINT)
        await asyncio.to_thread(wait_for, lambda: "draining" in server.stderr())
        started = time.monotonic()
        server.signal(signal.SIGINT)
        code = await asyncio.to_thread(server.wait, 10)
        assert time.monotonic() - started < 2.5, "did not exit before the handler finished"
        assert code == 130
        await ws.close()

    asyncio.run(main())


def test_handlers_blocked_on_io_run_side_by_side(server_factory: StartServer) -> None:
    # GIL-bound units are capped at two in the pool; handlers that wait must still fill it.
    server = server_factory("--handler", "server_handlers:napping", "--threads", "16")
    clients = 16

    async def main() -> float:
        ctx = client_ssl_context(server.cafile)  # type: ignore[arg-type]
        conns = [await connect(server.url, ssl=ctx) for _ in range(clients)]
        await conns[0].send(telemetry_json(0, 0))  # lets the pool learn these handlers wait
        assert await asyncio.wait_for(conns[0].recv(), 5 * UNIT) == "done 0"
        started = time.monotonic()
        for i, ws in enumerate(conns):
            await ws.send(telemetry_json(i, 1))
        replies = await asyncio.gather(*(asyncio.wait_for(ws.recv(), 10 * UNIT) for ws in conns))
        elapsed = time.monotonic() - started
        assert replies == [f"done {i}" for i in range(clients)]
        for ws in conns:
            await ws.close()
        return elapsed

    elapsed = asyncio.run(main())
    assert server.stats()["pool_gil_bound"] == 0, "waiting handlers left the pool capped"
    # Side by side: ~0.3 s. Two at a time would take 2.4 s, one at a time 4.8 s.
    assert elapsed < 1.5 * UNIT, f"16 handlers waiting 0.3 s each took {elapsed:.2f} s"


def test_two_blocked_handlers_do_not_hold_back_other_messages(server_factory: StartServer) -> None:
    # Decode-only traffic keeps the pool capped at two GIL-bound units; two handlers stuck in a
    # 3 s call must not take both places (a unit running 50 ms stops counting against the cap).
    server = server_factory("--handler", "server_handlers:sleepy")

    async def main() -> float:
        ctx = client_ssl_context(server.cafile)  # type: ignore[arg-type]
        slow = [await connect(server.url, ssl=ctx) for _ in range(2)]
        fast = await connect(server.url, ssl=ctx)
        for n, ws in enumerate(slow, 1):  # one at a time, so each is a unit of its own
            await ws.send(telemetry_json(0, 1))  # client_id 0: blocks 3 s
            await asyncio.to_thread(wait_for, lambda n=n: server.stats()["in_flight"] == n,
                                    5, 0.01, "the slow handler to start")
        started = time.monotonic()
        await fast.send(telemetry_json(7, 1))
        assert await asyncio.wait_for(fast.recv(), 5 * UNIT) == "done 7"
        elapsed = time.monotonic() - started
        assert (await asyncio.to_thread(server.stats))["in_flight"] == 2, "slow ones finished"
        for ws in slow:
            assert await asyncio.wait_for(ws.recv(), 10 * UNIT) == "done 0"
        for ws in [*slow, fast]:
            await ws.close()
        return elapsed

    elapsed = asyncio.run(main())
    assert elapsed < 1.0 * UNIT, f"a fast message waited {elapsed:.2f} s behind blocked handlers"
