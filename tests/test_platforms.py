"""What runs where: the poller choice at start-up, and every Linux-only call degrading with a
message where the platform lacks it (simulated here by taking the attribute away).

The server tests run a second time in CI with `--poller poll` (the generic `selectors` path that
BSD and macOS take with kqueue); `test_the_server_logs_its_poller` then shows the servers really
used it. kqueue itself is not run here.
"""

from __future__ import annotations

import logging
import os
import select
import socket
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

from helpers import ROOT, UNIT, ServerProcess, wait_for
from webscale import cli, limits, pool, snapshots, supervisor, systemd
from webscale.config import Config
from webscale.errors import ConfigError
from webscale.loop import EVENT_READ, EVENT_WRITE, POLLER_ENV, EventLoop, available_pollers
from webscale.loop import make_poller

StartServer = Callable[..., ServerProcess]
LINUX = sys.platform.startswith("linux")


def expected_poller() -> str:
    """The poller a server started now picks: it inherits this process's environment."""
    poller = make_poller()
    poller.close()
    return poller.name


# -- the poller --------------------------------------------------------------------------------

@pytest.mark.parametrize("kind", available_pollers())
def test_every_available_poller_drives_the_loop(kind: str) -> None:
    """Readable, writable and timers through each poller this platform has."""
    loop = EventLoop(poller=kind)
    left, right = socket.socketpair()
    seen: list[str] = []

    class Handler:
        def on_readable(self) -> None:
            seen.append(left.recv(16).decode())
            loop.modify(left, EVENT_WRITE, self)

        def on_writable(self) -> None:
            seen.append("writable")
            loop.unregister(left)
            loop.stop()

    try:
        loop.register(left, EVENT_READ, Handler())
        loop.call_later(0.01, right.send, b"ping")
        loop.call_later(5 * UNIT, loop.stop)  # a bound if nothing fires
        loop.run_forever()
        assert seen == ["ping", "writable"]
    finally:
        loop.close()
        left.close()
        right.close()


def test_a_bad_poller_name_is_a_config_error_naming_the_variable() -> None:
    with pytest.raises(ConfigError, match=rf"^{POLLER_ENV}='bogus': not a poller \(this platform "
                                          r"has: .*poll"):
        make_poller("bogus")


@pytest.mark.skipif(hasattr(select, "kqueue"), reason="this platform has kqueue")
def test_a_poller_this_platform_lacks_says_so() -> None:
    with pytest.raises(ConfigError, match="'kqueue': not available on this platform"):
        make_poller("kqueue")


def test_the_variable_picks_the_poller_and_is_logged(monkeypatch: pytest.MonkeyPatch,
                                                     caplog: pytest.LogCaptureFixture) -> None:
    monkeypatch.setenv(POLLER_ENV, "poll")
    with caplog.at_level(logging.INFO, logger="webscale.loop"):
        loop = EventLoop()
    loop.close()
    assert loop.poller_name == "PollSelector"
    assert f"PollSelector poller, as {POLLER_ENV}=poll asks" in caplog.text


@pytest.mark.parametrize("workers", ["1", "2"])
def test_the_server_logs_its_poller(server_factory: StartServer, workers: str) -> None:
    server = server_factory("--workers", workers, "--no-tls")
    name = expected_poller()
    # One `serving ...` line per process that serves: the single process, or each worker.
    wait_for(lambda: server.stderr().count(f"pool threads, {name} poller") == int(workers),
             10, what=f"{workers} 'serving ... {name} poller' line(s)")


@pytest.mark.parametrize(("value", "workers", "complaint"), [
    ("bogus", "1", "not a poller"),
    ("bogus", "2", "not a poller"),
    *([("kqueue", "1", "not available on this platform")] if not hasattr(select, "kqueue")
      else []),
])
def test_a_bad_poller_stops_the_start_with_one_line(tmp_path: Path, value: str, workers: str,
                                                   complaint: str) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "webscale", "serve", "--host", "127.0.0.1", "--port", "0",
         "--no-tls", "--admin", "off", "--workers", workers],
        env={**os.environ, POLLER_ENV: value, "PYTHONPATH": str(ROOT)}, cwd=tmp_path,
        capture_output=True, text=True, timeout=30 * UNIT, check=False)
    assert result.returncode == 2, result.stderr
    assert f"webscale: {POLLER_ENV}={value!r}: {complaint}" in result.stderr
    assert "Traceback" not in result.stderr
    assert "listening on" not in result.stdout


# -- Linux-only calls, absent --------------------------------------------------------------------

def test_bench_client_binds_a_source_address_without_ip_bind_address_no_port(
        monkeypatch: pytest.MonkeyPatch) -> None:
    from bench_client import transport

    listener = socket.create_server(("127.0.0.1", 0))
    try:
        if LINUX:  # where it exists, the option is set on the socket
            assert transport.source_binding_note() is None
            sock = transport.start_connect(listener.getsockname(), "127.0.0.1")
            assert transport.IP_BIND_ADDRESS_NO_PORT is not None
            assert sock.getsockopt(socket.IPPROTO_IP, transport.IP_BIND_ADDRESS_NO_PORT) == 1
            sock.close()
        monkeypatch.setattr(transport, "IP_BIND_ADDRESS_NO_PORT", None)  # as off Linux
        note = transport.source_binding_note()
        assert note is not None and "Linux-only" in note and "--source-addrs" in note
        sock = transport.start_connect(listener.getsockname(), "127.0.0.1")
        try:
            wait_for(lambda: select.select([], [sock], [], 0)[1], 5, what="the connect")
            transport.connect_result(sock)  # connected, from the bound source address
            assert sock.getsockname()[0] == "127.0.0.1"
            if LINUX:
                assert sock.getsockopt(socket.IPPROTO_IP, 24) == 0  # never set
        finally:
            sock.close()
    finally:
        listener.close()


@pytest.mark.parametrize(("raw", "platform", "address"), [
    ("@/org/systemd/notify", "linux", "\0/org/systemd/notify"),
    ("@/org/systemd/notify", "darwin", None),
    ("@/org/systemd/notify", "freebsd14", None),
    ("/run/systemd/notify", "darwin", "/run/systemd/notify"),
    ("vsock:2:1234", "linux", None),
])
def test_notify_socket_names_off_linux(raw: str, platform: str, address: str | None,
                                       caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING, logger="webscale.systemd"):
        assert systemd._notify_address(raw, platform) == address
    if address is None:
        assert f"NOTIFY_SOCKET={raw!r}" in caplog.text
        assert "not notifying the service manager" in caplog.text
        if raw.startswith("@"):
            assert "exist only on Linux" in caplog.text
    else:
        assert not caplog.text


def test_unix_sockets_without_sock_cloexec(monkeypatch: pytest.MonkeyPatch,
                                           tmp_path: Path) -> None:
    """macOS has no SOCK_CLOEXEC: sd_notify and the workers' datagram sockets work without it,
    and stay close-on-exec (PEP 446)."""
    monkeypatch.delattr(socket, "SOCK_CLOEXEC", raising=False)
    manager = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    manager.bind(str(tmp_path / "notify"))
    notifier = systemd.SystemdNotifier({"NOTIFY_SOCKET": str(tmp_path / "notify")})
    try:
        manager.settimeout(5 * UNIT)
        assert notifier.ready()
        assert manager.recv(4096) == b"READY=1"
        assert notifier._sock is not None and not notifier._sock.get_inheritable()
        worker_sock = snapshots._datagram_socket(tmp_path / "worker.sock")
        assert not worker_sock.get_inheritable()
        worker_sock.close()
    finally:
        notifier.close()
        manager.close()


def test_workers_share_one_listening_socket_without_reuseport_balancing(
        monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture) -> None:
    assert supervisor.kernel_balances_reuseport() is LINUX
    monkeypatch.setattr(supervisor, "kernel_balances_reuseport", lambda: False)  # BSD, macOS
    sup = supervisor.Supervisor(Config(host="127.0.0.1", port=0, tls=False, workers=2,
                                       admin="off").validate(), [])
    try:
        with caplog.at_level(logging.INFO, logger="webscale.supervisor"):
            sup._bind()
        assert sup.reserved is None and len(sup.shared) == 1
        assert "SO_REUSEPORT balancing is Linux-only" in caplog.text
        # Listening already, for the workers that inherit it.
        client = socket.create_connection(sup.shared[0].getsockname()[:2], timeout=5 * UNIT)
        client.close()
    finally:
        sup._cleanup()


def test_pool_threads_without_sched_batch(monkeypatch: pytest.MonkeyPatch,
                                          caplog: pytest.LogCaptureFixture) -> None:
    def policy() -> int | None:
        getter = getattr(os, "sched_getscheduler", None)
        return getter(0) if getter else None

    if hasattr(os, "SCHED_BATCH"):  # where it exists, pool threads run under it
        batch = pool.WorkerPool(1)
        try:
            assert batch.submit(policy).result(timeout=5 * UNIT) == os.SCHED_BATCH
        finally:
            batch.shutdown()
    monkeypatch.delattr(os, "SCHED_BATCH", raising=False)
    with caplog.at_level(logging.DEBUG, logger="webscale.pool"):
        plain = pool.WorkerPool(1)
    try:
        assert plain.submit(policy).result(timeout=5 * UNIT) in (None, os.SCHED_OTHER)
    finally:
        plain.shutdown()
    assert "no SCHED_BATCH here (Linux-only)" in caplog.text


def test_workers_auto_without_sched_getaffinity(monkeypatch: pytest.MonkeyPatch) -> None:
    if hasattr(os, "sched_getaffinity"):
        assert cli.available_cores() == len(os.sched_getaffinity(0))
    monkeypatch.delattr(os, "sched_getaffinity", raising=False)
    assert cli.available_cores() == (os.cpu_count() or 1)


def test_open_files_limit_without_proc(monkeypatch: pytest.MonkeyPatch, tmp_path: Path,
                                       caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.DEBUG, logger="webscale.limits"):
        assert limits._linux_nr_open(str(tmp_path / "nr_open")) is None
    assert "trying fixed open-files limits" in caplog.text
    monkeypatch.setattr(limits, "_linux_nr_open", lambda: None)
    infinity = limits.resource.RLIM_INFINITY
    assert limits._targets(1024, infinity) == [1_048_576, 65_536, 10_240]


def test_proc_benchmarks_stop_with_one_line_without_proc(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.syspath_prepend(str(ROOT / "benchmarks"))
    import server_cost

    if Path("/proc/self/stat").exists():
        server_cost.require_proc("benchmarks/x.py")  # nothing happens
    with pytest.raises(SystemExit) as stopped:
        server_cost.require_proc("benchmarks/x.py", proc=tmp_path)
    assert stopped.value.code == 2
    assert "benchmarks/x.py: measures the server from /proc" in capsys.readouterr().err
