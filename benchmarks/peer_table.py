#!/usr/bin/env python3
"""The peer table: webscale, the asyncio twin and the picows twin, measured in the same run.

    python benchmarks/peer_table.py --markdown bench-results/peer_table.md   # the README's table
    python benchmarks/peer_table.py --quick        # smoke test: small counts, one run each
    python benchmarks/peer_table.py --servers webscale picows --documents notes --repeats 5
    python benchmarks/peer_table.py --render bench-results/peer_table.json --markdown t.md

This script is the one source of the README's performance table: every cell of one `--markdown`
file comes from one run of it, which writes the date, the machine and the exact command above
the table. Rows (issue 10), each measured by benchmarks/server_cost.py's run_point (server CPU
from /proc for the whole server process tree, decoded rate from the server's own counters, RSS
from /proc), with clients from bench_client on the same machine:
- server CPU per message at `--cpu-clients` (5,000) and at `--low-clients` (500) clients, 1 msg/s
  each, for each document shape in `--documents` (telemetry, notes: bench_client --document);
- ping RTT p99 in the `--cpu-clients` runs (bench_client --ping-sample: K connections ping
  every second);
- idle: `--idle-clients` (5,000) connected clients sending nothing: server CPU as a share of one
  core, and RSS per idle TLS connection ((RSS with them held - RSS before any) / clients);
- the most clients kept up at 1 msg/s (first document shape): at each of `--levels`, every client
  connected, none failed or dropped, no ping lost, every scheduled message written, and the
  server decoded >= 99% of the offered rate over the window with under 1 s of backlog in flight.

Each cell is the median of `--repeats` runs, run alternately (webscale, twin, picows, webscale,
twin, picows, ...) so that a slow minute of the machine hits every server alike; a level counts
as kept up when most of its runs kept up. Next to each peer's number is the ratio webscale /
peer (below 1x webscale needs less; for "most clients kept up", above 1x webscale holds more).
"""

from __future__ import annotations

import argparse
import json
import shlex
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from server_cost import SERVERS, machine_description, require_proc, run_point

TITLES = {"webscale": "webscale", "twin": "asyncio twin (websockets)",
          "picows": "picows twin (picows + uvloop)",
          "webscale-secure": "webscale, device certificates + --authorize hook"}
DOCUMENT_CHOICES = ("telemetry", "notes")
HIGHEST_TRIED = "kept up at the highest level tried"


# -- judging one run ---------------------------------------------------------------------------


def kept_up(point: dict) -> bool:
    """Every client connected and stayed, nothing lost, and the server decoded >= 99%."""
    bench = point.get("bench") or {}
    conns = bench.get("connections") or {}
    if "error" in point or conns.get("established") != point["clients"]:
        return False
    if conns.get("failed") or conns.get("dropped"):
        return False
    if (bench.get("pings") or {}).get("lost"):
        return False
    messages = bench.get("messages") or {}
    if messages.get("scheduled", 0) - messages.get("written", 0) > 0:
        return False  # sends that came due and never made it to the socket
    offered = point["offered_msgs_per_s"]
    return (point["decoded_msgs_per_s"] >= 0.99 * offered
            and (point.get("in_flight_end") or 0) < offered)


def ping_ms(point: dict, q: str) -> float | None:
    rtt = (point.get("bench") or {}).get("ping_rtt_s") or {}
    return round(rtt[q] * 1000, 2) if rtt.get(q) is not None else None


# -- measuring ---------------------------------------------------------------------------------


def alternate(servers: list[str], repeats: int, label: str,
              measure: Callable[[str], dict]) -> dict[str, list[dict]]:
    """`repeats` rounds of every server in turn; the runs of each server, in order. A run that
    could not even start its server is recorded as an error, and the table goes on."""
    runs: dict[str, list[dict]] = {server: [] for server in servers}
    for round_ in range(repeats):
        for server in servers:
            print(f"[{time.strftime('%H:%M:%S')}] {label}: {server}, run {round_ + 1}/{repeats}",
                  file=sys.stderr, flush=True)
            try:
                point = measure(server)
            except (Exception, SystemExit) as exc:  # recorded in the table
                point = {"server": server, "error": f"{type(exc).__name__}: {exc}"}
            runs[server].append(point)
    return runs


def measure_all(args: argparse.Namespace, results: dict[str, Any],
                save: Callable[[], None]) -> None:
    """Fill `results` row by row, calling `save` after each (a long run keeps what is done)."""
    servers, repeats = args.servers, args.repeats
    results |= {"loaded": {}, "low": {}, "idle": {}, "levels": {}}

    def loaded(clients: int, window: float, ping_sample: int, document: str) \
            -> Callable[[str], dict]:
        return lambda server: run_point(server, clients=clients, window=window,
                                        settle=args.settle, ping_sample=ping_sample,
                                        document=document)

    for document in args.documents:
        results["loaded"][document] = alternate(
            servers, repeats, f"{args.cpu_clients} clients, {document}",
            loaded(args.cpu_clients, args.window, args.ping_sample, document))
        save()
        results["low"][document] = alternate(
            servers, repeats, f"{args.low_clients} clients, {document}",
            loaded(args.low_clients, args.low_window, min(args.ping_sample, args.low_clients),
                   document))
        save()
    results["idle"] = alternate(
        servers, repeats, f"{args.idle_clients} idle clients",
        lambda server: run_point(server, clients=args.idle_clients, rate=0,
                                 window=args.idle_window, settle=args.settle, ping_sample=0))
    save()
    document = args.documents[0]
    still_up = list(servers)
    for level in args.levels:
        if not still_up:
            break
        runs = alternate(still_up, repeats, f"{level} clients kept up? ({document})",
                         loaded(level, args.window, min(args.ping_sample, level), document))
        for server, points in runs.items():
            verdicts = [kept_up(point) for point in points]
            ok = sum(verdicts) * 2 > len(verdicts)
            results["levels"].setdefault(server, []).append(
                {"clients": level, "kept_up": ok, "verdicts": verdicts, "runs": points})
            if not ok:
                still_up.remove(server)
        save()


# -- the table ---------------------------------------------------------------------------------


def median_of(points: list[dict], value: Callable[[dict], float | None]) -> tuple[float | None,
                                                                                     str]:
    """The median over the runs that produced a value, and a note when most did not (a run
    with an error, say not every client connected, gives no value for any row)."""
    if not points:
        return None, "not run (an interrupted run, rendered with --render)"
    values = [v for v in (value(p) for p in points if "error" not in p) if v is not None]
    if values and len(values) * 2 > len(points):
        return statistics.median(values), ""
    errors = sorted({p.get("error", "no value") for p in points})
    return None, f"{len(points) - len(values)} of {len(points)} runs failed: {'; '.join(errors)}"


def most_kept_up(levels: list[dict]) -> tuple[int, str]:
    best, note = 0, ""
    for level in levels:
        if not level["kept_up"]:
            break
        best = level["clients"]
    if levels and all(level["kept_up"] for level in levels):
        note = HIGHEST_TRIED
    return best, note


def table_rows(results: dict[str, Any], args: dict[str, Any]) \
        -> list[tuple[str, str, dict[str, tuple[float | None, str]]]]:
    """(row name, unit, {server: (median, note)}) for every row of the table."""
    servers = args["servers"]

    def per_server(points: dict[str, list[dict]], value: Callable[[dict], float | None]) \
            -> dict[str, tuple[float | None, str]]:
        return {s: median_of(points.get(s, []), value) for s in servers}

    def cpu_per_msg(p: dict) -> float | None:
        return p.get("server_cpu_us_per_msg")

    rows = []
    for document, runs in results["loaded"].items():
        rows.append((f"server CPU per message, {args['cpu_clients']:,} clients ({document})",
                     "us", per_server(runs, cpu_per_msg)))
    for document, runs in results["low"].items():
        rows.append((f"server CPU per message, {args['low_clients']:,} clients ({document})",
                     "us", per_server(runs, cpu_per_msg)))
    idle = results["idle"]
    rows.append((f"server CPU at idle, {args['idle_clients']:,} clients connected",
                 "% of a core", per_server(idle, lambda p: p.get("server_cpu_percent"))))
    kept = {}
    for server in servers:
        best, note = most_kept_up(results["levels"].get(server, []))
        kept[server] = (float(best), note)
    rows.append((f"most clients kept up at 1 msg/s ({args['documents'][0]})", "", kept))
    rows.append(("RSS per idle TLS connection", "KB",
                 per_server(idle, lambda p: p.get("rss_per_conn_kb"))))
    for document, runs in results["loaded"].items():
        rows.append((f"ping RTT p99 at {args['cpu_clients']:,} clients ({document})", "ms",
                     per_server(runs, lambda p: ping_ms(p, "p99"))))
    return rows


def _number(value: float | None, unit: str) -> str:
    if value is None:
        return "-"
    if unit == "":
        return f"{value:,.0f}"
    text = f"{value:,.0f}" if abs(value) >= 100 else f"{value:.1f}" if abs(value) >= 1 \
        else f"{value:.2f}"
    return f"{text} {unit}" if unit != "% of a core" else f"{text}%"


def table_cells(results: dict[str, Any]) -> tuple[list[list[str]], list[str]]:
    """The table as rows of cell texts (the first row the header), and its numbered notes."""
    args = results["args"]
    servers = args["servers"]
    peers = [s for s in servers if s != "webscale"]
    ratio_heads = [f"webscale / {s}" for s in peers] if "webscale" in servers else []
    rows = [["", *(TITLES[s] for s in servers), *ratio_heads]]
    notes: list[str] = []
    for name, unit, cells in table_rows(results, args):
        values = []
        for server in servers:
            value, note = cells[server]
            text = _number(value, unit)
            if note == HIGHEST_TRIED:
                text, note = f">= {text}", ""
            if note:
                notes.append(f"{name}, {server}: {note}")
                text += f" [{len(notes)}]"
            values.append(text)
        ratios = []
        if ratio_heads:
            mine = cells["webscale"][0]
            for peer in peers:
                theirs = cells[peer][0]
                ratios.append(f"{mine / theirs:.2f}x" if mine is not None and theirs else "-")
        rows.append([name, *values, *ratios])
    return rows, notes


def provenance(results: dict[str, Any]) -> str:
    args, machine = results["args"], results["machine"]
    versions = machine.get("versions", {})
    return (
        f"Measured {results['date']} with `{results['command']}` on {machine['cpus']} cores "
        f"({machine['cpu']}), {machine['memory_gib']} GiB, {machine['kernel']}, "
        f"Python {machine['python']}, {machine['openssl']}; websockets "
        f"{versions.get('websockets')}, picows {versions.get('picows')} on uvloop "
        f"{versions.get('uvloop')}. One server process each, default flags, every server "
        "decoding with webscale's decoder; bench_client on the same cores. Each cell is the "
        f"median of {args['repeats']} run(s), run alternately; ratios are webscale / peer.")


def render(results: dict[str, Any]) -> str:
    """The Markdown table with its provenance: date, machine, command, method."""
    rows, notes = table_cells(results)
    lines = ["| " + " | ".join(rows[0]) + " |", "|---" * len(rows[0]) + "|"]
    lines += ["| " + " | ".join(row) + " |" for row in rows[1:]]
    out = [provenance(results), "", *lines]
    if notes:
        out.append("")
        out += [f"[{i}] {note}" for i, note in enumerate(notes, 1)]
    out += ["", "Every run (each server's in the order they ran; server CPU per message in us; "
            "idle: % of a core and KB per connection; levels: kept up or not):", ""]
    out += _every_run(results)
    return "\n".join(out) + "\n"


def render_html(results: dict[str, Any]) -> str:
    """The same table and one bar chart per row, one colour per server (bench_client's
    html_report; needs matplotlib)."""
    from bench_client.html_report import comparison_page

    args = results["args"]
    servers = args["servers"]
    rows, notes = table_cells(results)
    bars = [(name, unit, [cells[s][0] for s in servers])
            for name, unit, cells in table_rows(results, args)]
    meta = [provenance(results).replace("`", ""), *(f"[{i}] {n}" for i, n in
                                                    enumerate(notes, 1))]
    return comparison_page("Peer table: webscale and its peers", results["command"], meta,
                           [TITLES[s] for s in servers], bars, rows)


def _every_run(results: dict[str, Any]) -> list[str]:
    lines = []
    for kind in ("loaded", "low"):
        for document, runs in results[kind].items():
            for server, points in runs.items():
                values = ", ".join(str(p.get("server_cpu_us_per_msg", "-")) for p in points)
                clients = points[0]["clients"] if points else "?"
                lines.append(f"- {clients} clients, {document}, {server}: {values}")
    for server, points in results["idle"].items():
        values = ", ".join(f"{p.get('server_cpu_percent', '-')}% / "
                           f"{p.get('rss_per_conn_kb', '-')} KB" for p in points)
        lines.append(f"- idle, {server}: {values}")
    for server, levels in results["levels"].items():
        values = ", ".join(f"{lvl['clients']}: "
                           + "/".join("yes" if v else "no" for v in lvl["verdicts"])
                           for lvl in levels)
        lines.append(f"- kept up, {server}: {values}")
    return lines


# -- command line ------------------------------------------------------------------------------


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--servers", nargs="+", default=["webscale", "twin", "picows"],
                   choices=sorted(SERVERS))
    p.add_argument("--document", choices=[*DOCUMENT_CHOICES, "both"], default="both",
                   help="the message shape(s) of the loaded rows (bench_client --document); "
                        "with both, levels use telemetry (default both)")
    p.add_argument("--repeats", type=int, default=3, help="alternating runs per cell (median)")
    p.add_argument("--cpu-clients", type=int, default=5000)
    p.add_argument("--low-clients", type=int, default=500)
    p.add_argument("--idle-clients", type=int, default=5000)
    p.add_argument("--levels", type=int, nargs="+", default=[2500, 5000, 7500, 10000])
    p.add_argument("--window", type=float, default=20.0, help="seconds measured, loaded runs")
    p.add_argument("--low-window", type=float, default=20.0)
    p.add_argument("--idle-window", type=float, default=20.0,
                   help="seconds measured at idle: at least one keepalive ping interval (20 s)")
    p.add_argument("--ping-sample", type=int, default=100)
    p.add_argument("--settle", type=float, default=15.0,
                   help="seconds after the last client connected before the window: the "
                        "backlog built while handshaking must drain, or it shows as latency")
    p.add_argument("--quick", action="store_true",
                   help="smoke test: 1,000 / 100 clients, 10 s windows, one run each")
    p.add_argument("--json", type=Path, default=Path("bench-results/peer_table.json"))
    p.add_argument("--markdown", type=Path, metavar="FILE",
                   help="write the table with its date, machine and command to FILE")
    p.add_argument("--html", type=Path, metavar="FILE",
                   help="write the table and a bar chart per row as one HTML file "
                        "(needs matplotlib: pip install -e '.[report]')")
    p.add_argument("--render", type=Path, metavar="JSON",
                   help="print (and --markdown) the table of an earlier run instead of measuring")
    args = p.parse_args(argv)
    args.documents = list(DOCUMENT_CHOICES) if args.document == "both" else [args.document]
    if args.quick:
        args.cpu_clients = args.idle_clients = 1000
        args.low_clients = 100
        args.levels = [500, 1000]
        args.window = args.low_window = args.idle_window = 10.0
        args.settle = 3.0
        args.repeats = 1
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.html:
        from bench_client.html_report import pyplot

        pyplot()  # a missing matplotlib fails now, not after an hour of measuring
    if args.render:
        results = json.loads(args.render.read_text())
    else:
        require_proc("benchmarks/peer_table.py")
        command = "python benchmarks/peer_table.py " + shlex.join(
            sys.argv[1:] if argv is None else argv)
        results = {"date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
                   "command": command.strip(), "machine": machine_description(),
                   "args": {k: (str(v) if isinstance(v, Path) else v)
                            for k, v in vars(args).items()}}
        args.json.parent.mkdir(parents=True, exist_ok=True)
        measure_all(args, results,
                    lambda: args.json.write_text(json.dumps(results, indent=2) + "\n"))
    text = render(results)
    print(text)
    if args.markdown:
        args.markdown.parent.mkdir(parents=True, exist_ok=True)
        args.markdown.write_text(text)
    if args.html:
        args.html.parent.mkdir(parents=True, exist_ok=True)
        args.html.write_text(render_html(results))
    if not args.render:
        print(f"JSON: {args.json}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
