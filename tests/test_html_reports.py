"""The HTML load reports open in a real browser: every chart is there and something is drawn.

Each report (bench_client --html from a real run against the asyncio twin; peer_table and
scripts/pudding from recorded results) is loaded from a file:// URL by headless Chromium:
`--dump-dom` must show every chart's element id, and a `--screenshot` must not be one uniform
colour. The file must be self-contained: no script, stylesheet or image fetched from anywhere.
Without Chromium (Debian's `chromium` package) or matplotlib (the `report` extra) the tests skip
locally and fail when CI=true, where .ci/run installs both.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from helpers import TWIN, UNIT, start_server

REPO = Path(__file__).resolve().parent.parent
IN_CI = os.environ.get("CI") == "true"


def _missing(what: str) -> None:
    if IN_CI:
        pytest.fail(f"{what} is missing, and CI=true: .ci/run installs it")
    pytest.skip(f"{what} is not installed")


@pytest.fixture(scope="module")
def chromium() -> str:
    path = shutil.which("chromium") or shutil.which("chromium-browser")
    if path is None:
        _missing("chromium (Debian package)")
    assert path is not None
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        _missing("matplotlib (pip install -e '.[report]')")
    return path


def open_in_chromium(chromium: str, page: Path, tmp_path: Path) -> tuple[str, Path]:
    """The DOM after load, and a screenshot of the page."""
    common = [chromium, "--headless", "--no-sandbox", "--disable-gpu",
              "--disable-background-networking", "--disable-extensions", "--no-first-run",
              "--disable-dev-shm-usage", "--hide-scrollbars", "--window-size=1200,1600",
              f"--user-data-dir={tmp_path / 'profile'}"]
    url = page.resolve().as_uri()
    dom = subprocess.run([*common, "--dump-dom", url], capture_output=True, text=True,
                         timeout=90 * UNIT, check=True).stdout
    shot = tmp_path / "page.png"
    subprocess.run([*common, f"--screenshot={shot}", url], capture_output=True, text=True,
                   timeout=90 * UNIT, check=True)
    assert shot.exists()
    return dom, shot


def assert_drawn(shot: Path) -> None:
    from PIL import Image  # matplotlib's own dependency

    with Image.open(shot) as image:
        rgb = image.convert("RGB")
        assert any(low != high for low, high in rgb.getextrema()), "one uniform colour"
        colours = rgb.getcolors(maxcolors=1 << 20)
        assert colours is None or len(colours) > 20  # text, lines and bars, not a blank page


def assert_self_contained(text: str) -> None:
    assert "<script" not in text and "<link" not in text and "<img" not in text
    assert not re.search(r"""(src|href)=["'](https?:)?//""", text)


def test_bench_client_html_report(chromium: str, certs: Path, tmp_path: Path) -> None:
    server = start_server([], certs=certs, tmp_path=tmp_path, command=TWIN)
    page = tmp_path / "report.html"
    try:
        argv = ["--url", server.url, "--cafile", str(server.cafile), "--clients", "20",
                "--rate", "2", "--duration", "2", "--ping-sample", "5", "--procs", "1",
                "--quiet", "--html", str(page)]
        result = subprocess.run([sys.executable, "-m", "bench_client", *argv], cwd=REPO,
                                env=dict(os.environ, PYTHONPATH=str(REPO)),
                                capture_output=True, text=True, timeout=60 * UNIT, check=False)
    finally:
        server.stop()
    assert result.returncode == 0, result.stdout + result.stderr
    text = page.read_text()
    assert_self_contained(text)
    dom, shot = open_in_chromium(chromium, page, tmp_path)
    for chart in ("chart-connections", "chart-messages", "chart-latency", "chart-failures"):
        assert f'id="{chart}"' in dom, chart
    assert dom.count("<svg") >= 4
    assert "bench_client --url " + server.url in dom  # the exact command, at the top
    assert "connections established" in dom and "20 / 20" in dom  # the summary table
    assert_drawn(shot)


def _peer_point(server: str, cpu: float) -> dict[str, Any]:
    return {"server": server, "clients": 100, "offered_msgs_per_s": 100.0,
            "decoded_msgs_per_s": 100.0, "in_flight_end": 0, "server_cpu_us_per_msg": cpu,
            "server_cpu_percent": cpu / 100, "rss_per_conn_kb": cpu / 10,
            "bench": {"connections": {"established": 100, "failed": 0, "dropped": 0},
                      "messages": {"scheduled": 10, "written": 10},
                      "pings": {"lost": 0}, "ping_rtt_s": {"p50": 0.001, "p99": cpu / 1e5}}}


def test_peer_table_html_draws_a_chart_per_row(chromium: str, tmp_path: Path) -> None:
    sys.path.insert(0, str(REPO / "benchmarks"))
    import peer_table

    args = peer_table.parse_args(["--cpu-clients", "100", "--low-clients", "50",
                                  "--idle-clients", "100", "--document", "telemetry"])
    servers = args.servers
    runs = {s: [_peer_point(s, 100.0 + 50 * i)] for i, s in enumerate(servers)}
    results = {"date": "2026-12-03 00:00 UTC", "command": "python benchmarks/peer_table.py X",
               "machine": {"cpus": 2, "cpu": "cpu", "memory_gib": 24, "kernel": "Linux",
                           "python": "3.11", "openssl": "OpenSSL", "versions": {}},
               "args": vars(args) | {"repeats": 1}, "loaded": {"telemetry": runs},
               "low": {"telemetry": runs}, "idle": runs,
               "levels": {s: [{"clients": 100, "kept_up": True, "verdicts": [True]}]
                          for s in servers}}
    page = tmp_path / "peers.html"
    page.write_text(peer_table.render_html(results))
    assert_self_contained(page.read_text())
    dom, shot = open_in_chromium(chromium, page, tmp_path)
    names = [name for name, _, _ in peer_table.table_rows(results, results["args"])]
    assert len(set(names)) == 6  # CPU at 100 and at 50, idle, kept up, RSS, ping
    for name in names:
        assert f'id="chart-{peer_table_slug(name)}"' in dom, name
    for server in servers:  # the servers it ran; TITLES also names optional kinds
        assert peer_table.TITLES[server] in dom
    assert_drawn(shot)


def peer_table_slug(name: str) -> str:
    from bench_client.html_report import slug

    return slug(name)


def test_pudding_html_from_a_recorded_run(chromium: str, tmp_path: Path) -> None:
    def result(server: str, scale: float) -> dict[str, Any]:
        return {"server": server, "startup_s": 0.1 * scale, "deps_bytes": 2**20 * scale,
                "deps": ["orjson"], "deps_with_optional_bytes": 2**21, "code_bytes": 4096,
                "peak_rss_kb": 30_000 * scale, "cpu_us_per_message": 300 * scale,
                "tracemalloc_peak_bytes": 8 * 2**20 * scale, "max_clients": 4000,
                "search": [{"clients": 4000, "ok": True, "cpu_us_per_message": 200 * scale}]}

    recorded = tmp_path / "pudding.json"
    recorded.write_text(json.dumps({
        "machine": "2 cores (test)", "command": "scripts/pudding --json x.json",
        "date": "2026-12-03 00:00 UTC",
        "args": {"memory_seconds": 15.0, "search_seconds": 8.0, "start_clients": 500,
                 "max_clients": 4000},
        "results": [result("webscale", 1.0), result("twin", 1.5), result("picows", 0.5)]}))
    page = tmp_path / "pudding.html"
    out = subprocess.run([sys.executable, "scripts/pudding", "--render", str(recorded),
                          "--html", str(page)], cwd=REPO, capture_output=True, text=True,
                         timeout=60 * UNIT, check=False)
    assert out.returncode == 0, out.stdout + out.stderr
    assert "| start-up to first accepted connection (Rust: compile time) | 100 ms |" \
        in out.stdout
    assert_self_contained(page.read_text())
    dom, shot = open_in_chromium(chromium, page, tmp_path)
    for chart in ("chart-start-up-to-first-accepted-connection",
                  "chart-installed-dependency-closure", "chart-tracemalloc-peak-same-load",
                  "chart-largest-client-count-at-1-msg-s",
                  "chart-server-cpu-per-message-100-clients"):
        assert f'id="{chart}"' in dom, chart
    assert "picows twin (picows + uvloop)" in dom
    assert "scripts/pudding --json x.json" in dom
    assert_drawn(shot)
