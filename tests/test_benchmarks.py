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

from helpers import UNIT

REPO = Path(__file__).resolve().parent.parent


def run_script(tmp_path: Path, script: str, *args: str, timeout: float = 120) -> dict[str, Any]:
    out = tmp_path / "out.json"
    result = subprocess.run(
        [sys.executable, f"benchmarks/{script}", *args, "--json", str(out)],
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
