#!/usr/bin/env python3
"""Issue 6's peer table for webscale and the asyncio twin, measured in the same run.

    python benchmarks/peer_table.py                       # both servers, default levels
    python benchmarks/peer_table.py --servers webscale --levels 5000 7500 10000
    python benchmarks/peer_table.py --quick               # smaller counts, shorter windows
    python benchmarks/peer_table.py --render bench-results/peer_table.json   # print it again

Rows, each measured by benchmarks/server_cost.py's run_point (server CPU from /proc for the
whole server process tree, decoded count from the server's /stats, RSS from /proc):
- server CPU per message at `--cpu-clients` clients, 1 msg/s each (10 KB JSON);
- ping RTT p99 in that same run (bench_client --ping-sample: K connections ping every second);
- memory per idle TLS WebSocket connection: (RSS with `--idle-clients` idle connections held
  minus RSS before any) / clients;
- the most clients kept up at 1 msg/s: for each level, every client connected, none failed, and
  the server decoded >= 99% of the offered rate over the window with under 1 s of backlog
  (in-flight at the end < one second of traffic). Client and server share this machine's cores.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import ssl
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from server_cost import run_point


def kept_up(point: dict) -> bool:
    conns = (point.get("bench") or {}).get("connections") or {}
    if "error" in point or conns.get("established") != point["clients"]:
        return False
    if conns.get("failed") or conns.get("dropped"):
        return False
    offered = point["offered_msgs_per_s"]
    return (point["decoded_msgs_per_s"] >= 0.99 * offered
            and (point.get("in_flight_end") or 0) < offered)


def p99_ms(point: dict) -> float | None:
    rtt = (point.get("bench") or {}).get("ping_rtt_s") or {}
    return round(rtt["p99"] * 1000, 1) if rtt.get("p99") is not None else None


def measure(server: str, args: argparse.Namespace) -> dict:
    out: dict = {"server": server}
    print(f"[{server}] CPU and ping RTT at {args.cpu_clients} clients", file=sys.stderr)
    loaded = run_point(server, clients=args.cpu_clients, window=args.window,
                       settle=args.settle, ping_sample=args.ping_sample)
    out["loaded"] = loaded
    out["cpu_us_per_msg"] = loaded.get("server_cpu_us_per_msg")
    out["ping_p99_ms"] = p99_ms(loaded)
    print(f"[{server}] idle memory at {args.idle_clients} clients", file=sys.stderr)
    idle = run_point(server, clients=args.idle_clients, rate=0, window=5, settle=5,
                     ping_sample=0)
    out["idle"] = idle
    out["idle_kb_per_conn"] = idle.get("rss_per_conn_kb")
    out["levels"] = []
    best = 0
    for level in args.levels:
        print(f"[{server}] {level} clients at 1 msg/s", file=sys.stderr)
        point = run_point(server, clients=level, window=args.window, settle=args.settle,
                          ping_sample=0)
        ok = kept_up(point)
        out["levels"].append({"clients": level, "kept_up": ok, "point": point})
        if not ok:
            break
        best = level
    out["most_clients_kept_up"] = best
    return out


def render(results: dict, cpu_clients: int) -> None:
    """Print the table. A server that could not hold `cpu_clients` gets its CPU per message
    and ping p99 from the largest level it kept up with, marked with that level."""
    print(f"\n| server | CPU per message at {cpu_clients} clients | most clients kept up at "
          f"1 msg/s | memory per idle TLS connection | ping RTT p99 at {cpu_clients} |")
    print("|---|---|---|---|---|")
    for r in results["servers"]:
        levels = [lvl["clients"] for lvl in r["levels"]]
        most = r["most_clients_kept_up"]
        cap = " (highest level tried)" if most and most == max(levels) else ""
        cpu, ping = f"{r['cpu_us_per_msg']} us", f"{r['ping_p99_ms']} ms"
        if r["cpu_us_per_msg"] is None:
            cpu = f"- ({r['loaded'].get('error', 'no measurement')})"
            for lvl in r["levels"]:
                if lvl["kept_up"] and lvl["clients"] == most:
                    cpu += f"; {lvl['point']['server_cpu_us_per_msg']} us at {most}"
        print(f"| {r['server']} | {cpu} | {most}{cap} | {r['idle_kb_per_conn']} KB | {ping} |")


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--servers", nargs="+", default=["webscale", "twin"],
                   choices=["webscale", "twin"])
    p.add_argument("--cpu-clients", type=int, default=5000)
    p.add_argument("--idle-clients", type=int, default=5000)
    p.add_argument("--levels", type=int, nargs="+", default=[2500, 5000, 7500, 10000])
    p.add_argument("--window", type=float, default=20.0)
    p.add_argument("--ping-sample", type=int, default=100)
    p.add_argument("--settle", type=float, default=15.0,
                   help="seconds after the last client connected before the window: the "
                        "backlog built while handshaking must drain, or it shows as latency")
    p.add_argument("--quick", action="store_true", help="1000 clients, 10 s windows")
    p.add_argument("--json", type=Path, default=Path("bench-results/peer_table.json"))
    p.add_argument("--render", type=Path, metavar="JSON",
                   help="print the table of an earlier run's JSON instead of measuring")
    args = p.parse_args()
    if args.render:
        earlier = json.loads(args.render.read_text())
        render(earlier, earlier["args"]["cpu_clients"])
        return 0
    if args.quick:
        args.cpu_clients = args.idle_clients = 1000
        args.levels = [500, 1000]
        args.window = 10.0
        args.settle = 3.0
    machine = {"python": platform.python_version(), "cpus": os.cpu_count(),
               "platform": platform.platform(), "openssl": ssl.OPENSSL_VERSION}
    results: dict = {"machine": machine, "date": time.strftime("%Y-%m-%d %H:%M"),
                     "args": vars(args) | {"json": str(args.json)}, "servers": []}
    args.json.parent.mkdir(parents=True, exist_ok=True)
    for server in args.servers:
        results["servers"].append(measure(server, args))
        args.json.write_text(json.dumps(results, indent=2))  # keep what is done so far
    render(results, args.cpu_clients)
    print(f"\nJSON: {args.json}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
