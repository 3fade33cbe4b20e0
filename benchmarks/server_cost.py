#!/usr/bin/env python3
"""Server CPU per message and memory under the workload, measured from outside the server.

Starts a server (webscale, or the asyncio twin for comparison), drives it with bench_client
(N clients, one ~10 KB JSON message per client per second by default), and once every client is
connected measures over a steady-state window:
  - server CPU (user+system from /proc for the server's whole process tree) per decoded message
  - messages decoded per second (the server's own /stats: webscale's admin listener, which with
    --workers N sums every worker's figures as they are at the moment of the request; the
    twin's own port) against messages sent
  - server RSS (whole tree) and RSS per connection minus the idle baseline
The numbers are printed and written as JSON. Linux only (/proc).

    python benchmarks/server_cost.py --server webscale --clients 2000 --window 20
    python benchmarks/server_cost.py --server twin --clients 2000
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import ssl
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from webscale.certs import ensure_certs  # noqa: E402

TICK = os.sysconf("SC_CLK_TCK")
PAGE = os.sysconf("SC_PAGE_SIZE")


def tree_pids(root: int) -> list[int]:
    pids = [root]
    for pid in pids:
        try:
            for task in os.listdir(f"/proc/{pid}/task"):
                children = Path(f"/proc/{pid}/task/{task}/children").read_text().split()
                pids.extend(int(c) for c in children)
        except OSError:
            pass
    return pids


def tree_cpu_seconds(root: int) -> float:
    total = 0
    for pid in tree_pids(root):
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
            total += int(fields[11]) + int(fields[12])
        except OSError:
            pass
    return total / TICK


def thread_cpu_seconds(pid: int) -> dict[str, float]:
    """CPU seconds of the main (loop) thread and of all other threads of one process."""
    out = {"loop": 0.0, "others": 0.0}
    for task in os.listdir(f"/proc/{pid}/task"):
        try:
            fields = Path(f"/proc/{pid}/task/{task}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        seconds = (int(fields[11]) + int(fields[12])) / TICK
        out["loop" if int(task) == pid else "others"] += seconds
    return out


def tree_rss_bytes(root: int) -> int:
    total = 0
    for pid in tree_pids(root):
        try:
            total += int(Path(f"/proc/{pid}/statm").read_text().split()[1]) * PAGE
        except OSError:
            pass
    return total


def get_stats(stats_url: str, ctx: ssl.SSLContext, attempts: int = 3) -> dict:
    """The server's /stats (`stats_url` from start_server); an overloaded server (the twin at
    5,000 clients) may take a while. webscale's, from its admin listener, covers every worker
    and is exact at the moment of the request; a worker that did not answer within the
    supervisor's deadline is listed in `workers_missing`, and the request is repeated."""
    for attempt in range(attempts):
        try:
            with urllib.request.urlopen(f"{stats_url}/stats", context=ctx, timeout=30) as r:
                stats = json.load(r)
        except OSError:
            if attempt == attempts - 1:
                raise
            continue
        if stats.get("workers_missing") and attempt < attempts - 1:
            continue  # a window judged on some workers only would be wrong
        return stats  # type: ignore[no-any-return]
    raise AssertionError("unreachable")


def start_server(kind: str, certs: Path, extra: list[str], switch_interval: float | None = None
                 ) -> tuple[subprocess.Popen[str], int, str]:
    """Start webscale or the twin on 127.0.0.1; (process, public port, base URL of /stats):
    webscale's admin listener (on a free port: `admin on URL` follows `listening on URL`), or the
    twin's own port, which serves /stats itself."""
    module = "webscale" if kind == "webscale" else "bench_client.asyncio_twin"
    argv = [sys.executable, "-m", module] + (["serve"] if kind == "webscale" else [])
    preamble = os.environ.get("SERVER_PREAMBLE", "")
    if switch_interval is not None:
        preamble += f"; import sys; sys.setswitchinterval({switch_interval})"
    if preamble:
        # Experiment knobs: code run in the server process before it starts (GIL switch
        # interval, gc thresholds, ...).
        argv[1:3] = ["-c", f"{preamble.strip('; ')}; import sys, runpy; "
                     f"sys.argv[0] = {module!r}; runpy.run_module({module!r}, run_name='__main__')"]
    argv += ["--host", "127.0.0.1", "--port", "0", "--cert", str(certs / "server.pem"),
             "--key", str(certs / "server.key"), *extra]
    if kind == "webscale" and "--admin" not in extra:
        argv += ["--admin", "127.0.0.1:0"]
    if os.environ.get("SERVER_CPUS"):
        # Experiment knob: pin the server to these CPUs (taskset list, e.g. "1").
        argv = ["taskset", "-c", os.environ["SERVER_CPUS"], *argv]
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, text=True, cwd=ROOT,
                            env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert proc.stdout is not None
    line = proc.stdout.readline()
    if not line.startswith("listening on"):
        proc.kill()
        raise SystemExit(f"server did not start: {line!r}")
    port = int(line.strip().rsplit(":", 1)[1])
    if kind != "webscale":
        return proc, port, f"https://127.0.0.1:{port}"
    admin = proc.stdout.readline()
    if not admin.startswith("admin on "):
        proc.kill()
        raise SystemExit(f"webscale printed no admin URL (started with --admin off?): {admin!r}")
    return proc, port, admin.strip().removeprefix("admin on ")


def run_point(server: str = "webscale", clients: int = 2000, rate: float = 1.0,
              size: int = 10240, window: float = 20.0, settle: float = 3.0, ramp: int = 2000,
              ping_sample: int = 50, server_args: list[str] | None = None,
              switch_interval: float | None = None, bench_procs: int | None = None) -> dict:
    """One measurement: start the server, load it, measure a steady-state window, stop both."""
    certs = ensure_certs(ROOT / "certs")
    ctx = ssl.create_default_context(cafile=str(certs.ca_cert))
    proc, port, stats_url = start_server(server, certs.ca_cert.parent, server_args or [],
                                         switch_interval)
    bench_json = Path(f"/tmp/server_cost_bench_{os.getpid()}.json")
    result: dict = {"server": server, "clients": clients, "rate": rate}
    try:
        return _measure(proc, port, stats_url, ctx, certs.ca_cert, bench_json, result, clients,
                        rate, size, window, settle, ramp, ping_sample, bench_procs)
    except OSError as exc:
        result["error"] = f"server stopped answering /stats: {exc}"
        return result
    finally:
        stop(proc)


def stop(proc: subprocess.Popen[Any] | None, sig: int = signal.SIGTERM,
         grace: float = 30) -> None:
    """Ask a process we started to stop (a server drains on SIGTERM, bench_client reports on
    SIGINT); kill it if it has not exited after `grace` seconds."""
    if proc is not None and proc.poll() is None:
        proc.send_signal(sig)
        try:
            proc.wait(grace)
        except subprocess.TimeoutExpired:
            proc.kill()


def read_bench_report(path: Path, keys: tuple[str, ...]) -> dict | None:
    """The named sections of bench_client's --json report (the file is removed), or None."""
    try:
        report = json.loads(path.read_text())
        path.unlink()
    except (OSError, ValueError):
        return None
    return {k: report.get(k) for k in keys}


def _measure(proc: subprocess.Popen[str], port: int, stats_url: str, ctx: ssl.SSLContext,
             cafile: Path, bench_json: Path, result: dict, clients: int, rate: float, size: int,
             window: float, settle: float, ramp: int, ping_sample: int,
             bench_procs: int | None) -> dict:
    bench = None
    try:
        time.sleep(0.5)
        rss_idle = tree_rss_bytes(proc.pid)
        duration = window + 30 + clients / ramp
        # The client's warm-up is the server's settle time: pings and send lateness in the
        # report then cover the measured window, not the backlog the handshakes left behind.
        argv = [sys.executable, "-m", "bench_client", "--url", f"wss://127.0.0.1:{port}/",
                "--cafile", str(cafile), "--clients", str(clients), "--rate", str(rate),
                "--size", str(size), "--duration", str(duration), "--ramp", str(ramp),
                "--warmup", str(settle),
                "--ping-sample", str(ping_sample), "--quiet", "--json", str(bench_json)]
        if bench_procs:
            argv += ["--procs", str(bench_procs)]
        bench = subprocess.Popen(argv, cwd=ROOT, stdout=subprocess.DEVNULL)
        t_start = time.monotonic()
        while get_stats(stats_url, ctx)["connections_total"] < clients:
            if time.monotonic() - t_start > 180 or bench.poll() is not None:
                result["error"] = "clients did not all connect"
                break
            time.sleep(0.2)
        if "error" not in result:
            _window(proc, stats_url, ctx, result, clients, rate, window, settle, rss_idle,
                    time.monotonic() - t_start)
    finally:
        stop(bench, signal.SIGINT, 90)
    report = read_bench_report(bench_json, (
        "ping_rtt_s", "ping_rtt_ramp_s", "send_lateness_s", "connections", "messages", "cpu"))
    if report is not None:
        result["bench"] = report
    return result


def _window(proc: subprocess.Popen[str], stats_url: str, ctx: ssl.SSLContext, result: dict,
            clients: int, rate: float, window: float, settle: float, rss_idle: int,
            connected_in: float) -> None:
    time.sleep(settle)
    s0, c0, t0 = get_stats(stats_url, ctx), tree_cpu_seconds(proc.pid), time.monotonic()
    th0 = thread_cpu_seconds(proc.pid)
    time.sleep(window)
    rss_loaded = tree_rss_bytes(proc.pid)
    s1, c1, t1 = get_stats(stats_url, ctx), tree_cpu_seconds(proc.pid), time.monotonic()
    th1 = thread_cpu_seconds(proc.pid)
    decoded = s1["messages_decoded"] - s0["messages_decoded"]
    received = s1["messages_received"] - s0["messages_received"]
    elapsed = t1 - t0
    result.update({
        "window_s": round(elapsed, 2), "connect_all_s": round(connected_in, 2),
        "offered_msgs_per_s": clients * rate,
        "decoded_msgs_per_s": round(decoded / elapsed, 1),
        "received_msgs_per_s": round(received / elapsed, 1),
        "server_cpu_percent": round(100 * (c1 - c0) / elapsed, 1),
        "server_cpu_us_per_msg": round(1e6 * (c1 - c0) / max(decoded, 1), 1),
        "main_thread_cpu_us_per_msg": round(1e6 * (th1["loop"] - th0["loop"])
                                            / max(decoded, 1), 1),
        "other_threads_cpu_us_per_msg": round(1e6 * (th1["others"] - th0["others"])
                                              / max(decoded, 1), 1),
        "rss_idle_mb": round(rss_idle / 2**20, 1),
        "rss_loaded_mb": round(rss_loaded / 2**20, 1),
        "rss_per_conn_kb": round((rss_loaded - rss_idle) / clients / 1024, 1),
        "in_flight_end": s1.get("in_flight"),
        "loop_iteration_s": s1.get("loop_lag_seconds"),
        "paused_connections_end": s1.get("paused_connections"),
    })


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--server", choices=["webscale", "twin"], default="webscale")
    p.add_argument("--clients", type=int, default=2000)
    p.add_argument("--rate", type=float, default=1.0)
    p.add_argument("--size", type=int, default=10240)
    p.add_argument("--window", type=float, default=20.0, help="seconds measured")
    p.add_argument("--settle", type=float, default=3.0, help="seconds after connecting")
    p.add_argument("--ramp", type=int, default=2000)
    p.add_argument("--ping-sample", type=int, default=50)
    p.add_argument("--bench-procs", type=int)
    p.add_argument("--json", type=Path)
    p.add_argument("--switch-interval", type=float, help="sys.setswitchinterval in the server")
    p.add_argument("server_args", nargs="*", help="extra server flags (after --)")
    args = p.parse_args()
    result = run_point(args.server, args.clients, args.rate, args.size, args.window, args.settle,
                       args.ramp, args.ping_sample, args.server_args, args.switch_interval,
                       args.bench_procs)
    print(json.dumps(result, indent=2))
    if args.json:
        args.json.write_text(json.dumps(result, indent=2))
    return 0 if "error" not in result else 1


if __name__ == "__main__":
    raise SystemExit(main())
