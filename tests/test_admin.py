"""The admin listener (--admin): /stats and /metrics there and not on the public port, exact
figures with one process and with --workers 2, --admin off, and a taken port at start-up."""

from __future__ import annotations

import asyncio
import json
import signal
import socket
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest
from helpers import ROOT, UNIT, ServerProcess, client_ssl_context, wait_for
from payloads import telemetry_json
from websockets.asyncio.client import connect

StartServer = Callable[..., ServerProcess]

UPGRADE = (b"GET / HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
           b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n")


def raw_exchange(address: tuple[str, int], request: bytes) -> bytes:
    """Send `request` on a plain TCP connection and read until the server closes."""
    with socket.create_connection(address, timeout=5 * UNIT) as sock:
        sock.sendall(request)
        chunks = []
        while chunk := sock.recv(65536):
            chunks.append(chunk)
    return b"".join(chunks)


def admin_address(server: ServerProcess) -> tuple[str, int]:
    assert server.admin_url is not None
    host, port = server.admin_url.removeprefix("http://").rsplit(":", 1)
    return host, int(port)


def test_stats_and_metrics_only_on_the_admin_listener(webscale_server: ServerProcess) -> None:
    server = webscale_server
    assert server.admin_url is not None and server.admin_url.startswith("http://127.0.0.1:")
    assert admin_address(server)[1] != server.port
    # Public port: /healthz for balancers, nothing about the internals.
    assert server.http_get("/healthz") == (200, b"ok\n")
    for path in ("/stats", "/metrics", "/stats?x=1"):
        status, body = server.http_get(path)
        assert status == 404 and b"admin listener (--admin)" in body, (path, status, body)
    assert server.http_get("/")[0] == 426
    # Admin listener: plain HTTP, the three routes, nothing else.
    assert server.admin_get("/healthz") == (200, b"ok\n")
    status, body = server.admin_get("/stats")
    assert status == 200 and json.loads(body)["pid"] == server.proc.pid
    status, body = server.admin_get("/metrics")
    assert status == 200 and b"# TYPE webscale_connections_rejected_total counter" in body
    assert server.admin_get("/")[0] == 404
    assert server.admin_get("/nope")[0] == 404
    reply = raw_exchange(admin_address(server), b"POST /stats HTTP/1.1\r\nHost: x\r\n"
                         b"Content-Length: 0\r\n\r\n")
    assert reply.startswith(b"HTTP/1.1 405 ")
    head = raw_exchange(admin_address(server), b"HEAD /stats HTTP/1.1\r\nHost: x\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200 ") and head.endswith(b"\r\n\r\n")
    # No WebSocket on the admin port: a valid upgrade gets 404, a broken one 400.
    assert raw_exchange(admin_address(server), UPGRADE).startswith(b"HTTP/1.1 404 ")
    broken = UPGRADE.replace(b"Sec-WebSocket-Version: 13", b"Sec-WebSocket-Version: 7")
    assert raw_exchange(admin_address(server), broken).startswith(b"HTTP/1.1 4")
    # None of that moved the figures the scrapes read.
    stats = server.stats()
    assert stats["connections_total"] == 5  # the five public-port requests above
    assert stats["http_requests"] == 5
    assert stats["websockets_open"] == stats["connections_open"] == 0


async def send_and_wait_for_acks(server: ServerProcess, clients: int, per_client: int) -> None:
    """Every message acknowledged by the handler: the server has received all of them."""
    ctx = client_ssl_context(server.cafile)  # type: ignore[arg-type]

    async def one(client_id: int) -> None:
        async with connect(server.url, ssl=ctx, open_timeout=10 * UNIT) as ws:
            for seq in range(per_client):
                await ws.send(telemetry_json(client_id, seq, size=512))
            for _ in range(per_client):
                await asyncio.wait_for(ws.recv(), 10 * UNIT)

    await asyncio.gather(*(one(i) for i in range(clients)))


@pytest.mark.parametrize("workers", [1, 2])
def test_figures_are_exact_at_the_moment_of_the_request(server_factory: StartServer,
                                                        workers: int) -> None:
    server = server_factory("--workers", str(workers), "--handler", "server_handlers:ack")
    clients, per_client = 8, 25
    asyncio.run(send_and_wait_for_acks(server, clients, per_client))
    # No waiting: every message was received (and acknowledged) before this request.
    stats = server.stats()
    assert stats["messages_received"] == clients * per_client
    assert stats["connections_total"] == clients
    if workers > 1:
        assert stats["workers_missing"] == []
        per_worker = stats["workers"]
        assert sorted(per_worker) == ["0", "1"]
        assert sum(w["messages_received"] for w in per_worker.values()) == clients * per_client
        assert sum(w["connections_total"] for w in per_worker.values()) == clients
    status, body = server.admin_get("/metrics")
    assert status == 200
    received = [line for line in body.decode().splitlines()
                if line.startswith("webscale_messages_received_total")]
    assert sum(int(float(line.rsplit(" ", 1)[1])) for line in received) == clients * per_client
    assert len(received) == workers


def test_a_worker_that_does_not_answer_is_reported_missing(server_factory: StartServer) -> None:
    server = server_factory("--workers", "2")
    stats = server.stats()
    assert stats["workers_missing"] == []
    stopped = stats["workers"]["1"]["pid"]
    worker_of_pid = {w["pid"]: int(i) for i, w in stats["workers"].items()}
    try:
        # SIGSTOP: the worker's loop cannot answer; the supervisor waits its bounded time.
        subprocess.run(["kill", "-STOP", str(stopped)], check=True)
        stats = server.stats()
        assert stats["workers_missing"] == [worker_of_pid[stopped]]
        assert list(stats["workers"]) == ["0"]
        status, body = server.admin_get("/metrics")
        assert status == 200 and b'webscale_worker_up{worker="1"} 0' in body
        assert b'webscale_worker_up{worker="0"} 1' in body
    finally:
        subprocess.run(["kill", "-CONT", str(stopped)], check=True)
    # Back: a late answer to the earlier requests is not mistaken for the new one's.
    stats = wait_for(lambda: (s := server.stats())["workers_missing"] == [] and s,
                     what="the continued worker to answer again")
    assert stats["workers"]["1"]["pid"] == stopped


def test_admin_off(server_factory: StartServer) -> None:
    server = server_factory("--admin", "off")
    assert server.admin_url is None
    assert server.http_get("/healthz") == (200, b"ok\n")
    assert server.http_get("/stats")[0] == 404
    assert "admin endpoints" not in server.stderr()


def serve_and_fail(args: list[str], tmp_path: Path,
                   certs: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "webscale", "serve", "--host", "127.0.0.1", "--port", "0",
         "--cert", str(certs / "server.pem"), "--key", str(certs / "server.key"), *args],
        capture_output=True, text=True, timeout=30 * UNIT, cwd=tmp_path,
        env={"PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin"})


@pytest.mark.parametrize("workers", ["1", "2"])
def test_a_taken_admin_port_is_a_clear_start_up_error(tmp_path: Path, certs: Path,
                                                      workers: str) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        result = serve_and_fail(["--admin", f"127.0.0.1:{port}", "--workers", workers],
                                tmp_path, certs)
    assert result.returncode == 2, result.stderr
    assert result.stdout == ""  # never announced a `listening on` line
    assert (f"webscale: cannot listen for admin requests on 127.0.0.1:{port}: Address already "
            "in use (--admin HOST:PORT picks another address, --admin off disables the admin "
            "listener)") in result.stderr
    assert "Traceback" not in result.stderr
    assert "worker 0" not in result.stderr  # the supervisor stopped before starting any


@pytest.mark.parametrize("value", ["8442", "127.0.0.1:", "127.0.0.1:99999", ":8442", "x:y"])
def test_a_malformed_admin_address_is_refused(tmp_path: Path, certs: Path, value: str) -> None:
    result = serve_and_fail(["--admin", value], tmp_path, certs)
    assert result.returncode == 2
    assert f"--admin {value!r} is not HOST:PORT (or 'off')" in result.stderr


def test_admin_listener_keeps_answering_during_a_drain(server_factory: StartServer) -> None:
    """With --drain-grace the public /healthz turns 503; the admin listener shows it too."""
    server = server_factory("--drain-grace", "3")
    server.signal(signal.SIGTERM)
    wait_for(lambda: server.admin_get("/healthz")[0] == 503, what="admin /healthz to say 503")
    assert server.http_get("/healthz")[0] == 503
    assert server.stats()["pid"] == server.proc.pid
    assert server.wait() == 0
