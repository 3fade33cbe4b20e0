"""Shared test utilities: deadlines scaled by one unit, a real server subprocess, TLS clients.

Set WEBSCALE_TEST_UNIT (seconds, default 1.0) higher on slow machines; every deadline in the suite
is a multiple of it (websockets' tests/utils.py does the same).
"""

from __future__ import annotations

import http.client
import json
import os
import shutil
import signal
import ssl
import struct
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parent.parent
UNIT = float(os.environ.get("WEBSCALE_TEST_UNIT", "1.0"))


# A mask of zeros leaves the payload as it is: cheap for frames of megabytes.
ZERO_MASK = b"\0\0\0\0"


def client_frame(opcode: int, payload: bytes = b"", *, fin: bool = True, rsv: int = 0,
                 mask: bytes | None = b"\x37\xfa\x21\x3d", length_bytes: int | None = None,
                 length: int | None = None) -> bytes:
    """One client frame (RFC 6455 §5.2), masked with `mask` unless it is None (§5.3). For frames
    that break the rules, `length_bytes` (0, 2 or 8) and `length` override how the payload's
    length is encoded and what it says."""
    n = len(payload) if length is None else length
    if length_bytes is None:
        length_bytes = 0 if n < 126 else 2 if n < 1 << 16 else 8
    head = bytes([(0x80 if fin else 0) | (rsv << 4) | opcode])
    mask_bit = 0x80 if mask is not None else 0
    if length_bytes == 0:
        head += bytes([mask_bit | n])
    elif length_bytes == 2:
        head += bytes([mask_bit | 126]) + struct.pack("!H", n)
    else:
        head += bytes([mask_bit | 127]) + struct.pack("!Q", n)
    if mask is None:
        return head + payload
    if mask == ZERO_MASK or not payload:
        return head + mask + payload
    size = len(payload)
    key = (mask * (size // 4 + 1))[:size]
    masked = (int.from_bytes(payload, "big") ^ int.from_bytes(key, "big")).to_bytes(size, "big")
    return head + mask + masked


def deadline(units: float) -> float:
    return time.monotonic() + units * UNIT


def wait_for(predicate: Callable[[], Any], units: float = 5.0, interval: float = 0.02,
             what: str = "condition") -> Any:
    """Poll `predicate` until it returns something truthy; fail after `units` * UNIT seconds."""
    end = deadline(units)
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > end:
            raise AssertionError(f"timed out after {units * UNIT:.1f}s waiting for {what}")
        time.sleep(interval)


def require_tool(name: str, package: str, extra_path: str = "") -> str:
    """The path of the command `name`: skip the test when it is missing, but fail it in CI.

    CI (`.ci/run`, which CI runs with CI=true) installs every tool a test needs, so there a
    missing tool means a broken CI setup, which a skip would hide. `extra_path` is searched too
    (Debian puts haproxy in /usr/sbin, which an unprivileged user's PATH often lacks).
    """
    path = shutil.which(name) or (shutil.which(name, path=extra_path) if extra_path else None)
    if path is not None:
        return path
    reason = f"{name} not installed (Debian package: {package})"
    if os.environ.get("CI") == "true":
        pytest.fail(f"{reason}; CI=true, so this is an error, not a skip", pytrace=False)
    pytest.skip(reason)


def client_ssl_context(cafile: Path, client_cert: tuple[Path, Path] | None = None
                       ) -> ssl.SSLContext:
    """Trusts `cafile`; presents `client_cert` (certificate, key) when the server asks."""
    ctx = ssl.create_default_context(cafile=str(cafile))
    if client_cert is not None:
        ctx.load_cert_chain(str(client_cert[0]), str(client_cert[1]))
    return ctx


@dataclass
class ServerProcess:
    proc: subprocess.Popen[str]
    host: str
    port: int
    tls: bool
    cafile: Path | None
    stderr_path: Path
    argv: list[str] = field(default_factory=list)
    # Presented by http_get (so /stats works on a server started with --client-ca).
    client_cert: tuple[Path, Path] | None = None
    # The admin listener's base URL ("http://127.0.0.1:PORT"), from the server's `admin on`
    # line; None with --admin off, and for servers that serve /stats on their own port (twins).
    admin_url: str | None = None

    @property
    def url(self) -> str:
        return f"{'wss' if self.tls else 'ws'}://{self.host}:{self.port}/"

    def admin_get(self, path: str, timeout: float = 5.0) -> tuple[int, bytes]:
        """GET `path` from the admin listener (plain HTTP)."""
        assert self.admin_url is not None, "this server has no admin listener"
        host, port = self.admin_url.removeprefix("http://").rsplit(":", 1)
        return _get(http.client.HTTPConnection(host, int(port), timeout=timeout * UNIT), path)

    def http_get(self, path: str, timeout: float = 5.0) -> tuple[int, bytes]:
        """GET `path` from the public (WebSocket) port."""
        if self.tls:
            assert self.cafile is not None
            conn: http.client.HTTPConnection = http.client.HTTPSConnection(
                self.host, self.port, timeout=timeout * UNIT,
                context=client_ssl_context(self.cafile, self.client_cert))
        else:
            conn = http.client.HTTPConnection(self.host, self.port, timeout=timeout * UNIT)
        return _get(conn, path)

    def stats(self) -> dict[str, Any]:
        """/stats from the admin listener (or the public port of a server without one)."""
        status, body = (self.admin_get("/stats") if self.admin_url is not None
                        else self.http_get("/stats"))
        assert status == 200, body
        return json.loads(body)  # type: ignore[no-any-return]

    def stderr(self) -> str:
        return self.stderr_path.read_text(errors="replace")

    def signal(self, signum: int) -> None:
        self.proc.send_signal(signum)

    def wait(self, units: float = 15.0) -> int:
        return self.proc.wait(timeout=units * UNIT)

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=15 * UNIT)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        if self.proc.stdout:
            self.proc.stdout.close()


def _get(conn: http.client.HTTPConnection, path: str) -> tuple[int, bytes]:
    try:
        conn.request("GET", path)
        response = conn.getresponse()
        return response.status, response.read()
    finally:
        conn.close()


WEBSCALE = ["-m", "webscale", "serve"]
TWIN = ["-m", "bench_client.asyncio_twin"]
PICOWS_TWIN = ["-m", "bench_client.picows_twin"]


def start_server(args: list[str], *, certs: Path | None, tmp_path: Path,
                 env: dict[str, str] | None = None, command: list[str] = WEBSCALE,
                 wrapper: list[str] | None = None) -> ServerProcess:
    """Start `python -m webscale serve --port 0 ...` (or another server `command` that prints the
    same 'listening on' line, such as the asyncio twin) and wait for that line, then for the
    `admin on URL` line webscale prints next (the admin listener is on 127.0.0.1:0 unless the
    test passes its own --admin)."""
    tls = "--no-tls" not in args
    has_admin = command not in (TWIN, PICOWS_TWIN) and "off" not in _flag_values(args, "--admin")
    if has_admin and "--admin" not in args:
        args = [*args, "--admin", "127.0.0.1:0"]
    argv = [*(wrapper or []), sys.executable, *command, "--host", "127.0.0.1", "--port", "0",
            *args]
    if tls and certs is not None and "--cert" not in args:
        argv += ["--cert", str(certs / "server.pem"), "--key", str(certs / "server.key")]
    stderr_path = tmp_path / f"server-{len(list(tmp_path.glob('server-*.log')))}.log"
    full_env = dict(os.environ)
    full_env["PYTHONPATH"] = os.pathsep.join([str(ROOT), str(ROOT / "tests"),
                                              full_env.get("PYTHONPATH", "")])
    full_env.update(env or {})
    with open(stderr_path, "w") as stderr:
        proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=stderr, text=True,
                                env=full_env, cwd=str(tmp_path))
    assert proc.stdout is not None
    end = deadline(20)
    line = ""
    while time.monotonic() < end:
        line = proc.stdout.readline()
        if line.startswith("listening on "):
            break
        if not line and proc.poll() is not None:
            raise AssertionError(f"server exited {proc.returncode}: {stderr_path.read_text()}")
    else:
        proc.kill()
        raise AssertionError(f"server did not start: {stderr_path.read_text()}")
    port = int(line.strip().rsplit(":", 1)[1])
    admin_url = None
    if has_admin:
        admin_line = proc.stdout.readline()
        if not admin_line.startswith("admin on "):
            proc.kill()
            raise AssertionError(f"expected 'admin on URL', got {admin_line!r}: "
                                 f"{stderr_path.read_text()}")
        admin_url = admin_line.strip().removeprefix("admin on ")
    return ServerProcess(proc, "127.0.0.1", port, tls, certs / "ca.pem" if certs else None,
                         stderr_path, argv, admin_url=admin_url)


@dataclass
class UpgradeAnswer:
    status: int
    headers: dict[str, str]  # lower-case names
    body: bytes


def raw_upgrade(server: ServerProcess, target: str = "/",
                headers: tuple[tuple[str, str], ...] = (),
                client_cert: tuple[Path, Path] | None = None,
                units: float = 5.0) -> UpgradeAnswer:
    """Send a WebSocket upgrade request over a raw TLS (or plain) socket and read the answer's
    head, and its body unless it is a 101. Raises OSError/ssl.SSLError when the server closes
    without answering (a failed client-certificate check, a handshake timeout)."""
    import base64
    import socket

    sock: socket.socket = socket.create_connection((server.host, server.port),
                                                   timeout=units * UNIT)
    try:
        if server.tls:
            assert server.cafile is not None
            sock = client_ssl_context(server.cafile, client_cert).wrap_socket(
                sock, server_hostname=server.host)
        key = base64.b64encode(os.urandom(16)).decode()
        lines = [f"GET {target} HTTP/1.1", f"Host: {server.host}:{server.port}",
                 "Upgrade: websocket", "Connection: Upgrade", f"Sec-WebSocket-Key: {key}",
                 "Sec-WebSocket-Version: 13", *(f"{name}: {value}" for name, value in headers)]
        sock.sendall(("\r\n".join(lines) + "\r\n\r\n").encode())
        data = b""
        while b"\r\n\r\n" not in data:
            chunk = sock.recv(4096)
            if not chunk:
                raise ConnectionError(f"closed without an answer (got {data!r})")
            data += chunk
        head, _, body = data.partition(b"\r\n\r\n")
        status_line, *header_lines = head.decode("latin-1").split("\r\n")
        answer_headers = {}
        for line in header_lines:
            name, _, value = line.partition(":")
            answer_headers[name.strip().lower()] = value.strip()
        status = int(status_line.split(" ", 2)[1])
        if status != 101:
            length = int(answer_headers.get("content-length", "0"))
            while len(body) < length:
                chunk = sock.recv(4096)
                if not chunk:
                    break
                body += chunk
        return UpgradeAnswer(status, answer_headers, body)
    finally:
        sock.close()



def _flag_values(args: list[str], flag: str) -> list[str]:
    return [args[i + 1] for i, arg in enumerate(args[:-1]) if arg == flag]
