#!/usr/bin/env python3
"""Server CPU per message and memory under the workload, measured from outside the server.

Starts a server (webscale, the asyncio twin or the picows twin), drives it with bench_client
(N clients, one ~10 KB JSON message per client per second by default, `--document` either shape),
and once every client is connected measures over a steady-state window:
  - server CPU (user+system from /proc for the server's whole process tree) per decoded message,
    and as a share of one core (the idle row: `--rate 0`)
  - messages decoded per second (the server's own counters) against messages offered
  - server RSS (whole tree) and RSS per connection minus the idle baseline
The numbers are printed and written as JSON. Linux only (/proc).

The decoded rate is exact with `--workers` too: every count is paired with the uptime the same
process reported it at (one /stats, or each worker's series in /metrics, whose other workers'
values are snapshots up to a second old), so each process's rate is its own count over its own
interval, and the end of the window is read again until every worker's snapshot covers at least
90% of the window.

    python benchmarks/server_cost.py --server webscale --clients 2000 --window 20
    python benchmarks/server_cost.py --server picows --clients 2000 --document notes
    python benchmarks/server_cost.py --server twin --clients 5000 --rate 0   # idle CPU, memory
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import signal
import ssl
import subprocess
import sys
import time
import urllib.request
from importlib import metadata
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench_client.payload import DOCUMENTS  # noqa: E402
from webscale.certs import ensure_certs, issue_client_cert  # noqa: E402

TICK = os.sysconf("SC_CLK_TCK")
PAGE = os.sysconf("SC_PAGE_SIZE")


def require_proc(tool: str, proc: Path = Path("/proc")) -> None:
    """These measurements read CPU times and memory from /proc, which only Linux has: anywhere
    else stop at once with one line saying so (exit code 2), not a traceback mid-run."""
    if not (proc / "self" / "stat").exists():
        print(f"{tool}: measures the server from /proc, which {platform.system()} does not have "
              "(Linux only)", file=sys.stderr)
        raise SystemExit(2)


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


SERVERS = {  # name -> the module run as `python -m MODULE [ARGS]`
    "webscale": ["webscale", "serve"],
    # The same server letting in only devices: a client certificate from the test CA required
    # (--client-ca) and an --authorize hook (benchmarks/hooks.py). Both run once per connection,
    # never per message: its rows next to webscale's show what they cost the hot path.
    "webscale-secure": ["webscale", "serve"],
    "twin": ["bench_client.asyncio_twin"],
    "picows": ["bench_client.picows_twin"],
}


def get_json(base_url: str, ctx: ssl.SSLContext, path: str, attempts: int = 3) -> Any:
    """GET a JSON path from `base_url` (webscale's admin listener, a twin's own port); an
    overloaded server (the twin at 5,000 clients) may take a while. A supervisor's /stats that
    lists workers that did not answer in time is asked again."""
    for attempt in range(attempts):
        try:
            with urllib.request.urlopen(f"{base_url}{path}", context=ctx, timeout=30) as r:
                answer = json.load(r)
        except OSError:
            if attempt == attempts - 1:
                raise
            continue
        if isinstance(answer, dict) and answer.get("workers_missing") and attempt < attempts - 1:
            continue  # a window judged on some workers only would be wrong
        return answer
    raise AssertionError("unreachable")


def get_stats(stats_url: str, ctx: ssl.SSLContext) -> dict:
    """The server's /stats: with `--workers N`, the supervisor's sum, exact at the request."""
    return get_json(stats_url, ctx, "/stats")  # type: ignore[no-any-return]


COUNTER_NAMES = ("messages_decoded", "messages_received", "connections_total", "in_flight")


def _counters(snapshot: dict) -> dict[str, float]:
    values = {name: float(snapshot.get(name) or 0) for name in COUNTER_NAMES}
    values["uptime"] = float(snapshot.get("uptime_seconds") or 0)
    return values


def read_counters(stats_url: str, ctx: ssl.SSLContext
                  ) -> tuple[dict[str, dict[str, float]], dict]:
    """Per process, its counters and the uptime they were taken at; and the /stats answer.

    One process: {"0": ...}. With `--workers N`: one entry per worker, from the breakdown in
    the supervisor's /stats (each worker's figures from one snapshot, with its uptime)."""
    stats = get_stats(stats_url, ctx)
    workers = stats.get("workers")
    if isinstance(workers, dict) and workers:
        return {str(w): _counters(snap) for w, snap in workers.items()}, stats
    return {"0": _counters(stats)}, stats


def total(counters: dict[str, dict[str, float]], name: str) -> float:
    return sum(values[name] for values in counters.values())


def window_rate(start: dict[str, dict[str, float]], end: dict[str, dict[str, float]],
                name: str) -> float:
    """Sum over processes of (count at end - count at start) / (its uptime at end - at start)."""
    rate = 0.0
    for worker, values in end.items():
        before = start.get(worker)
        if before is None or values["uptime"] <= before["uptime"]:
            continue  # a restarted worker, or no newer snapshot: counted by covers_window
        rate += (values[name] - before[name]) / (values["uptime"] - before["uptime"])
    return rate


def covers_window(start: dict[str, dict[str, float]], end: dict[str, dict[str, float]],
                  elapsed: float, share: float = 0.9) -> bool:
    """Every process's snapshots at both ends span at least `share` of the window."""
    return set(start) <= set(end) and all(
        end[w]["uptime"] - start[w]["uptime"] >= share * elapsed for w in start)


def read_window_end(stats_url: str, ctx: ssl.SSLContext, start: dict[str, dict[str, float]],
                    elapsed: float, wait: float = 5.0) -> tuple[dict[str, dict[str, float]], dict]:
    """Read the counters until every worker's snapshot covers the window (a worker publishes
    once a second), or give up after `wait` seconds (the caller reports it)."""
    deadline = time.monotonic() + wait
    while True:
        end, stats = read_counters(stats_url, ctx)
        if covers_window(start, end, elapsed) or time.monotonic() >= deadline:
            return end, stats
        time.sleep(0.1)


def start_server(kind: str, certs: Path, extra: list[str], switch_interval: float | None = None
                 ) -> tuple[subprocess.Popen[str], int, str]:
    """Start a server on 127.0.0.1; (process, public port, base URL of /stats): webscale's
    admin listener (on a free port: `admin on URL` follows `listening on URL`), or a twin's
    own port, which serves /stats itself."""
    module, *subcommand = SERVERS[kind]
    argv = [sys.executable, "-m", module, *subcommand]
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
    if kind.startswith("webscale") and "--admin" not in extra:
        argv += ["--admin", "127.0.0.1:0"]
    if kind == "webscale-secure":
        argv += ["--client-ca", str(certs / "ca.pem"), "--authorize", "hooks:allow_devices"]
    if os.environ.get("SERVER_CPUS"):
        # Experiment knob: pin the server to these CPUs (taskset list, e.g. "1").
        argv = ["taskset", "-c", os.environ["SERVER_CPUS"], *argv]
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, text=True, cwd=ROOT,
                            env={**os.environ, "PYTHONPATH": os.pathsep.join(
                                [str(ROOT), str(ROOT / "benchmarks")])})
    assert proc.stdout is not None
    line = proc.stdout.readline()
    if not line.startswith("listening on"):
        proc.kill()
        raise SystemExit(f"server did not start: {line!r}")
    port = int(line.strip().rsplit(":", 1)[1])
    if not kind.startswith("webscale"):
        return proc, port, f"https://127.0.0.1:{port}"
    admin = proc.stdout.readline()
    if not admin.startswith("admin on "):
        proc.kill()
        raise SystemExit(f"webscale printed no admin URL (started with --admin off?): {admin!r}")
    return proc, port, admin.strip().removeprefix("admin on ")


def run_point(server: str = "webscale", clients: int = 2000, rate: float = 1.0,
              size: int = 10240, window: float = 20.0, settle: float = 3.0, ramp: int = 2000,
              ping_sample: int = 50, server_args: list[str] | None = None,
              switch_interval: float | None = None, bench_procs: int | None = None,
              document: str = "telemetry") -> dict:
    """One measurement: start the server, load it, measure a steady-state window, stop both."""
    certs = ensure_certs(ROOT / "certs")
    ctx = ssl.create_default_context(cafile=str(certs.ca_cert))
    proc, port, stats_url = start_server(server, certs.ca_cert.parent, server_args or [],
                                         switch_interval)
    bench_json = Path(f"/tmp/server_cost_bench_{os.getpid()}.json")
    result: dict = {"server": server, "clients": clients, "rate": rate, "document": document,
                    "server_args": server_args or []}
    try:
        client_cert: list[str] = []
        if server == "webscale-secure":
            device = issue_client_cert(certs.ca_cert.parent, "bench-device")
            client_cert = ["--cert", str(device.cert), "--key", str(device.key)]
        return _measure(proc, port, stats_url, ctx, certs.ca_cert, bench_json, result, clients,
                        rate, size, window, settle, ramp, ping_sample, bench_procs, document,
                        client_cert)
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
             bench_procs: int | None, document: str, client_cert: list[str]) -> dict:
    bench = None
    try:
        time.sleep(0.5)
        rss_idle = tree_rss_bytes(proc.pid)
        duration = window + 30 + clients / ramp
        # The client's warm-up is the server's settle time: pings and send lateness in the
        # report then cover the measured window, not the backlog the handshakes left behind.
        argv = [sys.executable, "-m", "bench_client", "--url", f"wss://127.0.0.1:{port}/",
                "--cafile", str(cafile), "--clients", str(clients), "--rate", str(rate),
                "--size", str(size), "--document", document,
                "--duration", str(duration), "--ramp", str(ramp),
                "--warmup", str(settle),
                "--ping-sample", str(ping_sample), "--quiet", "--json", str(bench_json),
                *client_cert]
        if bench_procs:
            argv += ["--procs", str(bench_procs)]
        bench = subprocess.Popen(argv, cwd=ROOT, stdout=subprocess.DEVNULL)
        t_start = time.monotonic()
        while total(read_counters(stats_url, ctx)[0], "connections_total") < clients:
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
        "ping_rtt_s", "ping_rtt_ramp_s", "pings", "send_lateness_s", "connections", "messages",
        "cpu"))
    if report is not None:
        result["bench"] = report
    return result


def _window(proc: subprocess.Popen[str], stats_url: str, ctx: ssl.SSLContext, result: dict,
            clients: int, rate: float, window: float, settle: float, rss_idle: int,
            connected_in: float) -> None:
    time.sleep(settle)
    w0, _ = read_counters(stats_url, ctx)
    c0, t0, th0 = tree_cpu_seconds(proc.pid), time.monotonic(), thread_cpu_seconds(proc.pid)
    time.sleep(window)
    rss_loaded = tree_rss_bytes(proc.pid)
    c1, t1, th1 = tree_cpu_seconds(proc.pid), time.monotonic(), thread_cpu_seconds(proc.pid)
    elapsed = t1 - t0
    w1, s1 = read_window_end(stats_url, ctx, w0, elapsed)
    if not covers_window(w0, w1, elapsed):
        result["error"] = "a worker's counters did not cover the window (stale or restarted)"
    decoded_per_s = window_rate(w0, w1, "messages_decoded")
    decoded = decoded_per_s * elapsed  # over the CPU's window, at each process's exact rate

    def per_msg(seconds: float) -> float | None:
        return round(1e6 * seconds / decoded, 1) if decoded >= 1 else None

    result.update({
        "window_s": round(elapsed, 2), "connect_all_s": round(connected_in, 2),
        "offered_msgs_per_s": clients * rate,
        "decoded_msgs_per_s": round(decoded_per_s, 1),
        "received_msgs_per_s": round(window_rate(w0, w1, "messages_received"), 1),
        "server_cpu_percent": round(100 * (c1 - c0) / elapsed, 2),
        "server_cpu_us_per_msg": per_msg(c1 - c0),
        "main_thread_cpu_us_per_msg": per_msg(th1["loop"] - th0["loop"]),
        "other_threads_cpu_us_per_msg": per_msg(th1["others"] - th0["others"]),
        "rss_idle_mb": round(rss_idle / 2**20, 1),
        "rss_loaded_mb": round(rss_loaded / 2**20, 1),
        "rss_per_conn_kb": round((rss_loaded - rss_idle) / clients / 1024, 1),
        "server_processes": len(w1),
        "in_flight_end": total(w1, "in_flight"),
        "loop_iteration_s": s1.get("loop_lag_seconds"),
        "paused_connections_end": s1.get("paused_connections"),
    })


def machine_description() -> dict[str, Any]:
    """What a published number needs next to it: the machine and the software versions."""
    model = next((line.split(":", 1)[1].strip() for line in
                  Path("/proc/cpuinfo").read_text().splitlines() if line.startswith("model name")),
                 platform.machine())
    mem_kb = int(Path("/proc/meminfo").read_text().split()[1])
    versions = {}
    for dist in ("websockets", "wsproto", "orjson", "picows", "uvloop"):
        try:
            versions[dist] = metadata.version(dist)
        except metadata.PackageNotFoundError:
            versions[dist] = None
    return {"cpu": model, "cpus": os.cpu_count(), "memory_gib": round(mem_kb / 2**20),
            "kernel": f"{platform.system()} {platform.release()}",
            "python": platform.python_version(), "openssl": ssl.OPENSSL_VERSION,
            "versions": versions}


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--server", choices=sorted(SERVERS), default="webscale")
    p.add_argument("--clients", type=int, default=2000)
    p.add_argument("--rate", type=float, default=1.0, help="per client; 0 = connected, idle")
    p.add_argument("--size", type=int, default=10240)
    p.add_argument("--document", choices=DOCUMENTS, default="telemetry",
                   help="the message's shape (bench_client --document)")
    p.add_argument("--window", type=float, default=20.0, help="seconds measured")
    p.add_argument("--settle", type=float, default=3.0, help="seconds after connecting")
    p.add_argument("--ramp", type=int, default=2000)
    p.add_argument("--ping-sample", type=int, default=50)
    p.add_argument("--bench-procs", type=int)
    p.add_argument("--json", type=Path)
    p.add_argument("--switch-interval", type=float, help="sys.setswitchinterval in the server")
    p.add_argument("server_args", nargs="*", help="extra server flags (after --)")
    args = p.parse_args()
    require_proc("benchmarks/server_cost.py")
    result = run_point(args.server, args.clients, args.rate, args.size, args.window, args.settle,
                       args.ramp, args.ping_sample, args.server_args, args.switch_interval,
                       args.bench_procs, args.document)
    print(json.dumps(result, indent=2))
    if args.json:
        args.json.write_text(json.dumps(result, indent=2))
    return 0 if "error" not in result else 1


if __name__ == "__main__":
    raise SystemExit(main())
