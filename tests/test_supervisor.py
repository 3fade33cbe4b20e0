"""`webscale serve --workers 2`: a supervisor and its workers as real processes on 127.0.0.1."""

from __future__ import annotations

import asyncio
import os
import signal
import ssl
import threading
from collections.abc import Callable
from pathlib import Path

import pytest
from websockets.exceptions import ConnectionClosed
from websockets.asyncio.client import connect

from helpers import UNIT, ServerProcess, client_ssl_context, wait_for
from webscale.metrics import merge_families

StartServer = Callable[..., ServerProcess]

pytestmark = pytest.mark.skipif(not Path("/proc/self/stat").exists(),
                                reason="finds worker processes through /proc")


def children(pid: int) -> set[int]:
    """Pids whose parent is `pid` (zombies excluded: their descriptors are already closed)."""
    found = set()
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue  # exited while we looked
        # Fields after the parenthesised command name: state, ppid, ...
        state, ppid = stat.rsplit(")", 1)[1].split()[:2]
        if int(ppid) == pid and state != "Z":
            found.add(int(entry.name))
    return found


def gone(pid: int) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return True
    return stat.rsplit(")", 1)[1].split()[0] == "Z"


# The asyncio client, not websockets.sync: the sync client reads and writes one SSL object from
# two threads, which OpenSSL does not allow; with TLS 1.3 session tickets arriving while it sends
# its upgrade request, about one connection in 300 then stalls (seen on loopback, never with the
# asyncio client or a single-threaded raw client).
async def ws_round_trip(server: ServerProcess, ctx: ssl.SSLContext) -> None:
    """Connect, prove the session works with a ping, close: one client's whole life."""
    async with connect(server.url, ssl=ctx, open_timeout=5 * UNIT,
                       close_timeout=5 * UNIT) as ws:
        await asyncio.wait_for(await ws.ping(), 5 * UNIT)


def test_stats_and_metrics_name_the_worker(server_factory: StartServer) -> None:
    """The supervisor's admin listener speaks for both workers from the first request: it
    announces only once every worker is ready, and asks each for its figures per request."""
    server = server_factory("--workers", "2")
    workers = wait_for(lambda: len(c := children(server.proc.pid)) == 2 and c,
                       what="two worker processes")
    stats = server.stats()
    assert stats["pid"] == server.proc.pid and stats["worker"] is None
    assert stats["workers_missing"] == []
    assert {w["pid"] for w in stats["workers"].values()} == workers
    assert {w["worker"] for w in stats["workers"].values()} == {0, 1}
    assert stats["max_connections"] == sum(w["max_connections"]
                                           for w in stats["workers"].values())
    status, body = server.admin_get("/metrics")
    text = body.decode()
    assert status == 200
    for worker in ("0", "1"):
        assert f'webscale_connections_accepted_total{{worker="{worker}"}}' in text
        assert f'webscale_worker_up{{worker="{worker}"}} 1' in text
    types = [line for line in text.splitlines() if line.startswith("# TYPE ")]
    assert len(types) == len(set(types)), "a metric family appears twice"


def test_merge_families_keeps_each_family_together() -> None:
    one = ("# HELP a x\n# TYPE a gauge\na{worker=\"0\"} 1\n"
           "# HELP b y\n# TYPE b counter\nb{worker=\"0\"} 2\n")
    two = one.replace('"0"', '"1"')
    assert merge_families([one, two]).splitlines() == [
        "# HELP a x", "# TYPE a gauge", 'a{worker="0"} 1', 'a{worker="1"} 1',
        "# HELP b y", "# TYPE b counter", 'b{worker="0"} 2', 'b{worker="1"} 2',
    ]


def test_killed_worker_is_replaced_while_clients_keep_connecting(
    server_factory: StartServer,
) -> None:
    """SIGKILL one worker; new clients connect without a single failure throughout.

    Connections the killed worker held die with it; that is what SIGKILL means. What must not
    happen is a new client being refused or reset while the worker is gone or restarting. So
    the kill is made between two of the loop's connections (the lock), and the loop resumes as
    soon as the kernel has closed the dead worker's listener, i.e. during the restart.
    """
    server = server_factory("--workers", "2")
    supervisor = server.proc.pid
    workers = wait_for(lambda: len(c := children(supervisor)) == 2 and c,
                       what="two worker processes")
    ctx = client_ssl_context(server.cafile)  # type: ignore[arg-type]
    between_clients = threading.Lock()
    stop = threading.Event()
    successes: list[int] = []
    failures: list[BaseException] = []

    async def clients() -> None:
        while not stop.is_set():
            with between_clients:  # blocks this thread's loop, which runs only this client
                try:
                    await ws_round_trip(server, ctx)
                except (OSError, ConnectionClosed, TimeoutError) as exc:
                    failures.append(exc)
                else:
                    successes.append(1)

    thread = threading.Thread(target=asyncio.run, args=(clients(),), daemon=True)
    thread.start()
    try:
        wait_for(lambda: len(successes) >= 5, what="clients before the kill")
        victim = min(workers)
        with between_clients:
            os.kill(victim, signal.SIGKILL)
            wait_for(lambda: gone(victim), what="the killed worker to exit")
            during = len(successes)
        replaced = wait_for(
            lambda: len(c := children(supervisor)) == 2 and victim not in c and c,
            what="a replacement worker")
        (new_worker,) = replaced - workers
        wait_for(lambda: f"(pid {new_worker}) is listening" in server.stderr(),
                 what="the replacement to listen")
        # Keep connecting once the replacement listens; the kernel now spreads new clients
        # over both workers again, and /stats reaches the newcomer too.
        wait_for(lambda: len(successes) >= during + 20, units=20,
                 what="clients after the replacement")
        wait_for(lambda: new_worker in {w["pid"] for w in server.stats()["workers"].values()},
                 units=10, what="the replacement's figures in the supervisor's /stats")
    finally:
        stop.set()
        thread.join(10 * UNIT)
    assert failures == []
    assert len(successes) > during >= 5
    log = server.stderr()
    assert f"worker 0 (pid {victim}) exited with SIGKILL" in log or \
        f"worker 1 (pid {victim}) exited with SIGKILL" in log
    assert "restarting in 0.1s" in log


def test_sigterm_drains_every_worker_and_the_supervisor_exits_0(
    server_factory: StartServer,
) -> None:
    server = server_factory("--workers", "2")
    supervisor = server.proc.pid
    workers = wait_for(lambda: len(c := children(supervisor)) == 2 and c,
                       what="two worker processes")
    ctx = client_ssl_context(server.cafile)  # type: ignore[arg-type]

    async def main() -> list[int | None]:
        sessions = [await connect(server.url, ssl=ctx, open_timeout=5 * UNIT)
                    for _ in range(8)]
        for ws in sessions:
            await asyncio.wait_for(await ws.ping(), 5 * UNIT)
        server.signal(signal.SIGTERM)
        codes = []
        for ws in sessions:
            with pytest.raises(ConnectionClosed) as closed:
                await asyncio.wait_for(ws.recv(), 10 * UNIT)
            codes.append(closed.value.rcvd.code if closed.value.rcvd else None)
        return codes

    assert asyncio.run(main()) == [1001] * 8
    assert server.wait() == 0
    assert all(gone(pid) for pid in workers)
    log = server.stderr()
    assert log.count("exited with status 0") == 2
    assert "SIGTERM: draining 2 workers" in log


def test_worker_that_cannot_start_stops_the_supervisor(server_factory: StartServer) -> None:
    with pytest.raises(AssertionError, match="server exited 1"):
        server_factory("--workers", "2", "--handler", "no_such_module:handle")


def test_hung_worker_is_killed_and_replaced(server_factory: StartServer) -> None:
    # SIGSTOP freezes a worker's loop exactly as a hang would: its heartbeats stop, its
    # listener stays open. The supervisor must kill it after --worker-hang-timeout and start
    # another, and clients must reach the service afterwards.
    server = server_factory("--workers", "2", "--worker-hang-timeout", "3")
    supervisor = server.proc.pid
    workers = wait_for(lambda: len(c := children(supervisor)) == 2 and c,
                       what="two worker processes")
    wait_for(lambda: server.stderr().count("is listening") >= 2, what="both workers listening")
    victim = min(workers)
    os.kill(victim, signal.SIGSTOP)
    try:
        replaced = wait_for(
            lambda: len(c := children(supervisor)) == 2 and victim not in c and c,
            units=15, what="the hung worker to be replaced")
    finally:
        if not gone(victim):
            os.kill(victim, signal.SIGCONT)
    (new_worker,) = replaced - workers
    log = server.stderr()
    assert f"(pid {victim}) sent no heartbeat for" in log and "killing it" in log
    wait_for(lambda: f"(pid {new_worker}) is listening" in server.stderr(),
             what="the replacement to listen")
    ctx = client_ssl_context(server.cafile)  # type: ignore[arg-type]
    for _ in range(6):  # the kernel spreads new connections over both workers
        asyncio.run(ws_round_trip(server, ctx))
