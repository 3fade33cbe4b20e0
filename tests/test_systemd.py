"""sd_notify and socket activation against real sockets, no systemd needed."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from helpers import require_tool
from webscale.systemd import SystemdNotifier, listen_fds

REPO = Path(__file__).resolve().parent.parent
# Five of the suite's deadline units (WEBSCALE_TEST_UNIT scales them on slow machines; read
# here rather than from helpers.py so these unit tests stand alone).
TIMEOUT = 5.0 * float(os.environ.get("WEBSCALE_TEST_UNIT", "1.0"))


@pytest.fixture
def notify_socket(tmp_path: Path) -> Iterator[tuple[socket.socket, str]]:
    """A datagram socket standing in for systemd's notify socket, bound to a path."""
    path = tmp_path / "notify"
    receiver = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    receiver.bind(str(path))
    receiver.settimeout(TIMEOUT)
    yield receiver, str(path)
    receiver.close()


def test_sends_ready_status_stopping_watchdog(notify_socket: tuple[socket.socket, str]) -> None:
    receiver, address = notify_socket
    notifier = SystemdNotifier({"NOTIFY_SOCKET": address})
    assert notifier.enabled
    assert notifier.ready()
    assert receiver.recv(4096) == b"READY=1"
    assert notifier.status("12 open, 40 accepted")
    assert receiver.recv(4096) == b"STATUS=12 open, 40 accepted"
    assert notifier.watchdog()
    assert receiver.recv(4096) == b"WATCHDOG=1"
    assert notifier.stopping("draining 12")
    assert receiver.recv(4096) == b"STOPPING=1\nSTATUS=draining 12"
    notifier.close()


def test_abstract_socket_name() -> None:
    name = f"webscale-test-{uuid.uuid4().hex}"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as receiver:
        receiver.bind("\0" + name)
        receiver.settimeout(TIMEOUT)
        notifier = SystemdNotifier({"NOTIFY_SOCKET": "@" + name})
        assert notifier.ready("listening on :8443")
        assert receiver.recv(4096) == b"READY=1\nSTATUS=listening on :8443"
        notifier.close()


def test_status_newline_cannot_inject_an_assignment(
    notify_socket: tuple[socket.socket, str],
) -> None:
    receiver, address = notify_socket
    notifier = SystemdNotifier({"NOTIFY_SOCKET": address})
    assert notifier.status("bad\nREADY=1")
    assert receiver.recv(4096) == b"STATUS=bad READY=1"
    notifier.close()


def test_reloading_carries_monotonic_usec(notify_socket: tuple[socket.socket, str]) -> None:
    receiver, address = notify_socket
    notifier = SystemdNotifier({"NOTIFY_SOCKET": address})
    assert notifier.reloading()
    first, second = receiver.recv(4096).split(b"\n")
    assert first == b"RELOADING=1"
    key, _, value = second.partition(b"=")
    assert key == b"MONOTONIC_USEC"
    assert int(value) > 0
    notifier.close()


def test_socket_is_created_once_and_close_on_exec(
    notify_socket: tuple[socket.socket, str],
) -> None:
    receiver, address = notify_socket
    notifier = SystemdNotifier({"NOTIFY_SOCKET": address})
    for _ in range(3):
        assert notifier.watchdog()
        assert receiver.recv(4096) == b"WATCHDOG=1"
    sock = notifier._sock
    assert sock is not None
    assert not os.get_inheritable(sock.fileno())
    assert not sock.getblocking()
    notifier.watchdog()
    assert notifier._sock is sock
    notifier.close()


def test_without_notify_socket_everything_is_a_no_op() -> None:
    notifier = SystemdNotifier({})
    assert not notifier.enabled
    assert not notifier.ready()
    assert not notifier.watchdog()
    assert notifier.watchdog_interval() is None


def test_unsupported_or_dead_socket_returns_false(tmp_path: Path) -> None:
    assert not SystemdNotifier({"NOTIFY_SOCKET": "vsock:2:1234"}).enabled
    notifier = SystemdNotifier({"NOTIFY_SOCKET": str(tmp_path / "nobody-listens")})
    assert notifier.enabled
    assert notifier.ready() is False  # ENOENT is logged, not raised
    notifier.close()


def test_reads_os_environ_by_default(
    monkeypatch: pytest.MonkeyPatch, notify_socket: tuple[socket.socket, str]
) -> None:
    receiver, address = notify_socket
    monkeypatch.setenv("NOTIFY_SOCKET", address)
    notifier = SystemdNotifier()
    assert notifier.ready()
    assert receiver.recv(4096) == b"READY=1"
    notifier.close()


@pytest.mark.parametrize(
    ("env", "expected"),
    [
        ({"WATCHDOG_USEC": "20000000"}, 10.0),
        ({"WATCHDOG_USEC": "3000000", "WATCHDOG_PID": str(os.getpid())}, 1.5),
        ({"WATCHDOG_USEC": "3000000", "WATCHDOG_PID": str(os.getpid() + 1)}, None),
        ({"WATCHDOG_USEC": "0"}, None),
        ({"WATCHDOG_USEC": "soon"}, None),
        ({"WATCHDOG_USEC": "3000000", "WATCHDOG_PID": "me"}, None),
        ({}, None),
    ],
)
def test_watchdog_interval_is_half_of_watchdog_usec(
    env: dict[str, str], expected: float | None
) -> None:
    assert SystemdNotifier(env).watchdog_interval() == expected


def test_listen_fds_ignores_another_process_and_unsets_env() -> None:
    env = {"LISTEN_PID": str(os.getpid() + 1), "LISTEN_FDS": "1", "LISTEN_FDNAMES": "web"}
    assert listen_fds(environ=env) == []
    assert env == {}


def test_listen_fds_keeps_env_when_asked() -> None:
    env = {"LISTEN_PID": str(os.getpid() + 1), "LISTEN_FDS": "1"}
    assert listen_fds(unset_env=False, environ=env) == []
    assert env == {"LISTEN_PID": str(os.getpid() + 1), "LISTEN_FDS": "1"}


def test_listen_fds_malformed_or_absent() -> None:
    assert listen_fds(environ={"LISTEN_PID": str(os.getpid()), "LISTEN_FDS": "x"}) == []
    assert listen_fds(environ={}) == []


# Socket activation is tested in a child process because fds 3.. are already taken inside
# pytest. LAUNCHER plays systemd: it moves the passed descriptors to 3.., sets LISTEN_PID to
# its own pid and execs (keeping the pid) the service, CHILD, which takes them and serves.
LAUNCHER = r"""
import fcntl, os, sys
passed = [int(fd) for fd in sys.argv[1].split(",")]
high = [fcntl.fcntl(fd, fcntl.F_DUPFD, 100) for fd in passed]
for fd in passed:
    os.close(fd)
for index, fd in enumerate(high):
    os.dup2(fd, 3 + index)  # dup2 makes the copy inheritable, as systemd leaves them
    os.close(fd)
os.environ.update(LISTEN_PID=str(os.getpid()), LISTEN_FDS=str(len(passed)),
                  LISTEN_FDNAMES=sys.argv[2])
os.execv(sys.executable, [sys.executable, "-c", sys.argv[3]])
"""

CHILD = r"""
import json, os, socket
from webscale.systemd import listen_fds_with_names
taken = listen_fds_with_names()
print(json.dumps({
    "names": [name for name, _ in taken],
    "fds": [sock.fileno() for _, sock in taken],
    "inheritable": [os.get_inheritable(sock.fileno()) for _, sock in taken],
    "stream": [sock.type == socket.SOCK_STREAM for _, sock in taken],
    "env": sorted(key for key in os.environ if key.startswith("LISTEN_")),
}), flush=True)
for name, sock in taken:
    conn, _ = sock.accept()
    conn.sendall(b"served by " + name.encode())
    conn.close()
"""


def _activate(fds: list[int], names: str) -> subprocess.Popen[str]:
    env = dict(os.environ, PYTHONPATH=str(REPO))
    return subprocess.Popen(
        [sys.executable, "-c", LAUNCHER, ",".join(map(str, fds)), names, CHILD],
        pass_fds=fds,
        env=env,
        stdout=subprocess.PIPE,
        text=True,
    )


def _fetch(address: tuple[str, int]) -> bytes:
    with socket.create_connection(address, timeout=TIMEOUT) as client:
        chunks = []
        while chunk := client.recv(4096):
            chunks.append(chunk)
        return b"".join(chunks)


def test_listen_fds_serves_on_passed_sockets() -> None:
    listeners = [socket.create_server(("127.0.0.1", 0)) for _ in range(2)]
    try:
        child = _activate([sock.fileno() for sock in listeners], "web:admin")
        assert child.stdout is not None
        report = json.loads(child.stdout.readline())
        assert report == {
            "names": ["web", "admin"],
            "fds": [3, 4],
            "inheritable": [False, False],
            "stream": [True, True],
            "env": [],
        }
        assert _fetch(listeners[0].getsockname()) == b"served by web"
        assert _fetch(listeners[1].getsockname()) == b"served by admin"
        assert child.wait(TIMEOUT) == 0
    finally:
        for sock in listeners:
            sock.close()


def test_listen_fds_skips_a_descriptor_that_is_not_a_socket() -> None:
    listener = socket.create_server(("127.0.0.1", 0))
    read_end, write_end = os.pipe()
    try:
        child = _activate([listener.fileno(), read_end], "web:junk")
        assert child.stdout is not None
        report = json.loads(child.stdout.readline())
        assert report["names"] == ["web"]
        assert report["env"] == []
        assert _fetch(listener.getsockname()) == b"served by web"
        assert child.wait(TIMEOUT) == 0
    finally:
        listener.close()
        os.close(read_end)
        os.close(write_end)


def test_listen_fds_with_systemds_own_launcher(tmp_path: Path) -> None:
    """The real systemd tool sets LISTEN_* and fd 3 the way PID 1 does for webscale.socket."""
    launcher = require_tool("systemd-socket-activate", "systemd")
    path = tmp_path / "activate.sock"
    env = dict(os.environ, PYTHONPATH=str(REPO))
    child = subprocess.Popen(
        [
            launcher,
            "--listen",
            str(path),
            "--fdname",
            "wss",
            sys.executable,
            "-c",
            CHILD,
        ],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    )
    try:
        deadline = time.monotonic() + TIMEOUT
        while not path.exists():
            assert time.monotonic() < deadline, "systemd-socket-activate did not listen"
            time.sleep(0.01)
        # It execs the service on the first connection, which then waits in the accept queue.
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as client:
            client.settimeout(TIMEOUT)
            client.connect(str(path))
            assert client.recv(4096) == b"served by wss"
        assert child.stdout is not None
        report = json.loads(child.stdout.readline())
        assert report["names"] == ["wss"]
        assert report["fds"] == [3]
        assert report["inheritable"] == [False]
        assert report["env"] == []
        assert child.wait(TIMEOUT) == 0
    finally:
        if child.poll() is None:
            child.kill()
            child.wait()
