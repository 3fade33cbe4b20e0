"""What a new user trips over on a fresh clone (issue 11 item 7): one test per fix."""

from __future__ import annotations

import asyncio
import re
import sqlite3
import os
import subprocess
import tomllib
from collections.abc import Callable
from pathlib import Path

from websockets.asyncio.client import connect

from helpers import ROOT, ServerProcess, client_ssl_context

StartServer = Callable[..., ServerProcess]


def test_readme_handler_example_runs(server_factory: StartServer, tmp_path: Path) -> None:
    readme = (ROOT / "README.md").read_text()
    code = re.search(r"```python\n# myapp/handlers.py\n(.*?)```", readme, re.S)
    assert code, "the README's myapp/handlers.py example is gone"
    (tmp_path / "myapp").mkdir()
    (tmp_path / "myapp" / "__init__.py").write_text("")
    (tmp_path / "myapp" / "handlers.py").write_text(code.group(1))
    server = server_factory("--handler", "myapp.handlers:on_message")

    async def main() -> str:
        async with connect(server.url, ssl=client_ssl_context(server.cafile)) as ws:  # type: ignore[arg-type]
            await ws.send('{"device": "pi-1", "seq": 7, "readings": '
                          '[{"sensor": "t", "value": 21.5}, {"sensor": "h", "value": 40}]}')
            return str(await asyncio.wait_for(ws.recv(), 10))

    assert asyncio.run(main()) == "stored 7"
    rows = sqlite3.connect(tmp_path / "readings.db").execute(
        "SELECT device, sensor, value FROM readings ORDER BY sensor").fetchall()
    assert rows == [("pi-1", "h", 40.0), ("pi-1", "t", 21.5)]


def test_listening_line_is_printed_once_on_stdout_only(webscale_server: ServerProcess) -> None:
    assert "listening on" not in webscale_server.stderr()
    assert webscale_server.argv  # started by helpers.start_server, which read the stdout line


def test_scripts_run_says_where_the_commands_are() -> None:
    # The default venv: without the VENV a CI run for another Python version exports.
    env = {k: v for k, v in os.environ.items() if k != "VENV"}
    hint = subprocess.run(["bash", "-c", f"source {ROOT}/scripts/_venv.sh; commands_hint"],
                          capture_output=True, text=True, check=True, env=env).stderr
    assert f"{ROOT}/.venv/bin" in hint and "activate" in hint
    assert "commands_hint" in (ROOT / "scripts" / "run").read_text()


def test_license_is_an_spdx_expression() -> None:
    # setuptools deprecates `license = {text = ...}` and warns on every install.
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())
    assert project["project"]["license"] == "MIT"
    assert any(req.startswith("setuptools>=7") for req in project["build-system"]["requires"])


def test_negotiated_extensions_are_logged_at_debug(server_factory: StartServer) -> None:
    server = server_factory("--compression", "deflate", "--log-level", "debug")

    async def main() -> None:
        async with connect(server.url, ssl=client_ssl_context(server.cafile),  # type: ignore[arg-type]
                           compression="deflate") as ws:
            await ws.send('{"x": 1}')

    asyncio.run(main())
    from helpers import wait_for

    wait_for(lambda: "extensions: permessage-deflate" in server.stderr(), what="the log line")
