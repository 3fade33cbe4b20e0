"""deploy/haproxy/haproxy.cfg in front of two webscale servers on 127.0.0.1 (issues 5 and 12).

The test runs a copy of the shipped file, changed only where a test must differ from a real
deployment (loopback addresses, a free port, files under tmp_path, checks every 200 ms instead of
every 2 s). Every substitution must match the shipped file exactly as often as expected, so an edit
there that the test no longer covers fails here instead of being silently untested.
"""

from __future__ import annotations

import asyncio
import csv
import json
import re
import signal
import socket
import ssl
import subprocess
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from helpers import ROOT, UNIT, ServerProcess, client_ssl_context, require_tool, wait_for
from payloads import telemetry_json
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import WebSocketException
from websockets.protocol import State

SHIPPED_CONFIG = ROOT / "deploy" / "haproxy" / "haproxy.cfg"
BACKEND = "webscale"


@pytest.fixture
def haproxy_binary() -> str:
    """haproxy's path; every test here needs it (skipped without it, failed in CI)."""
    return require_tool("haproxy", "haproxy", extra_path="/usr/sbin:/usr/local/sbin")

StartServer = Callable[..., ServerProcess]
# The shipped config sends the PROXY protocol (send-proxy-v2); HAProxy reaches the test's
# servers from 127.0.0.1, so that is the balancer address they trust.
BEHIND_HAPROXY = ("--proxy-protocol-from", "127.0.0.1/32")


def render_test_config(shipped: str, *, bind_port: int, backends: list[tuple[str, int]],
                       admin_socket: Path) -> str:
    """The shipped config with loopback addresses, a tmp admin socket and fast health checks."""
    server_lines = "".join(f"    server pi{i} {host}:{port}\n"
                           for i, (host, port) in enumerate(backends, start=1))
    substitutions: list[tuple[str, str, int]] = [
        # Logs to stdout (captured in the test's log file) instead of syslog.
        (r"^    log /dev/log local0$", "    log stdout format raw local0", 1),
        # No chroot or user switch: the test may run unprivileged.
        (r"^    (chroot|user|group) \S+$", r"    # \1 (not in the test)", 3),
        (r"^    stats socket /run/haproxy/admin\.sock ",
         f"    stats socket {admin_socket} ", 1),
        # Global and frontend limits sized for a test, so HAProxy need not raise its fd limit.
        (r"^    maxconn 100000$", "    maxconn 1000", 2),
        (r"^    bind :443$", f"    bind 127.0.0.1:{bind_port}", 1),
        # Checks every 200 ms; two failures mark a host down, one success brings it up.
        (r"\binter 2s fall 3 rise 2\b", "inter 200ms fall 2 rise 1", 1),
        (r"^    timeout check 3s$", "    timeout check 1s", 1),
        # The shipped hosts' lines, replaced as a block by the test's servers.
        (r"(^    server \S+ \S+\n)+", server_lines, 1),
    ]
    text = shipped
    for pattern, replacement, expected in substitutions:
        text, count = re.subn(pattern, replacement, text, flags=re.MULTILINE)
        assert count == expected, f"{pattern!r} matched {count} times in {SHIPPED_CONFIG}"
    return text


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@dataclass
class Haproxy:
    proc: subprocess.Popen[bytes]
    port: int
    admin_socket: Path
    log_path: Path

    @property
    def url(self) -> str:
        return f"wss://127.0.0.1:{self.port}/"

    def command(self, line: str) -> str:
        """One command on the admin socket (non-interactive: HAProxy closes after answering)."""
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
            sock.settimeout(5 * UNIT)
            sock.connect(str(self.admin_socket))
            sock.sendall(line.encode() + b"\n")
            chunks = []
            while chunk := sock.recv(65536):
                chunks.append(chunk)
        return b"".join(chunks).decode()

    def servers(self) -> dict[str, dict[str, str]]:
        """`show stat` rows of the backend's servers by name: status, check_status, scur ..."""
        text = self.command("show stat").lstrip("# ")
        rows = csv.DictReader(text.splitlines())
        return {row["svname"]: row for row in rows
                if row["pxname"] == BACKEND and row["svname"] not in ("FRONTEND", "BACKEND")}

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()  # SIGTERM: HAProxy's hard stop, closes every tunnel now
            try:
                self.proc.wait(timeout=5 * UNIT)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


@pytest.fixture
def haproxy_factory(tmp_path: Path, haproxy_binary: str
                    ) -> Iterator[Callable[[list[ServerProcess]], Haproxy]]:
    """Start `haproxy -db` with the rendered config; stopped by pid afterwards."""
    started: list[Haproxy] = []

    def start(backends: list[ServerProcess]) -> Haproxy:
        admin_socket = tmp_path / f"haproxy-{len(started)}.sock"
        cfg = tmp_path / f"haproxy-{len(started)}.cfg"
        port = free_port()
        cfg.write_text(render_test_config(
            SHIPPED_CONFIG.read_text(), bind_port=port, admin_socket=admin_socket,
            backends=[(s.host, s.port) for s in backends]))
        check = subprocess.run([haproxy_binary, "-c", "-f", str(cfg)], check=False,
                               capture_output=True, text=True, timeout=10 * UNIT)
        assert check.returncode == 0, check.stdout + check.stderr
        log_path = tmp_path / f"haproxy-{len(started)}.log"
        with open(log_path, "wb") as log:
            proc = subprocess.Popen([haproxy_binary, "-db", "-f", str(cfg)], stdout=log,
                                    stderr=subprocess.STDOUT, cwd=str(tmp_path))
        haproxy = Haproxy(proc, port, admin_socket, log_path)
        started.append(haproxy)

        def every_check_passed() -> bool:
            if proc.poll() is not None:
                raise AssertionError(f"haproxy exited {proc.returncode}: {haproxy.log()}")
            try:
                servers = haproxy.servers()
            except OSError:
                return False  # the admin socket is not there yet
            return len(servers) == len(backends) and all(
                row["status"] == "UP" and row["check_status"] == "L7OK"
                for row in servers.values())

        wait_for(every_check_passed, units=10, what="haproxy up with every /healthz check passed")
        return haproxy

    yield start
    for haproxy in started:
        haproxy.stop()


def test_shipped_config_is_valid(haproxy_binary: str) -> None:
    result = subprocess.run([haproxy_binary, "-c", "-f", str(SHIPPED_CONFIG)], check=False,
                            capture_output=True, text=True, timeout=10 * UNIT)
    assert result.returncode == 0, result.stdout + result.stderr


def decoded(server: ServerProcess) -> int:
    return int(server.stats()["messages_decoded"])


# How a host is lost: the signal that does it, and the close code its clients then see.
#   killed    the kernel closes its sockets; HAProxy passes the close on
#   hung      nothing closes: only the failed health checks and `on-marked-down
#             shutdown-sessions` end its clients' tunnels
#   draining  webscale's SIGTERM: a 1001 close to every client, and the listener closed, so
#             HAProxy's checks are refused
LOSSES = {"killed": (signal.SIGKILL, 1006), "hung": (signal.SIGSTOP, 1006),
          "draining": (signal.SIGTERM, 1001)}


@pytest.mark.parametrize("loss", list(LOSSES))
def test_clients_spread_over_two_servers_and_survive_losing_one(
        server_factory: StartServer, haproxy_factory: Callable[[list[ServerProcess]], Haproxy],
        certs: Path, loss: str) -> None:
    first, second = server_factory(*BEHIND_HAPROXY), server_factory(*BEHIND_HAPROXY)
    haproxy = haproxy_factory([first, second])
    clients = 20
    ctx = client_ssl_context(certs / "ca.pem")
    signum, close_code = LOSSES[loss]

    async def open_client() -> ClientConnection:
        return await connect(haproxy.url, ssl=ctx, open_timeout=10 * UNIT)

    async def send_one(ws: ClientConnection, client_id: int, seq: int) -> None:
        await asyncio.wait_for(ws.send(telemetry_json(client_id, seq, size=1024)), 5 * UNIT)

    async def main() -> None:
        websockets = await asyncio.gather(*(open_client() for _ in range(clients)))
        try:
            await scenario(websockets)
        finally:
            await asyncio.gather(*(ws.close() for ws in websockets), return_exceptions=True)

    async def scenario(websockets: list[ClientConnection]) -> None:
        # leastconn spread them: both servers hold some, and together all of them.
        open_on = [(await asyncio.to_thread(s.stats))["websockets_open"] for s in (first, second)]
        assert all(n > 0 for n in open_on) and sum(open_on) == clients, open_on
        await asyncio.gather(*(send_one(ws, i, 0) for i, ws in enumerate(websockets)))
        await asyncio.to_thread(wait_for, lambda: decoded(first) + decoded(second) == clients,
                                what=f"{clients} messages decoded over both servers")

        # Lose the first server; HAProxy's checks mark it down and its clients' tunnels end.
        second_before = decoded(second)
        first.signal(signum)
        await asyncio.to_thread(wait_for, lambda: haproxy.servers()["pi1"]["status"] == "DOWN",
                                what=f"haproxy to mark the {loss} server down")
        loop = asyncio.get_running_loop()
        end = loop.time() + 5 * UNIT
        while (closed := sum(ws.state is State.CLOSED for ws in websockets)) < open_on[0]:
            assert loop.time() < end, f"only {closed} of {open_on[0]} clients saw the server go"
            await asyncio.sleep(0.02)
        dropped = [i for i, ws in enumerate(websockets) if ws.state is State.CLOSED]
        assert len(dropped) == open_on[0]  # exactly the lost server's clients, no others
        assert {websockets[i].close_code for i in dropped} == {close_code}

        # Every dropped client reconnects through HAProxy, lands on the survivor and works.
        results = await asyncio.gather(*(open_client() for _ in dropped), return_exceptions=True)
        failures = [r for r in results if isinstance(r, BaseException)]
        assert not failures, f"{len(failures)} reconnects failed: {failures[:3]!r}"
        for i, ws in zip(dropped, results, strict=True):
            websockets[i] = ws  # type: ignore[assignment]
        await asyncio.gather(*(send_one(websockets[i], i, 1) for i in dropped))
        await asyncio.to_thread(
            wait_for, lambda: decoded(second) == second_before + len(dropped),
            what="the reconnected clients' messages decoded on the surviving server")
        stats = await asyncio.to_thread(second.stats)
        assert stats["websockets_open"] == clients
        assert stats["decode_errors"] == 0
        rows = await asyncio.to_thread(haproxy.servers)
        assert (rows["pi1"]["scur"], rows["pi2"]["scur"]) == ("0", str(clients))

    try:
        asyncio.run(asyncio.wait_for(main(), 30 * UNIT))
    finally:
        if signum == signal.SIGSTOP:
            first.proc.kill()  # a stopped process would sit out SIGTERM until the fixture's kill
            first.proc.wait()


def test_connects_to_a_dead_server_not_yet_marked_down_go_to_the_other(
        server_factory: StartServer, haproxy_factory: Callable[[list[ServerProcess]], Haproxy],
        certs: Path) -> None:
    """`retries` + `option redispatch`: the seconds before the checks notice cost no client."""
    first, second = server_factory(*BEHIND_HAPROXY), server_factory(*BEHIND_HAPROXY)
    haproxy = haproxy_factory([first, second])
    # With its checks off, HAProxy keeps the killed server UP and leastconn keeps choosing it.
    assert haproxy.command("disable health webscale/pi1").strip() == ""
    first.proc.send_signal(signal.SIGKILL)
    first.proc.wait(timeout=5 * UNIT)
    clients = 20
    ctx = client_ssl_context(certs / "ca.pem")

    async def main() -> list[ClientConnection | BaseException]:
        results = await asyncio.gather(
            *(connect(haproxy.url, ssl=ctx, open_timeout=10 * UNIT) for _ in range(clients)),
            return_exceptions=True)
        opened = [ws for ws in results if isinstance(ws, ClientConnection)]
        await asyncio.gather(*(send_one(ws, i) for i, ws in enumerate(opened)))
        await asyncio.to_thread(wait_for, lambda: decoded(second) == len(opened),
                                what="every client's message decoded on the live server")
        await asyncio.gather(*(ws.close() for ws in opened))
        return results

    async def send_one(ws: ClientConnection, client_id: int) -> None:
        await asyncio.wait_for(ws.send(telemetry_json(client_id, 0, size=1024)), 5 * UNIT)

    results = asyncio.run(asyncio.wait_for(main(), 20 * UNIT))
    failures = [r for r in results if isinstance(r, BaseException)]
    assert not failures, f"{len(failures)} of {clients} connects failed: {failures[:3]!r}"
    rows = haproxy.servers()
    # Still in rotation ("no check" is UP without checks): only the retries saved the clients.
    assert rows["pi1"]["status"] == "no check"
    # leastconn tried the empty dead server first for each client, then redispatched to pi2.
    assert int(rows["pi1"]["wredis"]) > 0
    assert rows["pi2"]["stot"] == str(clients)


def test_servers_see_the_client_address_not_the_balancer(
        server_factory: StartServer, haproxy_factory: Callable[[list[ServerProcess]], Haproxy],
        certs: Path) -> None:
    """send-proxy-v2: the handler, the per-address limits and the logs see each client's own
    address (clients here connect from 127.0.0.2 and 127.0.0.3), while HAProxy's health checks
    (LOCAL headers, from 127.0.0.1) keep passing."""
    server = server_factory(*BEHIND_HAPROXY, "--decode", "none",
                            "--handler", "server_handlers:peer_address",
                            "--max-connections-per-ip", "2")
    haproxy = haproxy_factory([server])
    ctx = client_ssl_context(certs / "ca.pem")

    async def open_from(source: str) -> ClientConnection:
        return await connect(haproxy.url, ssl=ctx, open_timeout=10 * UNIT,
                             local_addr=(source, 0))

    async def whoami(ws: ClientConnection) -> list[object]:
        await ws.send("who am I?")
        return json.loads(await asyncio.wait_for(ws.recv(), 5 * UNIT))  # type: ignore[no-any-return]

    async def main() -> None:
        held = [await open_from("127.0.0.2") for _ in range(2)]
        for ws in held:
            # The client's own address and port: the header carries both.
            assert await whoami(ws) == ["127.0.0.2", ws.local_address[1]]
        # The limit counts 127.0.0.2, not HAProxy: its third connection is closed before TLS,
        # and HAProxy passes the close on.
        try:
            extra = await open_from("127.0.0.2")
        except (OSError, ssl.SSLError, EOFError, WebSocketException):
            pass
        else:
            await extra.close()
            raise AssertionError("a third connection from 127.0.0.2 was accepted")
        other = await open_from("127.0.0.3")
        assert await whoami(other) == ["127.0.0.3", other.local_address[1]]
        for ws in [*held, other]:
            await ws.close()

    asyncio.run(asyncio.wait_for(main(), 30 * UNIT))
    stats = server.stats()
    assert stats["connections_rejected_by_reason"]["per_ip_connections"] == 1
    assert stats["connections_rejected_by_reason"]["proxy_header"] == 0
    assert "refused a connection from 127.0.0.2:" in server.stderr()
    # The checks went on passing throughout (a LOCAL header is never limited).
    row = haproxy.servers()["pi1"]
    assert row["status"] == "UP" and row["check_status"] == "L7OK"
