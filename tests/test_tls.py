"""Mutual TLS: --client-ca and --client-cert, with real TLS clients (raw ssl sockets and the
websockets client) presenting certificates from scripts/gen_certs.py's throwaway CA, another CA,
or none; failed handshakes counted by reason; SIGHUP reloading the client CA."""

from __future__ import annotations

import asyncio
import json
import shutil
import signal
import ssl
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from websockets.asyncio.client import connect

from helpers import UNIT, ServerProcess, client_ssl_context, raw_upgrade, wait_for
from webscale.certs import ClientCertPaths, ensure_certs, issue_client_cert

StartServer = Callable[..., ServerProcess]
WHOAMI = ("--handler", "server_handlers:whoami", "--decode", "none")


def pair(cert: ClientCertPaths) -> tuple[Path, Path]:
    return cert.cert, cert.key


async def whoami(server: ServerProcess, client_cert: tuple[Path, Path] | None,
                 path: str = "") -> Any:
    assert server.cafile is not None
    async with connect(server.url + path,
                       ssl=client_ssl_context(server.cafile, client_cert)) as ws:
        await ws.send("who am I?")
        return json.loads(await asyncio.wait_for(ws.recv(), 5 * UNIT))


def refused_handshake(server: ServerProcess, client_cert: tuple[Path, Path] | None,
                      max_version: ssl.TLSVersion | None = None) -> None:
    """The server fails the handshake: with TLS 1.2 the client's handshake fails; with TLS 1.3
    the client finishes first and learns it on its first read. Either way no 101 comes."""
    if max_version is None:
        with pytest.raises((ssl.SSLError, ConnectionError)):
            raw_upgrade(server, client_cert=client_cert)
        return
    import socket

    assert server.cafile is not None
    ctx = client_ssl_context(server.cafile, client_cert)
    ctx.maximum_version = max_version
    with socket.create_connection((server.host, server.port), timeout=5 * UNIT) as sock, \
            pytest.raises(ssl.SSLError):
        with ctx.wrap_socket(sock, server_hostname=server.host) as tls:
            tls.sendall(b"GET / HTTP/1.1\r\n\r\n")
            tls.recv(1)


def test_client_certificate_required(server_factory: StartServer, certs: Path,
                                     client_cert: ClientCertPaths,
                                     foreign_client_cert: ClientCertPaths) -> None:
    server = server_factory("--client-ca", str(certs / "ca.pem"), *WHOAMI)
    server.client_cert = pair(client_cert)  # /stats needs one too
    # The handler sees the certificate's identity: its CN and SANs.
    assert asyncio.run(whoami(server, pair(client_cert))) == {
        "cn": "device-1", "dns": ["device-1"], "identity": None}
    refused_handshake(server, None)                                       # TLS 1.3
    refused_handshake(server, None, ssl.TLSVersion.TLSv1_2)
    refused_handshake(server, pair(foreign_client_cert))                  # another CA
    # The server's own certificate is signed by the right CA but is for serverAuth only.
    refused_handshake(server, (certs / "server.pem", certs / "server.key"))
    expected = {"no_certificate": 2, "unknown_ca": 1, "bad_certificate": 1, "other": 0}
    stats = wait_for(lambda: (s := server.stats())["tls_handshake_failures"] == 4 and s,
                     what="four failed handshakes counted")
    assert stats["tls_handshake_failures_by_reason"] == expected
    assert stats["messages_received"] == 1
    status, body = server.admin_get("/metrics")
    assert status == 200
    metrics = body.decode()
    assert "webscale_tls_handshake_failures_total 4" in metrics
    for reason, count in expected.items():
        assert (f'webscale_tls_handshake_failures_by_reason_total{{reason="{reason}"}} {count}'
                in metrics)
    log = server.stderr()
    assert "TLS handshake from 127.0.0.1:" in log
    assert "refused (unknown_ca): unable to get local issuer certificate" in log
    assert "refused (bad_certificate): unsuitable certificate purpose" in log


def test_client_certificate_optional(server_factory: StartServer, certs: Path,
                                     client_cert: ClientCertPaths,
                                     foreign_client_cert: ClientCertPaths) -> None:
    server = server_factory("--client-ca", str(certs / "ca.pem"), "--client-cert", "optional",
                            *WHOAMI)
    assert asyncio.run(whoami(server, None)) == {"cn": None, "dns": None, "identity": None}
    assert asyncio.run(whoami(server, pair(client_cert)))["cn"] == "device-1"
    refused_handshake(server, pair(foreign_client_cert))  # presented, so it must verify
    stats = wait_for(lambda: (s := server.stats())["tls_handshake_failures"] == 1 and s)
    assert stats["tls_handshake_failures_by_reason"]["unknown_ca"] == 1


def test_the_hook_sees_the_certificate(server_factory: StartServer, certs: Path,
                                       client_cert: ClientCertPaths) -> None:
    server = server_factory("--client-ca", str(certs / "ca.pem"),
                            "--authorize", "server_handlers:authorize_by_path", *WHOAMI)
    reply = asyncio.run(whoami(server, pair(client_cert), "allow"))
    assert reply["cn"] == "device-1" and reply["identity"]["cn"] == "device-1"


def test_sighup_reloads_the_client_ca(server_factory: StartServer, tmp_path: Path,
                                      certs: Path, client_cert: ClientCertPaths) -> None:
    new_ca = tmp_path / "new-ca"
    newcomer = issue_client_cert(new_ca, "newcomer")
    client_ca = tmp_path / "client-ca.pem"
    shutil.copy(certs / "ca.pem", client_ca)
    server = server_factory("--client-ca", str(client_ca), *WHOAMI)
    server.client_cert = pair(client_cert)
    refused_handshake(server, pair(newcomer))
    shutil.copy(ensure_certs(new_ca).ca_cert, client_ca)
    server.signal(signal.SIGHUP)
    wait_for(lambda: f"with client CA {client_ca}" in server.stderr(), what="the reload")
    assert asyncio.run(whoami(server, pair(newcomer)))["cn"] == "newcomer"
    refused_handshake(server, pair(client_cert))  # the old CA is no longer trusted
    server.client_cert = pair(newcomer)
    assert server.stats()["tls_handshake_failures_by_reason"]["unknown_ca"] == 2


def test_client_ca_is_checked_at_start_up(tmp_path: Path) -> None:
    import subprocess
    import sys

    result = subprocess.run([sys.executable, "-m", "webscale", "serve", "--port", "0",
                             "--client-ca", "missing.pem"],
                            cwd=tmp_path, capture_output=True, text=True, timeout=60)
    assert result.returncode == 2 and "--client-ca missing.pem does not exist" in result.stderr
