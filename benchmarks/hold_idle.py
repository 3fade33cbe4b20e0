#!/usr/bin/env python3
"""Hold N idle TLS WebSocket connections and measure the memory each costs the server.

Starts `webscale serve --workers W` (SO_REUSEPORT workers, each under the per-process file
limit), records the server's RSS (the whole process tree, from /proc) before any client, then
runs bench_client with N clients at `--rate 0` (connect, upgrade, hold; the server's keepalive
pings are answered) from P processes bound round-robin to several loopback source addresses so
no address runs out of ephemeral ports. Once the server's /metrics (its admin listener, which
covers every worker) count N open WebSockets it samples RSS again: per connection = (loaded -
idle) / N. The CPU the connects cost is sampled over one interval for both sides, from the
moment bench_client starts to the poll that saw every connection open (`connect_window_s`):
server and client CPU (each a whole process tree, from /proc) over that same interval, so
together they never exceed cores x window. Prints a summary and writes JSON.

    python benchmarks/hold_idle.py --clients 100000 --workers 6 --bench-procs 6
    python benchmarks/hold_idle.py --clients 2000 --workers 1 --bench-procs 1 --hold 5   # quick

Linux only. Bounded: the client gives up on a connection after --handshake-timeout, holds for
--hold seconds once every client has settled, and this script stops the server at the end.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "benchmarks"))
sys.path.insert(0, str(ROOT))

from server_cost import (  # noqa: E402
    read_bench_report,
    require_proc,
    start_server,
    stop,
    tree_cpu_seconds,
    tree_rss_bytes,
)

from webscale.certs import ensure_certs  # noqa: E402


def open_per_worker(stats_url: str) -> dict[str, int]:
    """webscale_websockets_open per worker that answered, from one /metrics scrape of the admin
    listener (the supervisor asks every worker at that moment)."""
    with urllib.request.urlopen(f"{stats_url}/metrics", timeout=30) as r:
        text = r.read().decode()
    out: dict[str, int] = {}
    for line in text.splitlines():
        if line.startswith("webscale_websockets_open"):
            labels, _, value = line.rpartition(" ")
            worker = labels.partition('worker="')[2].partition('"')[0] or "0"
            out[worker] = int(float(value))
    return out


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--clients", type=int, default=100_000)
    p.add_argument("--workers", type=int, default=6)
    p.add_argument("--bench-procs", type=int, default=6)
    p.add_argument("--source-addrs", default="127.0.0.1-127.0.0.16")
    p.add_argument("--ramp", type=int, default=800, help="new connections per second, all procs")
    p.add_argument("--hold", type=float, default=20.0, help="seconds held once all settled")
    p.add_argument("--handshake-timeout", type=float, default=30.0)
    p.add_argument("--json", type=Path)
    p.add_argument("server_args", nargs="*", help="extra server flags (after --)")
    args = p.parse_args()
    require_proc("benchmarks/hold_idle.py")

    _soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    certs = ensure_certs(ROOT / "certs")
    server_flags = ["--workers", str(args.workers), "--backlog", "8192",
                    "--log-level", "warning", *args.server_args]
    proc, port, stats_url = start_server("webscale", certs.ca_cert.parent, server_flags)
    bench_json = Path(f"/tmp/hold_idle_bench_{os.getpid()}.json")
    result: dict = {"clients": args.clients, "workers": args.workers,
                    "bench_procs": args.bench_procs, "ramp": args.ramp}
    bench = None
    try:
        deadline = time.monotonic() + 30
        while len(open_per_worker(stats_url)) < args.workers:  # every worker answers
            if time.monotonic() > deadline:
                raise SystemExit("workers did not all report in /metrics")
            time.sleep(0.5)
        rss_idle = tree_rss_bytes(proc.pid)
        argv = [sys.executable, "-m", "bench_client", "--url", f"wss://127.0.0.1:{port}/",
                "--cafile", str(certs.ca_cert), "--clients", str(args.clients), "--rate", "0",
                "--duration", str(args.hold), "--ramp", str(args.ramp),
                "--procs", str(args.bench_procs), "--source-addrs", args.source_addrs,
                "--handshake-timeout", str(args.handshake_timeout), "--quiet",
                "--json", str(bench_json)]
        server_cpu0 = tree_cpu_seconds(proc.pid)
        started = time.monotonic()
        bench = subprocess.Popen(argv, cwd=ROOT, stdout=subprocess.DEVNULL)
        peak: dict[str, int] = {}
        while bench.poll() is None:
            counts = open_per_worker(stats_url)
            if sum(counts.values()) > sum(peak.values()):
                peak = counts
            if sum(counts.values()) >= args.clients:
                # Both sides' CPU at the same moment, over the same interval as the time.
                window = time.monotonic() - started
                server_cpu = tree_cpu_seconds(proc.pid) - server_cpu0
                client_cpu = tree_cpu_seconds(bench.pid)  # its processes started at `started`
                result.update({
                    "server_saw_all_open_after_s": round(window, 1),
                    "connect_window_s": round(window, 2),
                    "server_cpu_s_in_window": round(server_cpu, 2),
                    "client_cpu_s_in_window": round(client_cpu, 2),
                    "cpu_share_of_the_box": round((server_cpu + client_cpu)
                                                  / (window * (os.cpu_count() or 1)), 2),
                    "client_rss_mb": round(tree_rss_bytes(bench.pid) / 2**20, 1),
                })
                time.sleep(3)  # let the last handshakes' buffers settle before sampling RSS
                rss_loaded = tree_rss_bytes(proc.pid)
                result.update({
                    "server_rss_idle_mb": round(rss_idle / 2**20, 1),
                    "server_rss_loaded_mb": round(rss_loaded / 2**20, 1),
                    "server_rss_per_conn_kb": round((rss_loaded - rss_idle) / args.clients
                                                    / 1024, 1),
                })
                break
            time.sleep(0.25)
        result["open_per_worker_peak"] = peak
        bench.wait(timeout=args.hold + args.clients / args.ramp + 600)
        result["bench_exit"] = bench.returncode
    finally:
        stop(bench, signal.SIGINT, 60)
        stop(proc)
    result["bench"] = read_bench_report(bench_json, ("connections", "cpu"))
    print(json.dumps(result, indent=2))
    if args.json:
        args.json.write_text(json.dumps(result, indent=2))
    ok = "server_rss_per_conn_kb" in result and result.get("bench_exit") == 0
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
