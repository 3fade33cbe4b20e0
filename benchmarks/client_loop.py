#!/usr/bin/env python3
"""bench_client's CPU on its own loop and on webscale's, alternating, against the sink.

    python benchmarks/client_loop.py                    # own, webscale, own, webscale, ...
    python benchmarks/client_loop.py --clients 500 --window 5 --rounds 1   # quick

Why bench_client has its own loop (issue 11: "one event loop, or a written reason") is in
bench_client/loop.py's docstring; this script measures it. Each run starts benchmarks/sink.py
(TLS; it discards every byte, so the client is what is measured), runs bench_client with
`--clients` at 1 msg/s, waits until every connection is established (from /proc/net/tcp), lets
it settle, then samples the client's whole process tree CPU from /proc over `--window` seconds
of steady state. The "webscale" variant runs the same bench_client with its workers' EventLoop
replaced by `webscale.loop.EventLoop` behind a thin adapter (webscale's loop registers socket
objects and has no `call_at`). Linux only.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "benchmarks"))
sys.path.insert(0, str(ROOT))

from server_cost import require_proc, stop, tree_cpu_seconds  # noqa: E402

from webscale.certs import ensure_certs  # noqa: E402

# Run in the bench_client process before its workers fork: swap the workers' loop class.
WEBSCALE_LOOP = """
import time
import bench_client.worker
from webscale.loop import EventLoop as WebscaleLoop

class _Fd:
    __slots__ = ("fd",)
    def __init__(self, fd):
        self.fd = fd
    def fileno(self):
        return self.fd

class Adapter(WebscaleLoop):
    def call_at(self, when, callback):
        return self.call_later(when - time.monotonic(), callback)
    def register(self, fd, events, handler):
        super().register(_Fd(fd), events, handler)
    def modify(self, fd, events, handler):
        super().modify(_Fd(fd), events, handler)
    def unregister(self, fd):
        try:
            super().unregister(_Fd(fd))
        except (KeyError, ValueError, OSError):
            pass
    def run_until(self, done):
        while not done():
            self.run_once(max_wait=0.25)

bench_client.worker.EventLoop = Adapter
"""


def established(port: int) -> int:
    count = 0
    for line in Path("/proc/net/tcp").read_text().splitlines()[1:]:
        fields = line.split()
        if fields[3] == "01" and int(fields[2].split(":")[1], 16) == port:
            count += 1
    return count


def run(variant: str, args: argparse.Namespace, certs: Path) -> dict[str, Any]:
    sink = subprocess.Popen([sys.executable, "benchmarks/sink.py", "--port", "0", "--cert",
                             str(certs / "server.pem"), "--key", str(certs / "server.key")],
                            cwd=ROOT, stdout=subprocess.PIPE, text=True)
    bench = None
    out = Path(f"/tmp/client_loop_{os.getpid()}.json")
    try:
        assert sink.stdout is not None
        port = int(sink.stdout.readline().strip().rsplit(":", 1)[1])
        preamble = WEBSCALE_LOOP if variant == "webscale" else ""
        code = f"{preamble}\nfrom bench_client.cli import main\nraise SystemExit(main())"
        bench = subprocess.Popen(
            [sys.executable, "-c", code, "--url", f"wss://127.0.0.1:{port}/", "--cafile",
             str(certs / "ca.pem"), "--clients", str(args.clients), "--rate", "1",
             "--duration", str(args.window + 15), "--ramp", "2000", "--handshake-timeout", "30",
             "--quiet", "--json", str(out)],
            cwd=ROOT, stdout=subprocess.DEVNULL, env={**os.environ, "PYTHONPATH": str(ROOT)})
        started = time.monotonic()
        while established(port) < args.clients:
            if time.monotonic() - started > 120 or bench.poll() is not None:
                return {"variant": variant, "error": "clients did not all connect"}
            time.sleep(0.5)
        time.sleep(3)
        cpu0, t0 = tree_cpu_seconds(bench.pid), time.monotonic()
        time.sleep(args.window)
        cpu1, t1 = tree_cpu_seconds(bench.pid), time.monotonic()
        bench.wait(args.window + 120)
        report = json.loads(out.read_text())
        out.unlink()
    finally:
        stop(bench, signal.SIGINT, 60)
        stop(sink)
    rate = report["messages"]["written_per_s_steady"]
    return {"variant": variant,
            "steady_us_per_msg": round(1e6 * (cpu1 - cpu0) / (rate * (t1 - t0)), 1),
            "steady_cpu_percent": round(100 * (cpu1 - cpu0) / (t1 - t0), 1),
            "whole_run_us_per_msg": round(report["cpu"]["us_per_message"], 1),
            "written_per_s": round(rate), "failed": report["connections"]["failed"],
            "lateness_p99_ms": round(report["send_lateness_s"]["p99"] * 1000, 2)}


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--clients", type=int, default=5000)
    p.add_argument("--window", type=float, default=15.0, help="steady-state seconds sampled")
    p.add_argument("--rounds", type=int, default=3, help="runs of each variant, alternating")
    p.add_argument("--json", type=Path)
    args = p.parse_args()
    require_proc("benchmarks/client_loop.py")
    certs = ensure_certs(ROOT / "certs").ca_cert.parent
    runs = []
    for _ in range(args.rounds):
        for variant in ("own", "webscale"):
            runs.append(run(variant, args, certs))
            print(json.dumps(runs[-1]), flush=True)
    summary = {}
    for variant in ("own", "webscale"):
        values = [r["steady_us_per_msg"] for r in runs if r["variant"] == variant
                  and "error" not in r]
        summary[variant] = statistics.median(values) if values else None
    print(f"median steady-state client CPU per message: own loop {summary['own']} us, "
          f"webscale.loop {summary['webscale']} us")
    if args.json:
        args.json.write_text(json.dumps({"runs": runs, "median_us_per_msg": summary}, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
