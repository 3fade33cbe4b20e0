"""The server under a stand-in systemd: sd_notify datagrams, $LISTEN_FDS, SIGHUP reloads.

A datagram socket bound in tmp_path plays PID 1's notify socket (with SO_PASSCRED, so each
datagram names its sender's pid); a small launcher plays socket activation.
"""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import ssl
import struct
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from cryptography import x509
from websockets.asyncio.client import connect

from helpers import ROOT, UNIT, ServerProcess, client_ssl_context, deadline, wait_for
from payloads import telemetry_json
from webscale.certs import ensure_certs

StartServer = Callable[..., ServerProcess]


class NotifySocket:
    """Receives sd_notify datagrams as (sender pid, [assignments])."""

    def __init__(self, path: Path) -> None:
        self.path = str(path)
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_PASSCRED, 1)
        self.sock.bind(self.path)
        self.received: list[tuple[int, str]] = []

    def env(self, **extra: str) -> dict[str, str]:
        return {"NOTIFY_SOCKET": self.path, **extra}

    def _receive(self, timeout: float) -> None:
        self.sock.settimeout(max(0.001, timeout))
        try:
            data, ancillary, _, _ = self.sock.recvmsg(4096, socket.CMSG_SPACE(12))
        except TimeoutError:
            return
        pid = 0
        for level, kind, payload in ancillary:
            if level == socket.SOL_SOCKET and kind == socket.SCM_CREDENTIALS:
                pid = struct.unpack("iII", payload[:12])[0]
        self.received += [(pid, line) for line in data.decode().split("\n")]

    def wait_for(self, assignment: str, units: float = 10, count: int = 1) -> list[int]:
        """Receive until `assignment` has arrived `count` times; the pids that sent it."""
        end = deadline(units)
        while True:
            senders = [pid for pid, line in self.received if line == assignment]
            if len(senders) >= count:
                return senders
            remaining = end - time.monotonic()
            if remaining <= 0:
                raise AssertionError(f"no {count}x {assignment} in {units * UNIT:.1f}s; "
                                     f"got {self.received}")
            self._receive(remaining)

    def close(self) -> None:
        self.sock.close()


@pytest.fixture
def notify(tmp_path: Path) -> Iterator[NotifySocket]:
    sock = NotifySocket(tmp_path / "notify")
    yield sock
    sock.close()


def test_ready_status_then_stopping_on_sigterm(server_factory: StartServer,
                                               notify: NotifySocket) -> None:
    server = server_factory(env=notify.env())
    assert notify.wait_for("READY=1") == [server.proc.pid]
    assert any(line.startswith("STATUS=0 connections open") for _, line in notify.received)
    server.signal(signal.SIGTERM)
    notify.wait_for("STOPPING=1")
    assert server.wait() == 0
    lines = [line for _, line in notify.received]
    assert lines.index("READY=1") < lines.index("STOPPING=1")


def test_watchdog_pings_come_from_the_loop_periodically(server_factory: StartServer,
                                                        notify: NotifySocket) -> None:
    # WATCHDOG_USEC of 0.4 s: the loop pings every 0.2 s (half, as sd_watchdog_enabled says).
    server = server_factory(env=notify.env(WATCHDOG_USEC="400000"))
    notify.wait_for("READY=1")
    started = time.monotonic()
    notify.wait_for("WATCHDOG=1", count=6)
    elapsed = time.monotonic() - started
    assert 0.6 < elapsed < 5 * UNIT, f"6 pings in {elapsed:.2f}s"
    server.stop()


def test_with_workers_only_the_supervisor_notifies(server_factory: StartServer,
                                                   notify: NotifySocket) -> None:
    server = server_factory("--workers", "2", env=notify.env(WATCHDOG_USEC="1000000"))
    supervisor = server.proc.pid
    assert notify.wait_for("READY=1") == [supervisor]
    notify.wait_for("WATCHDOG=1", count=3)
    server.signal(signal.SIGTERM)
    notify.wait_for("STOPPING=1")
    assert server.wait() == 0
    assert {pid for pid, _ in notify.received} == {supervisor}
    assert [line for _, line in notify.received].count("READY=1") == 1


# Plays systemd's socket activation: moves the passed socket to fd 3, sets LISTEN_PID to its
# own pid, and execs the server (same pid), as PID 1 does for webscale.socket.
LAUNCHER = r"""
import os, sys
fd = int(sys.argv[1])
os.dup2(fd, 3)  # dup2 leaves the copy inheritable, as systemd does
if fd != 3:
    os.close(fd)
os.environ.update(LISTEN_PID=str(os.getpid()), LISTEN_FDS="1", LISTEN_FDNAMES="wss")
os.execv(sys.executable, [sys.executable, "-m", "webscale", *sys.argv[2:]])
"""


def _read_listening_line(proc: subprocess.Popen[str], log: Path) -> str:
    assert proc.stdout is not None
    end = deadline(20)
    while time.monotonic() < end:
        line = proc.stdout.readline()
        if line.startswith("listening on "):
            return line.strip()
        if not line and proc.poll() is not None:
            break
    raise AssertionError(f"no 'listening on' line: {log.read_text()}")


@pytest.mark.parametrize("workers", [1, 2])
def test_listen_fds_activation_serves_on_the_passed_socket(certs: Path, tmp_path: Path,
                                                           workers: int) -> None:
    passed = socket.create_server(("127.0.0.1", 0))
    # --port names a port someone else holds: binding it would fail, so serving proves the
    # server used fd 3 instead.
    occupied = socket.create_server(("127.0.0.1", 0))
    port = passed.getsockname()[1]
    log = tmp_path / "server.log"
    argv = [sys.executable, "-c", LAUNCHER, str(passed.fileno()), "serve", "--host",
            "127.0.0.1", "--port", str(occupied.getsockname()[1]), "--workers", str(workers),
            "--cert", str(certs / "server.pem"), "--key", str(certs / "server.key"),
            "--admin", "127.0.0.1:0"]
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(ROOT), str(ROOT / "tests")]))
    with open(log, "w") as stderr:
        proc = subprocess.Popen(argv, pass_fds=[passed.fileno()], env=env, cwd=tmp_path,
                                stdout=subprocess.PIPE, stderr=stderr, text=True)
    passed.close()  # the server holds its own copy now
    try:
        assert _read_listening_line(proc, log) == f"listening on wss://127.0.0.1:{port}"

        async def main() -> None:
            ctx = client_ssl_context(certs / "ca.pem")
            for client_id in range(4):
                async with connect(f"wss://127.0.0.1:{port}/", ssl=ctx,
                                   open_timeout=5 * UNIT) as ws:
                    await ws.send(telemetry_json(client_id, 0))
                    await asyncio.wait_for(await ws.ping(), 5 * UNIT)

        asyncio.run(main())
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(15 * UNIT) == 0
        assert "socket activation" in log.read_text()
    finally:
        occupied.close()
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        if proc.stdout:
            proc.stdout.close()


def _serial_of_new_connection(port: int, cafile: Path) -> int:
    ctx = client_ssl_context(cafile)
    with socket.create_connection(("127.0.0.1", port), timeout=5 * UNIT) as raw:
        with ctx.wrap_socket(raw, server_hostname="127.0.0.1") as tls:
            der = tls.getpeercert(binary_form=True)
    assert der is not None
    return x509.load_der_x509_certificate(der).serial_number


def _serial_in(path: Path) -> int:
    return x509.load_pem_x509_certificate(path.read_bytes()).serial_number


@pytest.mark.parametrize("workers", [1, 2])
def test_sighup_reloads_the_certificate_and_keeps_open_websockets(
    server_factory: StartServer, notify: NotifySocket, tmp_path: Path, workers: int
) -> None:
    certs = ensure_certs(tmp_path / "reloadable")
    server = server_factory("--cert", str(certs.server_cert), "--key", str(certs.server_key),
                            "--workers", str(workers), "--ping-interval", "0",
                            env=notify.env())
    old_serial = _serial_in(certs.server_cert)
    notify.wait_for("READY=1")

    async def main() -> None:
        ctx = client_ssl_context(certs.ca_cert)
        async with connect(server.url, ssl=ctx, open_timeout=5 * UNIT) as ws:
            ssl_object = ws.transport.get_extra_info("ssl_object")
            assert isinstance(ssl_object, ssl.SSLObject)
            der = ssl_object.getpeercert(binary_form=True)
            assert der is not None
            assert x509.load_der_x509_certificate(der).serial_number == old_serial

            ensure_certs(certs.ca_cert.parent, force=True)  # same CA, new leaf and key
            new_serial = _serial_in(certs.server_cert)
            assert new_serial != old_serial
            server.signal(signal.SIGHUP)
            # Every worker logs its reload; then READY=1 again (after RELOADING=1).
            await asyncio.to_thread(
                wait_for, lambda: server.stderr().count("certificate reloaded") == workers,
                what="every worker to reload")
            await asyncio.to_thread(notify.wait_for, "READY=1", 10, 2)
            for _ in range(8):  # with two workers, new clients land on both
                assert _serial_of_new_connection(server.port, certs.ca_cert) == new_serial

            # The WebSocket opened before the reload is still open and working.
            await ws.send(telemetry_json(1, 1))
            await asyncio.wait_for(await ws.ping(), 5 * UNIT)

        lines = [line for _, line in notify.received]
        assert "RELOADING=1" in lines
        assert lines.index("RELOADING=1") < len(lines) - lines[::-1].index("READY=1") - 1

    asyncio.run(main())
    server.stop()
