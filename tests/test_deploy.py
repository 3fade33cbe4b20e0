"""deploy/rpi: the systemd units verify, the sysctl drop-in explains itself, install.sh lints.

`systemd-analyze` and `shellcheck` come from Debian's `systemd` and `shellcheck` packages; the
tests that need them are skipped, saying so, where they are not installed.
"""

from __future__ import annotations

import importlib.util
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
RPI = REPO / "deploy" / "rpi"
SERVICE = RPI / "webscale.service"
SOCKET = RPI / "webscale.socket"
SYSCTL = RPI / "90-webscale.conf"
INSTALL = RPI / "install.sh"
# Where install.sh puts the console script; it does not exist on a development machine.
INSTALLED_BINARY = "/opt/webscale/venv/bin/webscale"

needs_systemd_analyze = pytest.mark.skipif(
    shutil.which("systemd-analyze") is None,
    reason="systemd-analyze not installed (Debian package: systemd)",
)


def unit_settings(path: Path) -> list[tuple[str, str, str]]:
    """(section, key, value) for every assignment, continuation lines joined, in order."""
    settings: list[tuple[str, str, str]] = []
    section = ""
    logical = ""
    for raw in path.read_text().splitlines():
        line = raw.strip()
        if not logical and (not line or line.startswith(("#", ";"))):
            continue
        if line.endswith("\\"):
            logical += line[:-1] + " "
            continue
        logical += line
        if logical.startswith("[") and logical.endswith("]"):
            section = logical[1:-1]
        else:
            key, _, value = logical.partition("=")
            settings.append((section, key.strip(), value.strip()))
        logical = ""
    return settings


def setting(path: Path, section: str, key: str) -> list[str]:
    return [v for s, k, v in unit_settings(path) if s == section and k == key]


def exec_start_argv() -> list[str]:
    (exec_start,) = setting(SERVICE, "Service", "ExecStart")
    return shlex.split(exec_start)


def run_verify(unit_dir: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [
            "systemd-analyze",
            "verify",
            "--man=no",
            str(unit_dir / "webscale.service"),
            str(unit_dir / "webscale.socket"),
        ],
        check=False,
        capture_output=True,
        text=True,
        timeout=60,
    )


@needs_systemd_analyze
def test_units_pass_systemd_analyze_verify(tmp_path: Path) -> None:
    """Verify the units exactly as shipped, except the console script's install path.

    `verify` rejects an ExecStart= binary that does not exist, and /opt/webscale/venv is only
    there after install.sh. So: the shipped files must fail on that one point and nothing else,
    and a copy with only that path swapped for an existing executable must pass cleanly.
    """
    as_shipped = run_verify(RPI)
    complaints = [line for line in as_shipped.stderr.splitlines() if line.strip()]
    assert complaints == [
        (
            f"webscale.service: Command {INSTALLED_BINARY} is not executable: "
            "No such file or directory"
        )
    ], as_shipped.stderr

    stand_in = shutil.which("true")
    assert stand_in is not None
    text = SERVICE.read_text()
    assert text.count(INSTALLED_BINARY) == 1
    (tmp_path / "webscale.service").write_text(text.replace(INSTALLED_BINARY, stand_in))
    shutil.copy(SOCKET, tmp_path / "webscale.socket")
    result = run_verify(tmp_path)
    assert result.returncode == 0, result.stderr
    assert result.stderr.strip() == "", result.stderr


@needs_systemd_analyze
def test_service_hardening_exposure_stays_low() -> None:
    result = subprocess.run(
        ["systemd-analyze", "security", "--offline=yes", "--no-pager", str(SERVICE)],
        check=False,
        capture_output=True,
        text=True,
        timeout=60,
    )
    match = re.search(r"Overall exposure level for webscale\.service: ([0-9.]+)", result.stdout)
    assert match, result.stdout + result.stderr
    # 0 is a fully locked-down unit, 10 an unprotected one; the shipped unit scores about 1.6.
    assert float(match.group(1)) <= 2.0, result.stdout


def test_service_has_the_required_settings() -> None:
    expected = {
        "Type": "notify",
        "NoNewPrivileges": "yes",
        "ProtectSystem": "strict",
        "PrivateTmp": "yes",
        "ProtectHome": "yes",
        "RestrictAddressFamilies": "AF_INET AF_INET6 AF_UNIX",
        "LimitNOFILE": "1048576",
        "Restart": "on-failure",
        "ExecReload": "/bin/kill -HUP $MAINPID",
        "CapabilityBoundingSet": "",
        "KillMode": "mixed",
    }
    for key, value in expected.items():
        assert setting(SERVICE, "Service", key) == [value], key
    (watchdog,) = setting(SERVICE, "Service", "WatchdogSec")
    assert int(watchdog) > 0
    # A dedicated user (install.sh creates it) or a dynamic one, never root.
    assert setting(SERVICE, "Service", "User") == ["webscale"] or setting(
        SERVICE, "Service", "DynamicUser"
    ) == ["yes"]
    assert setting(SERVICE, "Service", "AmbientCapabilities") == []


def test_socket_unit_listens_on_443() -> None:
    assert setting(SOCKET, "Socket", "ListenStream") == ["443"]
    assert setting(SOCKET, "Socket", "Accept") == ["no"]


def test_exec_start_flags_exist_in_the_cli() -> None:
    argv = exec_start_argv()
    assert argv[:2] == [INSTALLED_BINARY, "serve"]
    flags = [arg for arg in argv if arg.startswith("--")]
    assert flags, argv
    if importlib.util.find_spec("webscale.cli") is None:
        pytest.skip("webscale.cli does not exist yet: cannot check the ExecStart flags")
    result = subprocess.run(
        [sys.executable, "-m", "webscale", "serve", "--help"],
        check=False,
        capture_output=True,
        text=True,
        cwd=REPO,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    missing = [flag for flag in flags if flag not in result.stdout]
    assert missing == [], f"ExecStart uses flags `webscale serve` lacks: {missing}"


def test_every_sysctl_setting_is_explained_and_fits_limit_nofile() -> None:
    lines = SYSCTL.read_text().splitlines()
    values: dict[str, str] = {}
    for index, line in enumerate(lines):
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        key, sep, value = line.partition("=")
        assert sep and key.strip() and value.strip(), f"not `key = value`: {line!r}"
        # The comment directly above says why (STYLE: comments say why).
        assert index > 0 and lines[index - 1].startswith("#"), f"no comment above {line!r}"
        values[key.strip()] = value.strip()
    for key in (
        "net.core.somaxconn",
        "net.ipv4.tcp_max_syn_backlog",
        "net.ipv4.ip_local_port_range",
        "fs.file-max",
        "fs.nr_open",
        "net.core.netdev_max_backlog",
    ):
        assert key in values, key
    (limit_nofile,) = setting(SERVICE, "Service", "LimitNOFILE")
    assert int(values["fs.nr_open"]) >= int(limit_nofile)
    (backlog,) = setting(SOCKET, "Socket", "Backlog")
    assert int(values["net.core.somaxconn"]) >= int(backlog)


def test_sysctl_keys_exist_in_this_kernel() -> None:
    proc = Path("/proc/sys")
    if not proc.is_dir():
        pytest.skip("no /proc/sys here")
    for line in SYSCTL.read_text().splitlines():
        if line.strip() and not line.startswith("#"):
            key = line.partition("=")[0].strip()
            assert (proc / key.replace(".", "/")).exists(), key


def test_install_sh_parses() -> None:
    result = subprocess.run(
        ["bash", "-n", str(INSTALL)], check=False, capture_output=True, text=True
    )
    assert result.returncode == 0, result.stderr
    assert INSTALL.stat().st_mode & 0o111, "install.sh must be executable"
    assert re.search(r"^set -E?euo pipefail", INSTALL.read_text(), re.MULTILINE)


@pytest.mark.skipif(
    shutil.which("shellcheck") is None,
    reason="shellcheck not installed (Debian package: shellcheck)",
)
def test_install_sh_passes_shellcheck() -> None:
    result = subprocess.run(
        ["shellcheck", "--shell=bash", str(INSTALL)], check=False, capture_output=True, text=True
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_install_sh_help_runs_without_root() -> None:
    result = subprocess.run(
        ["bash", str(INSTALL), "--help"], check=False, capture_output=True, text=True, timeout=30
    )
    assert result.returncode == 0, result.stderr
    assert "--socket" in result.stdout and "--uninstall" in result.stdout
