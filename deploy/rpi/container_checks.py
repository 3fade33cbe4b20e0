#!/usr/bin/env python3
"""The checks that deploy/rpi/container-check.sh runs inside a booted Debian container.

How this works: the container is a fresh Debian bookworm with systemd as PID 1 and this
checkout bind-mounted read-only. As root, this script runs `install.sh` from the checkout, then
drives the service only the way an administrator would (`systemctl`, `journalctl`, `kill`,
`/etc/webscale/webscale.env`, drop-ins) and talks to it the way clients would (HTTPS and wss on
localhost, trusting the generated CA). Each check prints one line with its duration; the first
failure prints the service's status and journal and exits 1.

Standard library only, plus the `websockets` sync client copied out of the venv that install.sh
made, so that the checks can still run after `install.sh --uninstall` removed that venv. Run it
with Debian's own /usr/bin/python3 (3.11), never with the service's venv.
"""

from __future__ import annotations

import argparse
import contextlib
import http.client
import json
import os
import pwd
import re
import select
import shutil
import signal
import socket
import ssl
import subprocess
import sys
import textwrap
import time
import traceback
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Any

SERVICE = "webscale.service"
SOCKET_UNIT = "webscale.socket"
CONF_DIR = Path("/etc/webscale")
CA = CONF_DIR / "certs" / "ca.pem"
ENV_FILE = CONF_DIR / "webscale.env"
VENV = Path("/opt/webscale/venv")
UNIT_DIR = Path("/etc/systemd/system")
PLAIN_PORT = 8443
SOCKET_PORT = 443
# Where the websockets package is copied before the venv goes away (see module docstring).
CLIENT_LIB = Path("/run/webscale-check/lib")
# Set in the env file for the WebSocket checks: every message comes back as it came.
ECHO_OPTS = "--decode none --handler webscale.examples.echo:handle"
# What every command runs with: a root login's basics, plus the proxy and index settings that
# container-check.sh passed in for pip.
ENV = {
    "PATH": "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
    "HOME": "/root",
    "LANG": "C.UTF-8",
    "SYSTEMD_PAGER": "",
    "SYSTEMD_COLORS": "0",
    **{name: value for name, value in os.environ.items()
       if name.startswith("PIP_") or name.lower() in ("http_proxy", "https_proxy", "no_proxy")},
}


class CheckFailed(Exception):
    """A check found the service not doing what the README says."""


def expect(condition: object, message: str) -> None:
    if not condition:
        raise CheckFailed(message)


@dataclass
class Settings:
    repo: Path
    slow: float  # every deadline is multiplied by this (arm64 under qemu is several times slower)
    clients: WebSocketClients | None = None

    @property
    def ws(self) -> WebSocketClients:
        """The WebSocket helper, started on first use (the client library comes with install)."""
        if self.clients is None:
            self.clients = WebSocketClients()
        return self.clients

    def seconds(self, base: float) -> float:
        return base * self.slow


# --- processes, systemd, journal -----------------------------------------------------------

def run(argv: list[str], *, timeout: float, check: bool = True,
        input_text: str | None = None) -> subprocess.CompletedProcess[str]:
    result = subprocess.run(argv, check=False, capture_output=True, text=True, env=ENV,
                            timeout=timeout, input=input_text)
    if check and result.returncode != 0:
        raise CheckFailed(f"{' '.join(argv)} exited {result.returncode}:\n"
                          f"{result.stdout}{result.stderr}")
    return result


def systemctl(*args: str, timeout: float = 120, check: bool = True
              ) -> subprocess.CompletedProcess[str]:
    return run(["systemctl", "--no-pager", *args], timeout=timeout, check=check)


def show(unit: str, *properties: str) -> dict[str, str]:
    args = [arg for prop in properties for arg in ("-p", prop)]
    out = systemctl("show", unit, *args).stdout
    values = dict(line.split("=", 1) for line in out.splitlines() if "=" in line)
    return {prop: values.get(prop, "") for prop in properties}


def main_pid() -> int:
    return int(show(SERVICE, "MainPID")["MainPID"])


def journal_cursor() -> str:
    out = run(["journalctl", "--show-cursor", "-n", "0", "-q"], timeout=30).stdout
    match = re.search(r"-- cursor: (\S+)", out)
    expect(match, f"journalctl printed no cursor: {out!r}")
    assert match is not None
    return match.group(1)


def journal_after(cursor: str, *, unit: str | None = SERVICE) -> str:
    argv = ["journalctl", "--no-pager", "-o", "cat", f"--after-cursor={cursor}"]
    if unit is not None:
        argv += ["-u", unit]
    return run(argv, timeout=30).stdout


def wait_until(predicate: Callable[[], Any], timeout: float, what: str,
               interval: float = 0.2) -> Any:
    end = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > end:
            raise CheckFailed(f"timed out after {timeout:.0f}s waiting for {what}")
        time.sleep(interval)


def service_running() -> bool:
    state = show(SERVICE, "ActiveState", "SubState")
    return state == {"ActiveState": "active", "SubState": "running"}


def install(settings: Settings, *args: str, offline: bool = False) -> float:
    """Run install.sh from the read-only checkout; `offline`: in a network namespace of its
    own, so pip cannot reach any index (systemctl still reaches PID 1 over its Unix socket)."""
    argv = [str(settings.repo / "deploy" / "rpi" / "install.sh"), *args]
    if offline:
        argv = ["unshare", "--net", *argv]
    started = time.monotonic()
    result = run(argv, timeout=settings.seconds(300), check=False)
    elapsed = time.monotonic() - started
    print(result.stdout + result.stderr, end="", flush=True)
    expect(result.returncode == 0, f"install.sh {' '.join(args)} exited {result.returncode}")
    return elapsed


# --- clients ---------------------------------------------------------------------------------

def tls_context() -> ssl.SSLContext:
    return ssl.create_default_context(cafile=str(CA))


def https_get(port: int, path: str, timeout: float = 10.0,
              context: ssl.SSLContext | None = None, host: str = "localhost"
              ) -> tuple[int, bytes]:
    conn = http.client.HTTPSConnection(host, port, timeout=timeout,
                                       context=context or tls_context())
    try:
        conn.request("GET", path)
        response = conn.getresponse()
        return response.status, response.read()
    finally:
        conn.close()


def healthy(port: int) -> bool:
    try:
        return https_get(port, "/healthz", timeout=5)[0] == 200
    except OSError:
        return False


def websockets_client() -> ModuleType:
    """websockets.sync.client, imported from the copy made after the first install."""
    if str(CLIENT_LIB) not in sys.path:
        sys.path.insert(0, str(CLIENT_LIB))
    import websockets.sync.client

    return websockets.sync.client


def copy_client_library() -> None:
    (site,) = VENV.glob("lib/python3*/site-packages")
    shutil.rmtree(CLIENT_LIB, ignore_errors=True)
    shutil.copytree(site / "websockets", CLIENT_LIB / "websockets",
                    ignore=shutil.ignore_patterns("__pycache__"))


class WebSocketClients:
    """WebSocket clients, kept in a helper process of their own (this script, --ws-agent).

    websockets' sync client runs a thread per connection, and this process forks a subprocess
    for every systemctl and journalctl. Under qemu-user a fork while another thread runs can
    hang the child for good (seen on arm64: a forked python3 asleep in a futex, never reaching
    exec), so the threads live in a process that never forks and this one stays single-threaded.
    One JSON line per request and per reply over the helper's stdin and stdout.
    """

    def __init__(self) -> None:
        self.proc = subprocess.Popen([sys.executable, "-B", __file__, "--ws-agent"],
                                     stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
                                     env=ENV)

    def call(self, op: str, timeout: float, **args: Any) -> dict[str, Any]:
        assert self.proc.stdin is not None and self.proc.stdout is not None
        self.proc.stdin.write(json.dumps({"op": op, "timeout": timeout, **args}) + "\n")
        self.proc.stdin.flush()
        readable, _, _ = select.select([self.proc.stdout], [], [], timeout + 30)
        expect(readable, f"the WebSocket helper did not answer {op} within {timeout + 30:.0f}s")
        line = self.proc.stdout.readline()
        expect(line, f"the WebSocket helper exited ({self.proc.poll()}) during {op}")
        reply: dict[str, Any] = json.loads(line)
        expect("error" not in reply, f"WebSocket {op}: {reply.get('error')}")
        return reply

    @contextlib.contextmanager
    def connect(self, port: int, timeout: float = 20) -> Iterator[int]:
        """An open wss://localhost:port/ connection, by number; closed on the way out."""
        number = int(self.call("open", timeout, port=port)["id"])
        try:
            yield number
        finally:
            self.call("close", timeout, id=number)

    def echo(self, number: int, text: str, timeout: float = 20) -> None:
        reply = self.call("echo", timeout, id=number, text=text)["reply"]
        expect(reply == text, f"echo returned {reply!r} for {text!r}")

    def ping_ms(self, number: int, timeout: float) -> float:
        return float(self.call("ping", timeout, id=number)["ms"])

    def close_code(self, number: int, timeout: float) -> int | None:
        """The code of the close frame the server sent (None: the connection just ended)."""
        code = self.call("close_code", timeout, id=number)["code"]
        return None if code is None else int(code)

    def stop(self) -> None:
        if self.proc.stdin is not None:
            self.proc.stdin.close()
        try:
            self.proc.wait(30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


def ws_agent() -> int:
    """The helper side of WebSocketClients: runs requests from stdin, one JSON line each."""
    client = websockets_client()
    from websockets.exceptions import ConnectionClosed

    stacks: dict[int, contextlib.ExitStack] = {}
    connections: dict[int, Any] = {}
    for line in sys.stdin:
        request = json.loads(line)
        op, timeout = request["op"], float(request["timeout"])
        reply: dict[str, Any] = {}
        try:
            if op == "open":
                number = len(stacks)
                stacks[number] = contextlib.ExitStack()
                connections[number] = stacks[number].enter_context(client.connect(
                    f"wss://localhost:{request['port']}/", ssl=tls_context(), proxy=None,
                    open_timeout=timeout, close_timeout=10, compression=None))
                reply["id"] = number
            elif op == "close":
                stacks.pop(request["id"]).close()
                connections.pop(request["id"])
            elif op == "echo":
                ws = connections[request["id"]]
                ws.send(request["text"])
                reply["reply"] = ws.recv(timeout=timeout)
            elif op == "ping":
                started = time.monotonic()
                if not connections[request["id"]].ping().wait(timeout):
                    raise TimeoutError(f"no pong in {timeout:.0f}s")
                reply["ms"] = (time.monotonic() - started) * 1000
            elif op == "close_code":
                try:
                    message = connections[request["id"]].recv(timeout=timeout)
                except ConnectionClosed as closed:
                    reply["code"] = closed.rcvd.code if closed.rcvd is not None else None
                except TimeoutError:
                    raise TimeoutError(f"still open after {timeout:.0f}s") from None
                else:
                    raise ValueError(f"expected a close, received {message!r}")
            else:
                raise ValueError(f"unknown op {op!r}")
        except Exception as exc:
            reply = {"error": f"{type(exc).__name__}: {exc}"}
        print(json.dumps(reply), flush=True)
    for stack in stacks.values():
        stack.close()
    return 0


def set_env_opts(opts: str) -> None:
    """Make the env file's one active WEBSCALE_OPTS= line read `opts`, comments untouched."""
    lines = ENV_FILE.read_text().splitlines()
    active = [i for i, line in enumerate(lines) if line.startswith("WEBSCALE_OPTS=")]
    expect(len(active) == 1, f"{ENV_FILE} should have one active WEBSCALE_OPTS= line: {lines}")
    lines[active[0]] = f"WEBSCALE_OPTS={opts}"
    ENV_FILE.write_text("\n".join(lines) + "\n")


def restart_and_wait(settings: Settings, port: int = PLAIN_PORT) -> None:
    # The checks restart the service more often than the unit's StartLimitBurst allows a real
    # one (10 in 300 s): clear the counter so the limit does not stop a check.
    systemctl("reset-failed", SERVICE, timeout=settings.seconds(30))
    systemctl("restart", SERVICE, timeout=settings.seconds(120))
    expect(service_running(), f"not running after restart: {show(SERVICE, 'ActiveState')}")
    wait_until(lambda: healthy(port), settings.seconds(30), f"/healthz 200 on {port}")


# --- the checks, in the order they run -------------------------------------------------------

def check_fresh_install(settings: Settings) -> str:
    elapsed = install(settings)
    copy_client_library()
    return f"install.sh on a fresh system in {elapsed:.0f}s (read-only checkout)"


def check_ready(settings: Settings) -> str:
    state = show(SERVICE, "Type", "ActiveState", "SubState", "NRestarts", "StatusText",
                 "MemoryMax", "UnitFileState", "User")
    # Type=notify: `systemctl start` returned only after READY=1, so active/running means READY.
    expect(state["Type"] == "notify", f"Type={state['Type']}")
    expect(state["ActiveState"] == "active" and state["SubState"] == "running", str(state))
    expect(state["UnitFileState"] == "enabled", f"UnitFileState={state['UnitFileState']}")
    expect(state["StatusText"], "no STATUS= text from the server")
    expect(state["NRestarts"] == "0", f"NRestarts={state['NRestarts']}")
    expect(state["User"] == "webscale", f"User={state['User']}")
    expect(state["MemoryMax"] not in ("", "infinity"), f"MemoryMax={state['MemoryMax']}")
    # Debian's python3 and systemd share one architecture: install.sh must not widen the ABIs.
    arch_dropin = UNIT_DIR / "webscale.service.d" / "50-python-arch.conf"
    expect(not arch_dropin.exists(), f"install.sh wrote {arch_dropin}")
    owner = pwd.getpwuid(os.stat(f"/proc/{main_pid()}").st_uid).pw_name
    expect(owner == "webscale", f"the main process runs as {owner}")
    rss_kb = _rss_kb(main_pid())
    return (f"READY (Type=notify), STATUS={state['StatusText']!r}, "
            f"MemoryMax={int(state['MemoryMax']) >> 20} MiB, main process RSS {rss_kb} KiB")


def _rss_kb(pid: int) -> int:
    status = Path(f"/proc/{pid}/status").read_text()
    match = re.search(r"^VmRSS:\s+(\d+) kB", status, re.MULTILINE)
    return int(match.group(1)) if match else -1


def check_healthz(settings: Settings) -> str:
    status, body = https_get(PLAIN_PORT, "/healthz")
    expect(status == 200, f"/healthz: {status} {body!r}")
    # The README's own command, by host name (the certificate names it).
    hostname = socket.gethostname()
    curl = run(["curl", "-sS", "--fail", "--cacert", str(CA),
                f"https://{hostname}:{PLAIN_PORT}/healthz"], timeout=30)
    return f"/healthz 200 (urllib by localhost, curl by {hostname}: {curl.stdout.strip()!r})"


def check_ws_round_trip(settings: Settings) -> str:
    ws = settings.ws
    with ws.connect(PLAIN_PORT) as conn:
        ping_ms = ws.ping_ms(conn, settings.seconds(10))
    set_env_opts(ECHO_OPTS)
    restart_and_wait(settings)
    with ws.connect(PLAIN_PORT) as conn:
        ws.echo(conn, "hello from inside the container")
        ws.echo(conn, '{"n": 2}')
    return (f"wss ping/pong with the shipped flags ({ping_ms:.0f} ms); echo round trip with "
            f"WEBSCALE_OPTS={ECHO_OPTS} in {ENV_FILE}")


def check_env_file_examples(settings: Settings) -> str:
    """Every `#   WEBSCALE_OPTS=...` example that install.sh writes starts the service."""
    original = ENV_FILE.read_text()
    examples = re.findall(r"^#\s+WEBSCALE_OPTS=(.*)$", original, re.MULTILINE)
    expect(examples, f"no examples in {ENV_FILE}")
    help_text = run([str(VENV / "bin" / "webscale"), "serve", "--help"], timeout=60).stdout
    tried, not_yet = [], []
    try:
        for opts in examples:
            flags = [word for word in opts.split() if word.startswith("--")]
            if any(flag not in help_text for flag in flags):
                not_yet.append(opts)  # a flag this build does not have yet (comment says so)
                continue
            set_env_opts(opts)
            restart_and_wait(settings)
            tried.append(opts)
    finally:
        ENV_FILE.write_text(original)
    restart_and_wait(settings)
    expect(tried, "no example could be tried")
    note = f"; not in this build, skipped: {not_yet}" if not_yet else ""
    return f"each example in webscale.env starts the service: {tried}{note}"


def check_trust_in_nss(settings: Settings) -> str:
    """The README's certutil command makes NSS (Chromium's and Firefox's store) trust the CA."""
    db = Path("/run/webscale-check/nssdb")
    shutil.rmtree(db, ignore_errors=True)
    db.mkdir(parents=True)
    run(["certutil", "-N", "-d", f"sql:{db}", "--empty-password"], timeout=30)

    def tstclnt() -> subprocess.CompletedProcess[str]:
        # NSS's own TLS client: -Q ends after the handshake, where NSS has verified the chain
        # and the name (localhost) the way the browsers do; -4: the service listens on 0.0.0.0.
        return run(["tstclnt", "-4", "-Q", "-h", "localhost", "-p", str(PLAIN_PORT),
                    "-d", f"sql:{db}"], timeout=30, check=False, input_text="")

    before = tstclnt()
    expect(before.returncode != 0 and "SEC_ERROR_UNKNOWN_ISSUER" in before.stderr,
           f"without the CA, NSS should reject the server as of unknown issuer: "
           f"{before.returncode} {before.stdout}{before.stderr}")
    run(["certutil", "-d", f"sql:{db}", "-A", "-t", "C,,", "-n", "webscale CA",
         "-i", str(CA)], timeout=30)
    after = tstclnt()
    expect(after.returncode == 0, f"NSS with the CA: {after.returncode} {after.stderr}")
    shutil.rmtree(db)
    return "NSS (certutil -A -t C,,) rejects the server before, accepts it after"


def check_trust_on_device(settings: Settings) -> str:
    """The README's update-ca-certificates step: curl and Python trust it without --cacert."""
    # Left in the store afterwards (the container is thrown away; undoing it costs a minute of
    # openssl under qemu): the later checks name their CA file explicitly, which replaces the
    # system store in curl --cacert and ssl.create_default_context(cafile=...) alike.
    shutil.copy(CA, "/usr/local/share/ca-certificates/webscale-ca.crt")
    run(["update-ca-certificates"], timeout=settings.seconds(120))
    run(["curl", "-sS", "--fail", f"https://localhost:{PLAIN_PORT}/healthz"], timeout=30)
    status, _ = https_get(PLAIN_PORT, "/healthz", context=ssl.create_default_context())
    expect(status == 200, f"/healthz {status} with the system store")
    return "with ca.pem in /usr/local/share/ca-certificates: curl and Python trust it"


def check_reload(settings: Settings) -> str:
    pid = main_pid()
    old_der = _served_certificate()
    # What certbot's deploy hook does: new certificate and key in place, then reload.
    certs = CONF_DIR / "certs"
    run([str(VENV / "bin" / "python"), str(settings.repo / "scripts" / "gen_certs.py"),
         "--out", str(certs), "--force"], timeout=settings.seconds(60))
    shutil.chown(certs / "server.key", "root", "webscale")
    os.chmod(certs / "server.key", 0o640)
    cursor = journal_cursor()
    ws = settings.ws
    with ws.connect(PLAIN_PORT) as conn:
        ws.echo(conn, "before reload")
        systemctl("reload", SERVICE)
        wait_until(lambda: "certificate reloaded" in journal_after(cursor),
                   settings.seconds(30), "'certificate reloaded' in the journal")
        ws.echo(conn, "after reload, same connection")
        expect(main_pid() == pid, f"MainPID changed from {pid} to {main_pid()}")
    new_der = _served_certificate()
    expect(new_der != old_der, "new connections still get the old certificate")
    expect(new_der == ssl.PEM_cert_to_DER_cert((certs / "server.pem").read_text()),
           "new connections do not get the new server.pem")
    return (f"systemctl reload: PID {pid} kept, the open WebSocket still echoes, "
            "journal: 'certificate reloaded', new connections get the new certificate")


def _served_certificate() -> bytes:
    with socket.create_connection(("localhost", PLAIN_PORT), timeout=10) as raw, \
            tls_context().wrap_socket(raw, server_hostname="localhost") as tls:
        der = tls.getpeercert(binary_form=True)
    assert der is not None
    return der


def check_restart(settings: Settings) -> str:
    pid = main_pid()
    ws = settings.ws
    with ws.connect(PLAIN_PORT) as conn:
        ws.echo(conn, "before restart")
        started = time.monotonic()
        systemctl("restart", SERVICE, timeout=settings.seconds(120))
        elapsed = time.monotonic() - started
        code = ws.close_code(conn, settings.seconds(10))
    expect(code == 1001, f"the open WebSocket was closed with {code}, not 1001")
    expect(service_running() and main_pid() != pid, "not running on a new PID after restart")
    wait_until(lambda: healthy(PLAIN_PORT), settings.seconds(30), "/healthz after restart")
    return f"systemctl restart in {elapsed:.1f}s: close 1001, new PID {main_pid()} (was {pid})"


def check_stop(settings: Settings) -> str:
    ws = settings.ws
    with contextlib.ExitStack() as stack:
        clients = [stack.enter_context(ws.connect(PLAIN_PORT)) for _ in range(3)]
        for i, conn in enumerate(clients):
            ws.echo(conn, f"client {i}")
        started = time.monotonic()
        systemctl("stop", SERVICE, timeout=settings.seconds(120))
        elapsed = time.monotonic() - started
        codes = [ws.close_code(conn, settings.seconds(10)) for conn in clients]
    state = show(SERVICE, "ActiveState", "Result", "ExecMainCode", "ExecMainStatus")
    expect(codes == [1001] * len(clients), f"close codes {codes}, expected all 1001")
    expect(state["ActiveState"] == "inactive", str(state))
    expect(state["Result"] == "success", str(state))
    # ExecMainCode 1 is CLD_EXITED: the server exited by itself (status 0), not by a signal.
    expect(state["ExecMainCode"] == "1" and state["ExecMainStatus"] == "0", str(state))
    systemctl("reset-failed", SERVICE, timeout=settings.seconds(30))
    systemctl("start", SERVICE, timeout=settings.seconds(120))
    wait_until(lambda: healthy(PLAIN_PORT), settings.seconds(30), "/healthz after start")
    return (f"systemctl stop in {elapsed:.1f}s: exit status 0, Result=success, "
            f"{len(codes)} WebSockets closed with 1001; started again")


def check_watchdog(settings: Settings) -> str:
    pid = main_pid()
    restarts = int(show(SERVICE, "NRestarts")["NRestarts"])
    watchdog = show(SERVICE, "WatchdogUSec")["WatchdogUSec"]
    cursor = journal_cursor()
    started = time.monotonic()
    os.kill(pid, signal.SIGSTOP)  # a hung loop: no more WATCHDOG=1
    wait_until(lambda: main_pid() not in (0, pid) and service_running(),
               settings.seconds(120), "systemd to kill the stopped server and start a new one")
    elapsed = time.monotonic() - started
    log = journal_after(cursor, unit=None)
    expect("Watchdog timeout" in log, f"no 'Watchdog timeout' in the journal:\n{log}")
    now = int(show(SERVICE, "NRestarts")["NRestarts"])
    expect(now == restarts + 1, f"NRestarts {restarts} -> {now}")
    wait_until(lambda: healthy(PLAIN_PORT), settings.seconds(30), "/healthz after the watchdog")
    return (f"SIGSTOPped server killed by the watchdog (WatchdogSec={watchdog}) and "
            f"restarted after {elapsed:.0f}s")


def check_sigkill(settings: Settings) -> str:
    pid = main_pid()
    restarts = int(show(SERVICE, "NRestarts")["NRestarts"])
    started = time.monotonic()
    os.kill(pid, signal.SIGKILL)
    wait_until(lambda: main_pid() not in (0, pid) and service_running(),
               settings.seconds(60), "Restart= to start a new server")
    elapsed = time.monotonic() - started
    now = int(show(SERVICE, "NRestarts")["NRestarts"])
    expect(now == restarts + 1, f"NRestarts {restarts} -> {now}")
    wait_until(lambda: healthy(PLAIN_PORT), settings.seconds(30), "/healthz after SIGKILL")
    return f"SIGKILLed server restarted by Restart=on-failure after {elapsed:.1f}s"


def check_security_score(settings: Settings) -> str:
    readme = (settings.repo / "deploy" / "rpi" / "README.md").read_text()
    match = re.search(r"scores the unit ([0-9]+\.[0-9])", readme)
    expect(match, "deploy/rpi/README.md does not state the unit's score ('scores the unit N.N')")
    assert match is not None
    documented = float(match.group(1))
    out = run(["systemd-analyze", "security", "--no-pager", SERVICE], timeout=60).stdout
    score_match = re.search(r"Overall exposure level for webscale\.service: ([0-9.]+)", out)
    expect(score_match, f"no overall exposure level in:\n{out}")
    assert score_match is not None
    score = float(score_match.group(1))
    expect(score <= documented + 0.2, f"exposure {score} > README's {documented} + 0.2:\n{out}")
    return f"systemd-analyze security webscale: {score} (README: {documented})"


def check_port_443_with_capability(settings: Settings) -> str:
    """The README's other way to port 443: a capability drop-in plus --port 443."""
    readme = (settings.repo / "deploy" / "rpi" / "README.md").read_text()
    blocks = [textwrap.dedent(block) for block in
              re.findall(r"^ *```ini\n(.*?)^ *```", readme, re.DOTALL | re.MULTILINE)
              if "CapabilityBoundingSet=CAP_NET_BIND_SERVICE" in block]
    expect(len(blocks) == 1, "README should have one ini block granting CAP_NET_BIND_SERVICE")
    dropin_dir = UNIT_DIR / "webscale.service.d"
    dropin_dir.mkdir(exist_ok=True)
    dropin = dropin_dir / "override.conf"  # the file `systemctl edit` writes
    dropin.write_text(blocks[0])
    original = ENV_FILE.read_text()
    try:
        set_env_opts(f"{ECHO_OPTS} --port 443")
        systemctl("daemon-reload")
        restart_and_wait(settings, port=SOCKET_PORT)
        with settings.ws.connect(SOCKET_PORT) as conn:
            settings.ws.echo(conn, "on port 443 with CAP_NET_BIND_SERVICE")
    finally:
        dropin.unlink()
        ENV_FILE.write_text(original)
        systemctl("daemon-reload")
    restart_and_wait(settings)
    return "capability drop-in from the README + --port 443: /healthz and echo on 443"


def check_socket_activation(settings: Settings) -> str:
    expect(service_running(), "the plain service should be running before install.sh --socket")
    elapsed = install(settings, "--socket")
    expect(show(SOCKET_UNIT, "ActiveState")["ActiveState"] == "active", "socket not active")
    expect(service_running(), "service not running after install.sh --socket")
    wait_until(lambda: healthy(SOCKET_PORT), settings.seconds(30), "/healthz on 443")
    expect(not healthy(PLAIN_PORT), "still answering on 8443 in socket mode")
    with settings.ws.connect(SOCKET_PORT) as conn:
        settings.ws.echo(conn, "through webscale.socket")

    # Across a restart the socket stays open: connections made while no server process runs
    # wait in its queue (the kernel completes their TCP handshake) and the new process serves
    # them. Connect every 20 ms until the new server runs, then send each a request.
    pid = main_pid()
    systemctl("restart", "--no-block", SERVICE)
    waiting: list[socket.socket] = []
    refused = 0
    end = time.monotonic() + settings.seconds(60)
    while not (main_pid() not in (0, pid) and service_running()):
        expect(time.monotonic() < end, "no new server within the deadline")
        try:
            waiting.append(socket.create_connection(("localhost", SOCKET_PORT), timeout=10))
        except ConnectionRefusedError:
            refused += 1
        time.sleep(0.02)
    outcomes = [_get_healthz_on(sock, settings.seconds(30)) for sock in waiting]
    expect(refused == 0, f"{refused} connections refused across the restart")
    expect(len(waiting) >= 3, f"only {len(waiting)} connections made during the restart")
    expect("200" in outcomes, f"none of the queued connections was served: {outcomes}")
    others = {o: outcomes.count(o) for o in sorted(set(outcomes)) if o != "200"}

    # Socket activation proper: with the service stopped, a connection starts it.
    systemctl("stop", SERVICE)
    expect(show(SOCKET_UNIT, "ActiveState")["ActiveState"] == "active", "socket stopped too")
    status, _ = https_get(SOCKET_PORT, "/healthz", timeout=settings.seconds(60))
    expect(status == 200, f"/healthz {status} from the socket-activated service")
    expect(service_running(), "a connection to the socket did not start the service")
    # A connection the old process accepted just before SIGTERM is closed by its drain
    # (SSLEOFError here); the socket's promise is that none is refused.
    note = f"; closed by the old process: {others}" if others else ""
    return (f"install.sh --socket while the plain service ran ({elapsed:.0f}s); "
            f"{len(waiting)} connections made during a restart, none refused, "
            f"{outcomes.count('200')} answered 200{note}; a connection starts the stopped "
            "service")


def _get_healthz_on(sock: socket.socket, timeout: float) -> str:
    """GET /healthz over TLS on an already connected socket: the status, or the error's name."""
    try:
        sock.settimeout(timeout)
        with tls_context().wrap_socket(sock, server_hostname="localhost") as tls:
            tls.sendall(b"GET /healthz HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")
            head = tls.recv(64)
        return head.split(b" ")[1].decode() if head.startswith(b"HTTP/1.1 ") else repr(head)
    except OSError as exc:
        return type(exc).__name__
    finally:
        sock.close()


def check_offline_rerun(settings: Settings) -> str:
    elapsed = install(settings, offline=True)
    expect(show(SOCKET_UNIT, "LoadState")["LoadState"] == "not-found", "webscale.socket left")
    expect(service_running(), "not running after the offline re-run")
    wait_until(lambda: healthy(PLAIN_PORT), settings.seconds(30), "/healthz on 8443")
    expect(not healthy(SOCKET_PORT), "still answering on 443 after leaving socket mode")
    return f"install.sh re-run without network (back to 8443, no socket) in {elapsed:.0f}s"


def check_uninstall_purge(settings: Settings) -> str:
    uid = pwd.getpwnam("webscale").pw_uid
    install(settings, "--uninstall", "--purge")
    leftovers = [str(p) for p in (
        Path("/opt/webscale"), CONF_DIR, Path("/var/lib/webscale"),
        Path("/etc/sysctl.d/90-webscale.conf"),
        *UNIT_DIR.glob("webscale*"), *UNIT_DIR.glob("*/webscale*"),
        *Path("/tmp").glob("webscale-install.*"),
    ) if p.exists() or p.is_symlink()]
    expect(not leftovers, f"left behind: {leftovers}")
    for db in ("passwd", "group"):
        found = run(["getent", db, "webscale"], timeout=30, check=False)
        expect(found.returncode != 0, f"{db} still has webscale: {found.stdout}")
    units = systemctl("list-units", "--all", "--plain", "--no-legend", "webscale*").stdout
    files = systemctl("list-unit-files", "--plain", "--no-legend", "webscale*", check=False)
    expect(not units.strip(), f"units still loaded: {units}")
    expect(not files.stdout.strip(), f"unit files still there: {files.stdout}")
    owned = [p.name for p in Path("/proc").iterdir()
             if p.name.isdigit() and _owner_uid(p) == uid]
    expect(not owned, f"processes of the old webscale uid {uid}: {owned}")
    expect(not healthy(PLAIN_PORT) and not healthy(SOCKET_PORT), "something still answers")
    return ("--uninstall --purge: no files, units, drop-ins, user, group, venv or processes "
            "left (sysctl values stay until reboot)")


def _owner_uid(proc_dir: Path) -> int | None:
    try:
        return proc_dir.stat().st_uid
    except FileNotFoundError:
        return None


CHECKS: list[tuple[str, Callable[[Settings], str]]] = [
    ("fresh install", check_fresh_install),
    ("READY", check_ready),
    ("healthz", check_healthz),
    ("wss round trip", check_ws_round_trip),
    ("env file examples", check_env_file_examples),
    ("browser trust (NSS)", check_trust_in_nss),
    ("device trust", check_trust_on_device),
    ("reload", check_reload),
    ("restart", check_restart),
    ("stop", check_stop),
    ("watchdog", check_watchdog),
    ("SIGKILL", check_sigkill),
    ("security score", check_security_score),
    ("port 443 by capability", check_port_443_with_capability),
    ("socket activation", check_socket_activation),
    ("offline re-run", check_offline_rerun),
    ("uninstall --purge", check_uninstall_purge),
]


def diagnose() -> None:
    for argv in (["systemctl", "--no-pager", "status", SERVICE, SOCKET_UNIT],
                 ["journalctl", "--no-pager", "-n", "80", "-u", SERVICE, "-u", SOCKET_UNIT]):
        with contextlib.suppress(Exception):
            result = subprocess.run(argv, check=False, capture_output=True, text=True, env=ENV,
                                    timeout=30)
            print(f"--- {' '.join(argv)}\n{result.stdout}{result.stderr}", flush=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repo", type=Path, required=True, help="the read-only checkout")
    parser.add_argument("--slow", type=float, default=1.0,
                        help="multiply every deadline (arm64 under qemu: 4)")
    parser.add_argument("--only", nargs="*", default=None, help="run only these checks")
    args = parser.parse_args(argv)
    settings = Settings(repo=args.repo, slow=args.slow)
    try:
        return run_checks(settings, args.only)
    finally:
        if settings.clients is not None:
            settings.clients.stop()


def run_checks(settings: Settings, only: list[str] | None) -> int:
    total = time.monotonic()
    for name, check in CHECKS:
        if only is not None and name not in only:
            continue
        started = time.monotonic()
        try:
            detail = check(settings)
        except CheckFailed as exc:
            print(f"FAIL {name} after {time.monotonic() - started:.1f}s: {exc}", flush=True)
            diagnose()
            return 1
        except Exception:  # a client error, a timeout: the same report, with the traceback
            print(f"FAIL {name} after {time.monotonic() - started:.1f}s:", flush=True)
            traceback.print_exc(file=sys.stdout)
            diagnose()
            return 1
        print(f"ok   {time.monotonic() - started:6.1f}s  {name}: {detail}", flush=True)
    print(f"all checks passed in {time.monotonic() - total:.0f}s", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(ws_agent() if sys.argv[1:] == ["--ws-agent"] else main())
