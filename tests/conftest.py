from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from helpers import ServerProcess, start_server
from webscale.certs import ClientCertPaths, ensure_certs, issue_client_cert
from webscale.errors import ConfigError
from webscale.loop import POLLER_ENV, available_pollers, make_poller


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption(
        "--poller", choices=available_pollers(), default=None,
        help=f"run every server this session starts, and every in-process loop, with "
             f"{POLLER_ENV}=KIND; 'poll' takes the generic selectors path that BSD and macOS "
             f"take with kqueue (CI runs the server tests once more with it)")


def pytest_configure(config: pytest.Config) -> None:
    kind = config.getoption("--poller")
    if kind:
        # Servers are started with a copy of this environment (helpers.start_server).
        os.environ[POLLER_ENV] = kind


def pytest_report_header(config: pytest.Config) -> str:
    try:
        poller = make_poller()
    except ConfigError as exc:
        return f"webscale poller: {exc}"
    poller.close()
    chosen = os.environ.get(POLLER_ENV)
    return f"webscale poller: {poller.name}" + (f" ({POLLER_ENV}={chosen})" if chosen
                                                else " (the default)")


@pytest.fixture(scope="session")
def certs(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A throwaway CA and server certificate, made the way scripts/gen_certs.py makes them."""
    out = tmp_path_factory.mktemp("certs")
    ensure_certs(out)
    return out


@pytest.fixture(scope="session")
def client_cert(certs: Path) -> ClientCertPaths:
    """A device certificate (CN=device-1) from the same CA as the server's: --client-ca
    certs/ca.pem accepts it."""
    return issue_client_cert(certs, "device-1")


@pytest.fixture(scope="session")
def foreign_client_cert(tmp_path_factory: pytest.TempPathFactory) -> ClientCertPaths:
    """A client certificate from another throwaway CA, which the server does not trust."""
    return issue_client_cert(tmp_path_factory.mktemp("foreign-ca"), "intruder")


@pytest.fixture
def server_factory(certs: Path, tmp_path: Path) -> Iterator[Callable[..., ServerProcess]]:
    """Start real server processes on 127.0.0.1:0; every one is stopped (by pid) afterwards."""
    started: list[ServerProcess] = []

    def start(*args: str, env: dict[str, str] | None = None,
              wrapper: list[str] | None = None,
              command: list[str] | None = None) -> ServerProcess:
        """`wrapper` runs the server under another command (e.g. prlimit); `command` replaces
        `python -m webscale serve` (a twin, a script)."""
        server = start_server(list(args), certs=certs, tmp_path=tmp_path, env=env,
                              wrapper=wrapper, **({"command": command} if command else {}))
        started.append(server)
        return server

    yield start
    for server in started:
        server.stop()


@pytest.fixture
def webscale_server(server_factory: Callable[..., ServerProcess]) -> ServerProcess:
    """A default TLS server (.url, .cafile, .stats())."""
    return server_factory()
