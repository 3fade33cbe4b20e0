"""snapshots.py in-process: workers' responders on a real loop, the supervisor's bounded gather
over real unix datagram sockets; a silent worker, an absent one and a late answer."""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from helpers import UNIT

from webscale.loop import EventLoop
from webscale.snapshots import SnapshotClient, SnapshotResponder, worker_socket_path


@pytest.fixture
def responders(tmp_path: Path) -> Iterator[dict[int, dict[str, Any]]]:
    """Workers 0 and 1 answering from a loop thread; their figures can be changed meanwhile."""
    loop = EventLoop()
    figures: dict[int, dict[str, Any]] = {0: {"worker": 0, "n": 0}, 1: {"worker": 1, "n": 0}}
    started = []
    for worker in figures:
        responder = SnapshotResponder(loop, worker_socket_path(tmp_path, worker),
                                      lambda w=worker: dict(figures[w]))
        responder.start()
        started.append(responder)
    stop = threading.Event()

    def run() -> None:
        while not stop.is_set():
            loop.run_once(max_wait=0.05)

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    yield figures
    stop.set()
    thread.join(5 * UNIT)
    for responder in started:
        responder.close()
    loop.close()


def test_gather_is_current_and_bounded(tmp_path: Path,
                                       responders: dict[int, dict[str, Any]]) -> None:
    client = SnapshotClient(tmp_path / "supervisor.sock")
    silent = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    silent.bind(str(worker_socket_path(tmp_path, 3)))  # bound, never answers: a hung worker
    try:
        workers = {i: worker_socket_path(tmp_path, i) for i in (0, 1, 2, 3)}  # 2: not there
        started = time.monotonic()
        results = client.gather(workers, timeout=0.3)
        took = time.monotonic() - started
        assert results == {0: {"worker": 0, "n": 0}, 1: {"worker": 1, "n": 0}, 2: None,
                           3: None}
        assert 0.3 <= took < 0.3 + 2 * UNIT  # waited for the silent one, and no longer
        # Figures as they are when asked, not a cached copy.
        responders[1]["n"] = 42
        assert client.gather({1: workers[1]}, timeout=2 * UNIT) == {1: {"worker": 1, "n": 42}}
        # The hung worker answers late (its reply to request 1): not taken for request 3's.
        request, supervisor = silent.recvfrom(256)
        assert request == b"snapshot 1"
        silent.sendto(b"1\n{\"late\": true}", supervisor)
        started = time.monotonic()
        assert client.gather({3: workers[3]}, timeout=0.2) == {3: None}
        assert time.monotonic() - started >= 0.2
        # Nothing to ask: nothing waited for.
        started = time.monotonic()
        assert client.gather({}, timeout=5) == {}
        assert time.monotonic() - started < 0.5
    finally:
        silent.close()
        client.close()
    assert not (tmp_path / "supervisor.sock").exists()


def test_a_restarted_worker_rebinds_its_path(tmp_path: Path) -> None:
    loop = EventLoop()
    path = worker_socket_path(tmp_path, 0)
    first = SnapshotResponder(loop, path, dict)
    first.start()
    assert first.sock is not None
    loop.unregister(first.sock)
    first.sock.close()  # died without cleaning up: the file stays
    assert path.exists()
    second = SnapshotResponder(loop, path, dict)
    second.start()  # a stale file is no obstacle
    second.close()
    assert not path.exists()
    loop.close()
