"""`bench_client`: parse flags, fork the workers, drive the run's phases, print the report.

How this works: the parent raises its file limit (inherited by the workers), forks one process per
`WorkerPlan`, then only listens to their pipes. The run's phases: RAMP until every client has
settled (established or failed, or a deadline passes), an optional WARMUP of `--warmup` seconds
(its samples count with the ramp's), STEADY for `--duration` seconds, then STOP: the parent sends
"stop", every worker closes its connections and sends its final statistics, which the parent
merges into the report. The first Ctrl-C/SIGTERM jumps to STOP; a second Ctrl-C
kills the workers at once.
"""

from __future__ import annotations

import argparse
import logging
import multiprocessing
import resource
import shlex
import signal
import ssl
import sys
import time
from dataclasses import fields
from multiprocessing.connection import Connection, wait
from types import FrameType
from typing import Any, cast

from bench_client.config import (
    BenchConfig,
    WorkerPlan,
    client_tls_context,
    parse_source_addrs,
    raise_file_limit,
    resolve,
    split_plans,
    worker_count,
)
from bench_client.errors import ConfigError
from bench_client.html_report import bench_report_page, pyplot
from bench_client.metrics import merge_snapshots
from bench_client.payload import DOCUMENTS
from bench_client.report import (
    ProgressPrinter,
    RateWindow,
    build_report,
    render_table,
    table_rows,
    write_json,
)
from bench_client.timeline import Timeline
from bench_client.transport import source_binding_note
from bench_client.worker import run_worker

logger = logging.getLogger("bench_client")

# After "stop", how long beyond --close-timeout a worker may take to report before it is killed.
FINAL_GRACE = 10.0
# The ramp ends when every client has settled (established or failed). A server slower than --ramp
# only makes that take longer, so the parent keeps waiting while clients keep settling; it starts
# the steady phase anyway once no client has settled for a handshake timeout plus this grace (and
# the paced ramp, clients / ramp, is over). Every connection settles within its handshake timeout
# once started, so the ramp is bounded.
SETTLE_GRACE = 5.0


DESCRIPTION = """\
Load-test a WebSocket server: open --clients connections (TLS with wss://) from several
processes at up to --ramp per second, send each a JSON document of --size bytes --rate times a
second for --duration seconds, then close them all. The report counts connections established,
failed and dropped (by reason), messages scheduled and written, send lateness, ping round trips
(--ping-sample) and the client's own CPU. Exits 1 when failures exceed --max-failures."""

EPILOG = """\
example:
  bench_client --url wss://127.0.0.1:8443/ --cafile certs/ca.pem --clients 5000 --rate 1 \\
               --warmup 15 --duration 30 --ping-sample 100 --json report.json

Ctrl-C ends the run early and still prints the report; a second Ctrl-C stops at once."""


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="bench_client", description=DESCRIPTION, epilog=EPILOG,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--url", default="wss://127.0.0.1:8443/", help="ws:// or wss:// server URL")
    p.add_argument("--clients", type=int, default=100, help="connections to open (default 100)")
    p.add_argument("--rate", type=float, default=1.0,
                   help="messages per client per second; 0 = connect and hold idle (default 1)")
    p.add_argument("--size", type=int, default=10_240, help="message size in bytes (default 10240)")
    p.add_argument("--document", choices=DOCUMENTS, default="telemetry",
                   help="the message's shape: telemetry (readings padded with whitespace) or "
                        "notes (40 readings, a free-text note to --size, site and firmware "
                        "strings) (default telemetry)")
    p.add_argument("--duration", type=float, default=10.0,
                   help="seconds of steady state once every client has settled (default 10)")
    p.add_argument("--warmup", type=float, default=0.0,
                   help="seconds after every client settled before steady state starts; "
                        "recorded with the ramp (default 0)")
    p.add_argument("--ramp", type=float, default=1000.0,
                   help="cap on new connections per second, all processes (default 1000)")
    p.add_argument("--procs", type=int, default=0,
                   help="worker processes (default: one per core, more if the file limit needs)")
    p.add_argument("--source-addrs", default=None, metavar="A-B",
                   help="bind round-robin to these source addresses, e.g. 127.0.0.1-127.0.0.16")
    p.add_argument("--cafile", default=None, help="CA certificate to verify the server with")
    p.add_argument("--insecure", action="store_true", help="do not verify the server certificate")
    p.add_argument("--cert", default=None, metavar="FILE",
                   help="client certificate (PEM) for servers that require one (mutual TLS)")
    p.add_argument("--key", default=None, metavar="FILE", help="the --cert's private key (PEM)")
    p.add_argument("--ping-sample", type=int, default=0, metavar="K",
                   help="K connections ping every second to measure round-trip time")
    p.add_argument("--json", dest="json_path", default=None, metavar="PATH",
                   help="also write the report as JSON to PATH ('-' for stdout)")
    p.add_argument("--max-failures", type=int, default=0,
                   help="exit non-zero when failed + dropped connections exceed this (default 0)")
    p.add_argument("--handshake-timeout", type=float, default=10.0,
                   help="seconds for connect + TLS + upgrade per connection (default 10)")
    p.add_argument("--close-timeout", type=float, default=3.0,
                   help="seconds to wait for close replies at the end (default 3)")
    p.add_argument("--inflight", type=int, default=500,
                   help="handshakes in progress per process (default 500)")
    p.add_argument("--html", default=None, metavar="FILE",
                   help="also write a self-contained HTML report with charts to FILE "
                        "(needs matplotlib: pip install -e '.[report]')")
    p.add_argument("--quiet", action="store_true", help="no live progress")
    p.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    return p


def config_from_args(args: argparse.Namespace) -> BenchConfig:
    # Every flag named as its BenchConfig field (as webscale.cli does); only --source-addrs
    # needs parsing into its field's type.
    names = {f.name for f in fields(BenchConfig) if f.init}
    values = {k: v for k, v in vars(args).items() if k in names}
    values["source_addrs"] = parse_source_addrs(args.source_addrs) if args.source_addrs else ()
    return BenchConfig(**values)


class Runner:
    def __init__(self, config: BenchConfig, plans: list[WorkerPlan], quiet: bool) -> None:
        self.config = config
        self.plans = plans
        self.progress: dict[int, dict[str, Any]] = {}
        self.finals: dict[int, dict[str, Any]] = {}
        self.printer = None if quiet else ProgressPrinter(sys.stderr, config.clients)
        self.written_rate = RateWindow()
        self.stop_signals = 0

    def _on_signal(self, signum: int, frame: FrameType | None) -> None:
        self.stop_signals += 1  # only a flag: the main loop acts on it

    def _totals(self) -> dict[str, int]:
        keys = ("attempted", "established", "failed", "dropped", "open", "messages_written")
        return {key: sum(p[key] for p in self.progress.values()) for key in keys}

    def run(self) -> dict[str, Any]:
        config = self.config
        ctx = multiprocessing.get_context("fork")
        pipes: dict[Connection, int] = {}
        processes = []
        previous = {sig: signal.signal(sig, self._on_signal) for sig in (signal.SIGINT,
                                                                         signal.SIGTERM)}
        started_at = time.monotonic()
        self.timeline = Timeline(started_at)
        try:
            for plan in self.plans:
                parent_end, child_end = ctx.Pipe(duplex=True)
                process = ctx.Process(target=run_worker, args=(plan, config, child_end),
                                      name=f"bench-worker-{plan.index}", daemon=True)
                process.start()
                child_end.close()
                pipes[parent_end] = plan.index
                processes.append(process)
            paced_ramp_end = started_at + config.clients / config.ramp
            settled_count = 0
            last_settled_at = started_at
            steady_started_at: float | None = None
            steady_written_start = 0
            stopped_at: float | None = None
            steady_written: int | None = None
            final_deadline = 0.0
            warmup_until = 0.0
            phase = "ramp"
            live = dict(pipes)
            while live:
                for ready in wait(list(live), timeout=0.1):
                    pipe = cast(Connection, ready)
                    try:
                        message: dict[str, Any] = pipe.recv()
                    except (EOFError, OSError):
                        del live[pipe]
                        continue
                    index = message["worker"]
                    if message["type"] == "final":
                        self.finals[index] = message
                        del live[pipe]
                    else:
                        self.progress[index] = message
                        self.written_rate.add(index, message["at"], message["messages_written"])
                        self.timeline.add(index, message)
                now = time.monotonic()
                if self.stop_signals >= 2:
                    break
                totals = self._totals() if self.progress else None
                if phase == "ramp":
                    settled = (len(self.progress) == len(self.plans)
                               and all(p["settled"] for p in self.progress.values()))
                    if totals and totals["established"] + totals["failed"] != settled_count:
                        settled_count = totals["established"] + totals["failed"]
                        last_settled_at = now
                    stalled = (now >= paced_ramp_end and now - last_settled_at
                               >= config.handshake_timeout + SETTLE_GRACE)
                    if settled or stalled or self.stop_signals:
                        phase = "warmup"
                        warmup_until = now + config.warmup
                if phase == "warmup":
                    if now >= warmup_until or self.stop_signals:
                        phase = "steady"
                        steady_started_at = now
                        steady_written_start = totals["messages_written"] if totals else 0
                        for pipe in live:
                            try:
                                pipe.send("steady")
                            except OSError:
                                pass
                if phase == "steady":
                    assert steady_started_at is not None
                    nothing_open = totals is not None and totals["open"] == 0
                    if (now - steady_started_at >= config.duration or nothing_open
                            or self.stop_signals):
                        phase = "stop"
                        stopped_at = now
                        if totals:
                            steady_written = totals["messages_written"] - steady_written_start
                        final_deadline = now + config.close_timeout + FINAL_GRACE
                        for pipe in live:
                            try:
                                pipe.send("stop")
                            except OSError:
                                pass
                if phase == "stop" and now >= final_deadline:
                    break
                if self.printer is not None and totals is not None:
                    self.printer.update(now - started_at, totals, phase,
                                        self.written_rate.rate())
        finally:
            for process in processes:
                if process.is_alive() and process.pid is not None:
                    process.terminate()
                process.join(5)
            for sig, handler in previous.items():
                signal.signal(sig, handler)
            if self.printer is not None:
                self.printer.finish()
        ended_at = time.monotonic()
        return self._report(started_at, steady_started_at, stopped_at or ended_at, ended_at,
                            steady_written)

    def _report(self, started_at: float, steady_started_at: float | None, stopped_at: float,
                ended_at: float, steady_written: int | None) -> dict[str, Any]:
        snapshots = list(self.finals.values())
        merged = merge_snapshots(snapshots) if snapshots else merge_snapshots([])
        for plan in self.plans:  # a worker that died took its clients' outcomes with it
            if plan.index not in self.finals:
                merged["failed"] += plan.clients
                reasons = merged["failure_reasons"]
                lost = reasons.get("worker process lost", 0)
                reasons["worker process lost"] = lost + plan.clients
        children = resource.getrusage(resource.RUSAGE_CHILDREN)
        own = resource.getrusage(resource.RUSAGE_SELF)
        cpu = {"user_s": children.ru_utime + own.ru_utime,
               "system_s": children.ru_stime + own.ru_stime}
        report = build_report(self.config, len(self.plans), merged, started_at,
                              steady_started_at, stopped_at, ended_at, cpu,
                              self.stop_signals > 0, steady_written)
        report["timeline"] = self.timeline.series(ended_at - started_at)
        if steady_started_at is not None:
            report["timing"]["steady_from_s"] = steady_started_at - started_at
            report["timing"]["steady_until_s"] = stopped_at - started_at
        return report


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.WARNING,
                        format="%(asctime)s %(processName)s %(name)s %(levelname)s %(message)s")
    try:
        config = config_from_args(args)
        address = resolve(config)
        if config.tls:  # what every worker builds: a missing file fails here, once
            try:
                client_tls_context(config)
            except (OSError, ssl.SSLError) as exc:
                files = [f"--{name} {value}" for name, value in (
                    ("cafile", config.cafile), ("cert", config.cert), ("key", config.key)) if value]
                raise ConfigError(f"{', '.join(files)}: {exc}") from None
        if args.html:
            pyplot()  # a missing matplotlib fails now, not after the run
        note = source_binding_note() if config.source_addrs else None
        if note:
            logger.warning("%s", note)
    except ConfigError as exc:
        print(f"bench_client: {exc}", file=sys.stderr)
        return 2
    file_limit = raise_file_limit()
    plans = split_plans(config, worker_count(config, file_limit), address)
    report = Runner(config, plans, args.quiet).run()
    print(render_table(report))
    if config.json_path:
        write_json(report, config.json_path)
    if args.html:
        command = shlex.join(["bench_client", *(sys.argv[1:] if argv is None else argv)])
        with open(args.html, "w", encoding="utf-8") as handle:
            handle.write(bench_report_page(report, command, table_rows(report)))
    return 0 if report["ok"] else 1
