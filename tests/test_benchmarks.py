"""The benchmark scripts still run and report what docs/PERFORMANCE.md quotes from them.

Smoke runs at tiny sizes against real servers on 127.0.0.1: no numbers are judged for speed
(benchmarks print numbers; tests do not time things), only that each script finishes, exits 0
and writes the fields the docs read, with values that are consistent with each other.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from helpers import UNIT

REPO = Path(__file__).resolve().parent.parent


def run_script(tmp_path: Path, script: str, *args: str, timeout: float = 120) -> dict[str, Any]:
    out = tmp_path / "out.json"
    own, server = (args[:args.index("--")], args[args.index("--"):]) if "--" in args \
        else (args, ())
    result = subprocess.run(
        [sys.executable, f"benchmarks/{script}", *own, "--json", str(out), *server],
        cwd=REPO, env=dict(os.environ, PYTHONPATH=str(REPO)), capture_output=True, text=True,
        timeout=timeout * UNIT, check=False)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return json.loads(out.read_text())  # type: ignore[no-any-return]


def test_decode_cost_reports_every_floor(tmp_path: Path) -> None:
    rows = run_script(tmp_path, "decode_cost.py", "--number", "40", "--repeat", "1")
    ratios = rows.pop("ratios")
    assert all(value > 0 for value in rows.values())
    for prefix in ("", "notes: "):
        loads = rows[f"{prefix}orjson.loads"]
        decode = rows[f"{prefix}decode_telemetry (orjson + dataclasses, type-checked)"]
        generic = rows[f"{prefix}build_decoder(Telemetry) (generated, same checks)"]
        assert decode > loads and generic > loads  # the decodes include the parse
    assert set(ratios) == {"template", "notes"} and all(r > 0 for r in ratios.values())
    assert any(name.startswith("wsproto frame parse, C unmask") for name in rows)
    assert rows["frame path: webscale/frames.py (as the server runs)"] > 0
    assert rows["frame path: wsproto FrameProtocol, C unmask"] > 0


def test_handoff_cost_measures_every_pool(tmp_path: Path) -> None:
    rows = run_script(tmp_path, "handoff_cost.py", "--tasks", "50", "--rate", "2000")
    assert set(rows) == {"inline (no pool)", "ThreadPoolExecutor, 1 idle thread",
                         "ThreadPoolExecutor, 2 idle threads",
                         "webscale WorkerPool, 2 idle threads"}
    assert all(us > 0 for us in rows.values())


def test_handshake_cost_measures_both_sides(tmp_path: Path) -> None:
    rows = run_script(tmp_path, "handshake_cost.py", "--rounds", "3")
    for setting in ("2_tickets", "0_tickets"):
        assert rows[setting]["client_us"] > 0 and rows[setting]["server_us"] > 0


def test_server_cost_measures_a_loaded_window(tmp_path: Path) -> None:
    r = run_script(tmp_path, "server_cost.py", "--clients", "40", "--window", "2",
                   "--settle", "1", "--ping-sample", "5")
    assert "error" not in r
    assert r["decoded_msgs_per_s"] > 0 and r["server_cpu_us_per_msg"] > 0
    assert r["bench"]["connections"]["established"] == 40
    assert r["bench"]["ping_rtt_s"]["count"] > 0  # steady state, after the warm-up
    assert sum(r["loop_iteration_s"]["counts"]) == r["loop_iteration_s"]["count"] > 0


def test_hold_idle_counts_every_worker_and_connection(tmp_path: Path) -> None:
    r = run_script(tmp_path, "hold_idle.py", "--clients", "60", "--workers", "2",
                   "--bench-procs", "1", "--source-addrs", "127.0.0.1-127.0.0.2",
                   "--ramp", "300", "--hold", "1")
    assert r["bench_exit"] == 0
    conns = r["bench"]["connections"]
    assert conns["established"] == 60 and conns["failed"] == conns["dropped"] == 0
    assert sorted(r["open_per_worker_peak"]) == ["0", "1"]
    assert sum(r["open_per_worker_peak"].values()) == 60
    assert r["server_rss_loaded_mb"] >= r["server_rss_idle_mb"] > 0
    assert "server_rss_per_conn_kb" in r
    # Both sides' CPU over the connect window: together no more than the cores can supply in
    # it (plus one clock tick per process of rounding).
    cpu = r["server_cpu_s_in_window"] + r["client_cpu_s_in_window"]
    assert 0 < cpu <= (os.cpu_count() or 1) * r["connect_window_s"] + 0.1
    assert r["client_cpu_s_in_window"] > 0


def test_peer_table_runs_every_row_and_writes_its_provenance(tmp_path: Path) -> None:
    markdown = tmp_path / "table.md"
    r = run_script(tmp_path, "peer_table.py", "--servers", "picows", "--document", "notes",
                   "--cpu-clients", "20", "--low-clients", "10", "--idle-clients", "20",
                   "--levels", "20", "--window", "1.5", "--low-window", "1.5",
                   "--idle-window", "1.5", "--settle", "0.5", "--ping-sample", "5",
                   "--repeats", "1", "--markdown", str(markdown))
    loaded = r["loaded"]["notes"]["picows"][0]
    assert "error" not in loaded, loaded
    assert loaded["document"] == "notes" and loaded["decoded_msgs_per_s"] > 0
    assert loaded["bench"]["connections"]["established"] == 20
    assert r["idle"]["picows"][0]["rate"] == 0
    assert r["levels"]["picows"][0]["verdicts"] == [True]
    text = markdown.read_text()
    assert "`python benchmarks/peer_table.py --servers picows --document notes" in text
    assert r["machine"]["versions"]["picows"] in text
    for row in ("server CPU per message, 20 clients (notes)", "server CPU at idle",
                "most clients kept up at 1 msg/s (notes) | >= 20", "RSS per idle TLS connection",
                "ping RTT p99 at 20 clients (notes)"):
        assert row in text, row


def _point(server: str, cpu: float | None, **bench: Any) -> dict[str, Any]:
    """A run_point result as peer_table reads it: one run that kept up, unless changed."""
    report: dict[str, Any] = {
        "connections": {"established": 100, "failed": 0, "dropped": 0},
        "messages": {"scheduled": 1000, "written": 1000},
        "pings": {"sent": 50, "answered": 50, "lost": 0},
        "ping_rtt_s": {"p50": 0.001, "p99": 0.002}}
    report.update(bench)
    point = {"server": server, "clients": 100, "offered_msgs_per_s": 100.0,
             "decoded_msgs_per_s": 100.0, "in_flight_end": 0, "server_cpu_us_per_msg": cpu,
             "server_cpu_percent": 1.5, "rss_per_conn_kb": 20.0, "bench": report}
    if cpu is None:
        point["error"] = "clients did not all connect"
    return point


def test_peer_table_judges_medians_ratios_and_kept_up() -> None:
    sys.path.insert(0, str(REPO / "benchmarks"))
    import peer_table

    assert peer_table.kept_up(_point("webscale", 100.0))
    assert not peer_table.kept_up(_point("webscale", 100.0, pings={"lost": 1}))
    assert not peer_table.kept_up(_point("webscale", 100.0,
                                         messages={"scheduled": 1000, "written": 999}))
    assert not peer_table.kept_up(_point("webscale", 100.0) | {"decoded_msgs_per_s": 98.9})

    args = peer_table.parse_args(["--servers", "webscale", "picows", "--document", "telemetry",
                                  "--cpu-clients", "100", "--low-clients", "100",
                                  "--idle-clients", "100"])
    runs = {"webscale": [_point("webscale", c) for c in (90.0, 300.0, 100.0)],
            "picows": [_point("picows", c) for c in (50.0, None, None)]}
    results = {"date": "2026-12-03 00:00 UTC", "command": "python benchmarks/peer_table.py X",
               "machine": {"cpus": 2, "cpu": "cpu", "memory_gib": 24, "kernel": "Linux",
                           "python": "3.11", "openssl": "OpenSSL", "versions": {}},
               "args": vars(args), "loaded": {"telemetry": runs}, "low": {"telemetry": runs},
               "idle": runs,
               "levels": {"webscale": [{"clients": 100, "kept_up": True, "verdicts": [True]},
                                       {"clients": 200, "kept_up": False, "verdicts": [False]}],
                          "picows": [{"clients": 100, "kept_up": True, "verdicts": [True]},
                                     {"clients": 200, "kept_up": True, "verdicts": [True]}]}}
    text = peer_table.render(results)
    # webscale: the median of 90, 300, 100; picows: 2 of 3 runs failed, so no median
    assert "| server CPU per message, 100 clients (telemetry) | 100 us | - [1] | - |" in text
    assert "[1] server CPU per message, 100 clients (telemetry), picows: 2 of 3 runs failed: " \
           "clients did not all connect" in text
    assert "| most clients kept up at 1 msg/s (telemetry) | 100 | >= 200 | 0.50x |" in text
    assert "| ping RTT p99 at 100 clients (telemetry) | 2.0 ms | - [" in text
    assert "with `python benchmarks/peer_table.py X`" in text


def test_server_cost_rate_pairs_each_workers_count_with_its_own_uptime() -> None:
    sys.path.insert(0, str(REPO / "benchmarks"))
    import server_cost

    def worker(uptime: float, decoded: float) -> dict[str, float]:
        return {"uptime": uptime, "messages_decoded": decoded}

    # Worker 1's snapshot is 0.8 s older than worker 0's live numbers at both ends; each
    # decodes 100/s. Summing raw counts over our own 10 s would give 192/s; pairing each
    # count with its own uptime gives the exact 200/s.
    start = {"0": worker(50.0, 5000), "1": worker(49.2, 4920)}
    end = {"0": worker(60.0, 6000), "1": worker(59.2, 5920)}
    assert server_cost.window_rate(start, end, "messages_decoded") == pytest.approx(200)
    assert server_cost.covers_window(start, end, 10.0)
    stale = {"0": worker(60.0, 6000), "1": worker(50.1, 5010)}  # worker 1 stopped publishing
    assert not server_cost.covers_window(start, stale, 10.0)


def test_server_cost_counts_every_worker_exactly(tmp_path: Path) -> None:
    r = run_script(tmp_path, "server_cost.py", "--clients", "60", "--window", "3",
                   "--settle", "1", "--ping-sample", "0", "--", "--workers", "2")
    assert "error" not in r, r
    assert r["server_processes"] == 2
    assert 0.95 * 60 <= r["decoded_msgs_per_s"] <= 1.05 * 60


def test_idle_flood_keeps_clients_working_and_refusals_cheap(tmp_path: Path) -> None:
    r = run_script(tmp_path, "idle_flood.py", "--max-connections", "50", "--idle", "120",
                   "--rounds", "3", "--refusals", "30")
    lockout = r["lockout"]
    assert lockout["failures"] == 0
    assert lockout["healthz"]["count"] == lockout["websocket_connect_and_echo"]["count"] == 3
    # The share of 50 is 50 (at least 64, capped by --max-connections): 70 pushed out.
    assert lockout["rejected_by_reason"]["handshake_share"] >= 120 - 50
    assert lockout["handshaking_at_end"] <= 50
    assert r["refusal_flood"]["counted"] == 30
