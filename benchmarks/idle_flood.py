#!/usr/bin/env python3
"""Issue 12's lockout, measured: idle TCP sockets from one address against new clients.

Starts `webscale serve --max-connections N` (echo handler), opens M idle TCP sockets from
127.0.0.2 (no TLS: they cost their owner nothing), and while they are open measures, from
127.0.0.1, K rounds of: `GET /healthz` over TLS on the public port, and a new WebSocket's
connect + one echoed message. Before the handshaking share (gate.py), M > N made every one of
those fail for as long as the sockets stayed open. Then a refusal flood: with
--max-connections-per-ip 1, one address connects and closes R times; the server's CPU per
refused connection (closed before TLS) is reported next to its CPU per full TLS WebSocket
handshake from the first part. Linux only (/proc); every process started is stopped.

    python benchmarks/idle_flood.py --max-connections 1000 --idle 1300 --rounds 20
"""

from __future__ import annotations

import argparse
import asyncio
import http.client
import json
import socket
import ssl
import statistics
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "benchmarks"))
sys.path.insert(0, str(ROOT))

from server_cost import (  # noqa: E402
    get_stats,
    require_proc,
    start_server,
    stop,
    tree_cpu_seconds,
)
from websockets.asyncio.client import connect  # noqa: E402

from webscale.certs import ensure_certs  # noqa: E402

ECHO = ["--decode", "none", "--handler", "webscale.examples.echo:handle",
        "--log-level", "error"]


def healthz(port: int, ctx: ssl.SSLContext) -> float:
    started = time.perf_counter()
    conn = http.client.HTTPSConnection("127.0.0.1", port, context=ctx, timeout=10,
                                       source_address=("127.0.0.1", 0))
    try:
        conn.request("GET", "/healthz")
        assert conn.getresponse().status == 200
    finally:
        conn.close()
    return time.perf_counter() - started


async def echo_once(port: int, ctx: ssl.SSLContext) -> float:
    started = time.perf_counter()
    async with connect(f"wss://127.0.0.1:{port}/", ssl=ctx, open_timeout=10,
                       local_addr=("127.0.0.1", 0)) as ws:
        await ws.send("ping")
        assert await asyncio.wait_for(ws.recv(), 10) == "ping"
    return time.perf_counter() - started


def summary(samples: list[float]) -> dict[str, Any]:
    ms = sorted(1000 * s for s in samples)
    return {"count": len(ms), "p50_ms": round(statistics.median(ms), 2) if ms else None,
            "max_ms": round(ms[-1], 2) if ms else None}


def lockout(certs: Path, ctx: ssl.SSLContext, max_connections: int, idle: int,
            rounds: int) -> dict[str, Any]:
    proc, port, stats_url = start_server(
        "webscale", certs, [*ECHO, "--max-connections", str(max_connections)])
    held: list[socket.socket] = []
    result: dict[str, Any] = {"max_connections": max_connections, "idle_sockets": idle}
    try:
        cpu0 = tree_cpu_seconds(proc.pid)
        for _ in range(idle):
            held.append(socket.create_connection(("127.0.0.1", port), timeout=10,
                                                 source_address=("127.0.0.2", 0)))
        deadline = time.monotonic() + 30
        while get_stats(stats_url, ctx)["connections_total"] < idle:
            if time.monotonic() > deadline:
                raise SystemExit("the idle sockets were not all accepted")
            time.sleep(0.1)
        flood_cpu = tree_cpu_seconds(proc.pid) - cpu0
        health, echoes, failures = [], [], 0
        cpu1 = tree_cpu_seconds(proc.pid)
        for _ in range(rounds):
            try:
                health.append(healthz(port, ctx))
                echoes.append(asyncio.run(echo_once(port, ctx)))
            except (OSError, ssl.SSLError, AssertionError, TimeoutError):
                failures += 1
        client_cpu = tree_cpu_seconds(proc.pid) - cpu1
        stats = get_stats(stats_url, ctx)
        result.update({
            "healthz": summary(health), "websocket_connect_and_echo": summary(echoes),
            "failures": failures,
            "server_cpu_ms_per_idle_socket": round(1000 * flood_cpu / idle, 3),
            # Each round is one TLS /healthz and one TLS WebSocket: two handshakes.
            "server_cpu_ms_per_tls_client": round(1000 * client_cpu / max(1, 2 * rounds), 3),
            "handshaking_at_end": stats["connections_handshaking"],
            "rejected_by_reason": {k: v for k, v in
                                   stats["connections_rejected_by_reason"].items() if v},
        })
    finally:
        for sock in held:
            sock.close()
        stop(proc)
    return result


def refusal_flood(certs: Path, ctx: ssl.SSLContext, refusals: int) -> dict[str, Any]:
    proc, port, stats_url = start_server("webscale", certs,
                                         [*ECHO, "--max-connections-per-ip", "1"])
    keeper = socket.create_connection(("127.0.0.1", port), source_address=("127.0.0.3", 0))
    try:
        # The keeper holds the address's one slot once the server has accepted it.
        deadline = time.monotonic() + 30
        while get_stats(stats_url, ctx)["connections_open"] < 1:
            if time.monotonic() > deadline:
                raise SystemExit("the first connection was not accepted")
            time.sleep(0.05)
        cpu0 = tree_cpu_seconds(proc.pid)
        for _ in range(refusals):
            sock = socket.create_connection(("127.0.0.1", port), timeout=10,
                                            source_address=("127.0.0.3", 0))
            sock.recv(1)  # wait for the server's close: one refusal at a time
            sock.close()
        refused = get_stats(stats_url, ctx)["connections_rejected_by_reason"]
        cpu = tree_cpu_seconds(proc.pid) - cpu0
        return {"refusals": refusals, "counted": refused["per_ip_connections"],
                "server_cpu_us_per_refusal": round(1e6 * cpu / refusals, 1)}
    finally:
        keeper.close()
        stop(proc)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--max-connections", type=int, default=1000)
    p.add_argument("--idle", type=int, default=1300)
    p.add_argument("--rounds", type=int, default=20)
    p.add_argument("--refusals", type=int, default=2000)
    p.add_argument("--json", type=Path)
    args = p.parse_args()
    require_proc("benchmarks/idle_flood.py")
    certs = ensure_certs(ROOT / "certs")
    ctx = ssl.create_default_context(cafile=str(certs.ca_cert))
    result = {"lockout": lockout(certs.ca_cert.parent, ctx, args.max_connections, args.idle,
                                 args.rounds),
              "refusal_flood": refusal_flood(certs.ca_cert.parent, ctx, args.refusals)}
    print(json.dumps(result, indent=2))
    if args.json:
        args.json.write_text(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
