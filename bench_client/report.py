"""Live progress while the run goes, and the final report (a table for people, JSON for tools)."""

from __future__ import annotations

import json
import sys
from collections import deque
from typing import Any, TextIO

from bench_client.config import BenchConfig
from bench_client.stats import RELATIVE_ERROR, LatencyHistogram

HISTOGRAM_NOTE = (
    "percentiles come from fixed log-linear histograms merged across processes: exact below "
    f"128 us, within {RELATIVE_ERROR:.2%} above; max is exact"
)


class RateWindow:
    """Messages per second over the last `window` seconds, from the workers' own counts.

    Each worker reports its count with the time it took it, once a second, at its own moment;
    adding up raw totals between two screen updates therefore jumped between 0 and many times
    the real rate (a second's worth of every worker's sends lands in one 0.1 s update). Here
    each worker's rate is its own count difference over its own time difference across the
    window, and the rates add up."""

    def __init__(self, window: float = 5.0) -> None:
        self.window = window
        self._samples: dict[int, deque[tuple[float, int]]] = {}

    def add(self, worker: int, at: float, count: int) -> None:
        samples = self._samples.setdefault(worker, deque())
        samples.append((at, count))
        while len(samples) > 2 and at - samples[1][0] >= self.window:
            samples.popleft()

    def rate(self) -> float:
        total = 0.0
        for samples in self._samples.values():
            (first_at, first), (last_at, last) = samples[0], samples[-1]
            if last_at > first_at:
                total += (last - first) / (last_at - first_at)
        return total


class ProgressPrinter:
    """One updating line on a terminal; a plain line every `every` seconds otherwise."""

    def __init__(self, stream: TextIO, clients: int, every: float = 2.0) -> None:
        self.stream = stream
        self.clients = clients
        self.tty = stream.isatty()
        self.every = every
        self._last_printed = -every

    def update(self, elapsed: float, totals: dict[str, int], phase: str, rate: float) -> None:
        """`rate`: messages written per second, smoothed (see RateWindow)."""
        if not self.tty and elapsed - self._last_printed < self.every:
            return
        self._last_printed = elapsed
        line = (
            f"[{elapsed:7.1f}s] {phase:<8} connections {totals['open']}/{self.clients} open, "
            f"{totals['established']} established, {totals['failed']} failed, "
            f"{totals['dropped']} dropped | {rate:9.0f} msg/s, {totals['messages_written']} written"
        )
        if self.tty:
            self.stream.write("\r\x1b[2K" + line)
        else:
            self.stream.write(line + "\n")
        self.stream.flush()

    def finish(self) -> None:
        if self.tty:
            self.stream.write("\n")
            self.stream.flush()


def build_report(
    config: BenchConfig,
    workers: int,
    merged: dict[str, Any],
    started_at: float,
    steady_started_at: float | None,
    stopped_at: float,
    ended_at: float,
    cpu: dict[str, float],
    interrupted: bool,
    steady_written: int | None,
) -> dict[str, Any]:
    lateness: LatencyHistogram = merged["lateness"]
    ping_rtt: LatencyHistogram = merged["ping_rtt"]
    established_all = None
    if merged["established"] == config.clients and merged["last_established_at"] is not None:
        established_all = merged["last_established_at"] - started_at
    steady = stopped_at - steady_started_at if steady_started_at is not None else 0.0
    written = merged["messages_written"]
    failures = merged["failed"] + merged["dropped"]
    cpu_total = cpu["user_s"] + cpu["system_s"]
    return {
        "config": {
            "url": config.url,
            "clients": config.clients,
            "rate": config.rate,
            "size": config.size,
            "document": config.document,
            "duration": config.duration,
            "warmup": config.warmup,
            "ramp": config.ramp,
            "procs": workers,
            "source_addrs": len(config.source_addrs),
            "ping_sample": config.ping_sample,
            "client_cert": config.cert is not None,
            "max_failures": config.max_failures,
        },
        "connections": {
            "target": config.clients,
            "attempted": merged["attempted"],
            "established": merged["established"],
            "failed": merged["failed"],
            "dropped": merged["dropped"],
            "failed_by_reason": merged["failure_reasons"],
            "time_to_establish_all_s": established_all,
            "closed_clean": merged["closed_clean"],
            "closed_unanswered": merged["closed_unanswered"],
        },
        "messages": {
            "scheduled": merged["messages_scheduled"],
            "written": written,
            "received": merged["messages_received"],
            "bytes_written": merged["bytes_written"],
            # from the workers' progress reports at the start and end of steady state
            "written_per_s_steady": steady_written / steady
            if steady_written is not None and steady > 0 else None,
        },
        "pings": {
            "sent": merged["pings_sent"],
            "answered": merged["pongs_received"],
            # given up on after 8 newer pings, or unanswered when the connection ended; each
            # is in the RTT percentiles with the time it waited (a lower bound)
            "lost": merged["pings_lost"],
        },
        "send_lateness_s": lateness.summary(),  # steady state only
        "send_lateness_ramp_s": merged["lateness_ramp"].summary(),
        "ping_rtt_ramp_s": merged["ping_rtt_ramp"].summary(),
        "ping_rtt_s": ping_rtt.summary(),
        "cpu": {
            "user_s": cpu["user_s"],
            "system_s": cpu["system_s"],
            "us_per_message": cpu_total / written * 1e6 if written else None,
        },
        "timing": {
            "elapsed_s": ended_at - started_at,
            "steady_state_s": steady,
        },
        "percentiles": HISTOGRAM_NOTE,
        "failures": failures,
        "interrupted": interrupted,
        "ok": failures <= config.max_failures and not interrupted,
    }


def _ms(value: float | None) -> str:
    return "-" if value is None else f"{value * 1000:.2f} ms"


def render_table(report: dict[str, Any]) -> str:
    rows = table_rows(report)
    width = max(len(name) for name, _ in rows)
    return "\n".join(f"{name:<{width}}  {value}" for name, value in rows)


def table_rows(report: dict[str, Any]) -> list[tuple[str, str]]:
    """The summary as (name, value) rows: the terminal table and the HTML report's."""
    conns = report["connections"]
    msgs = report["messages"]
    late = report["send_lateness_s"]
    ramp = report["send_lateness_ramp_s"]
    rtt = report["ping_rtt_s"]
    rtt_ramp = report["ping_rtt_ramp_s"]
    during = "during the ramp" + (" and warm-up" if report["config"].get("warmup") else "")
    cpu = report["cpu"]
    cfg = report["config"]
    rows: list[tuple[str, str]] = [
        ("target", (f"{cfg['url']}  clients={cfg['clients']} rate={cfg['rate']}/s "
                    f"size={cfg['size']} document={cfg['document']} procs={cfg['procs']}")),
        ("connections attempted", str(conns["attempted"])),
        ("connections established", f"{conns['established']} / {conns['target']}"),
        ("connections failed", str(conns["failed"])),
        ("connections dropped", str(conns["dropped"])),
    ]
    for reason, count in conns["failed_by_reason"].items():
        rows.append(("  " + reason, str(count)))
    took = conns["time_to_establish_all_s"]
    rows += [
        ("time to establish all", "-" if took is None else f"{took:.2f} s"),
        ("closed cleanly (1000 answered)", str(conns["closed_clean"])),
        ("close not answered in time", str(conns["closed_unanswered"])),
        ("messages scheduled", str(msgs["scheduled"])),
        ("messages written", str(msgs["written"])),
        ("messages/s in steady state", "-" if msgs["written_per_s_steady"] is None
         else f"{msgs['written_per_s_steady']:.0f}"),
    ]
    if cfg["rate"]:  # an idle run (--rate 0) sends nothing to be late with
        rows += [
            ("send lateness p50 / p99 / max",
             f"{_ms(late['p50'])} / {_ms(late['p99'])} / {_ms(late['max'])}  (steady state)"),
            (f"  {during}", f"{_ms(ramp['p50'])} / {_ms(ramp['p99'])} / {_ms(ramp['max'])}"),
        ]
    if cfg["ping_sample"]:  # no empty RTT rows when no pings were asked for
        pings = report["pings"]
        rows += [
            ("pings sent / answered / lost",
             f"{pings['sent']} / {pings['answered']} / {pings['lost']}"),
            (f"ping RTT p50 / p99 / max (n={rtt['count']})",
             f"{_ms(rtt['p50'])} / {_ms(rtt['p99'])} / {_ms(rtt['max'])}  (steady state)"),
            (f"  {during} (n={rtt_ramp['count']})",
             f"{_ms(rtt_ramp['p50'])} / {_ms(rtt_ramp['p99'])} / {_ms(rtt_ramp['max'])}"),
        ]
    rows += [
        ("client CPU user / system",
         f"{cpu['user_s']:.2f} s / {cpu['system_s']:.2f} s"
         + ("" if cpu["us_per_message"] is None else f"  ({cpu['us_per_message']:.0f} us/msg)")),
        ("steady state", f"{report['timing']['steady_state_s']:.1f} s"),
        ("result", "OK" if report["ok"] else
         f"FAILED ({report['failures']} failures > max {cfg['max_failures']})"
         if report["failures"] > cfg["max_failures"] else "INTERRUPTED"),
    ]
    return rows


def write_json(report: dict[str, Any], path: str) -> None:
    if path == "-":
        json.dump(report, sys.stdout, indent=2)
        sys.stdout.write("\n")
        return
    with open(path, "w", encoding="utf-8") as handle:
        json.dump(report, handle, indent=2)
        handle.write("\n")
