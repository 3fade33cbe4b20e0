"""deploy/prometheus/prometheus.yml is a valid Prometheus config aimed at the admin listener, and
what that listener serves passes Prometheus' own linter, for one process and for --workers 2.

`promtool` comes with Debian's `prometheus` package; the tests that need it skip, saying so,
where it is not installed, and fail in CI (helpers.require_tool).
"""

from __future__ import annotations

import subprocess
from collections.abc import Callable

import pytest
from helpers import ROOT, UNIT, ServerProcess, require_tool

from webscale.config import DEFAULT_ADMIN

CONFIG = ROOT / "deploy" / "prometheus" / "prometheus.yml"


def test_the_scrape_job_targets_the_default_admin_address() -> None:
    text = CONFIG.read_text()
    assert f'targets: ["{DEFAULT_ADMIN}"]' in text
    assert "metrics_path: /metrics" in text and "scheme: http" in text
    assert ":8443" not in text  # never the public WebSocket port


def test_config_passes_promtool() -> None:
    promtool = require_tool("promtool", "prometheus")
    result = subprocess.run([promtool, "check", "config", str(CONFIG)], capture_output=True,
                            text=True, timeout=30 * UNIT, check=False)
    assert result.returncode == 0, result.stdout + result.stderr


@pytest.mark.parametrize("workers", ["1", "2"])
def test_metrics_pass_promtool(server_factory: Callable[..., ServerProcess],
                               workers: str) -> None:
    promtool = require_tool("promtool", "prometheus")
    server = server_factory("--workers", workers)
    status, body = server.admin_get("/metrics")
    assert status == 200
    result = subprocess.run([promtool, "check", "metrics"], input=body, capture_output=True,
                            timeout=30 * UNIT, check=False)
    assert result.returncode == 0, (result.stdout + result.stderr).decode()
