"""How a supervisor reads its workers' figures at the moment an admin request asks for them.

How this works: each worker binds a unix datagram socket in the supervisor's run-time directory
(`worker-N.sock`) and registers a `SnapshotResponder` for it with its loop. When the supervisor's
admin listener is asked for /stats or /metrics, `SnapshotClient.gather` sends every live worker a
`snapshot SEQ` datagram from its own bound socket and waits, at most `timeout` seconds in all,
for the replies: `SEQ\\n` then the worker's `Server.snapshot()` as JSON, taken by the worker's
loop thread when the request arrived, so the figures are exact at that moment (not up to a
second old, as when each worker wrote a file once a second). A worker that does not answer in
time (hung, restarting, or busier than the deadline) is reported missing, not waited for; a
late answer carries an old SEQ and is thrown away.

Datagrams, not streams: one request and one reply of a few KiB (the snapshot is small and
bounded: fixed keys, fixed histogram bounds, one entry per close code or reason seen), so there
is no connection to accept, no partial read to resume, and a reply the supervisor's queue cannot
take is simply dropped (that worker shows as missing once).

The supervisor blocks in `gather` (bounded by `timeout`): it serves no clients, and its own
timers (heartbeat checks, the watchdog) are seconds apart.
"""

from __future__ import annotations

import logging
import os
import select
import socket
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import orjson

from .loop import EVENT_READ, EventLoop

logger = logging.getLogger(__name__)

_REQUEST = b"snapshot "
# Largest reply read: far above a snapshot's few KiB, far below the kernel's datagram limit.
_MAX_REPLY = 1 << 18
_REQUESTS_PER_EVENT = 16


def worker_socket_path(runtime_dir: Path, worker_id: int) -> Path:
    return runtime_dir / f"worker-{worker_id}.sock"


def _datagram_socket(path: Path) -> socket.socket:
    try:
        path.unlink()  # left by a previous incarnation of this worker
    except FileNotFoundError:
        pass
    # Close-on-exec already (PEP 446); macOS has no SOCK_CLOEXEC to ask for.
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    try:
        sock.bind(str(path))
        sock.setblocking(False)
    except OSError:
        sock.close()
        raise
    return sock


class SnapshotResponder:
    """A worker's side: answer each `snapshot SEQ` datagram with `SEQ\\n` + its snapshot."""

    def __init__(self, loop: EventLoop, path: Path,
                 snapshot: Callable[[], dict[str, Any]]) -> None:
        self.loop = loop
        self.path = path
        self.snapshot = snapshot
        self.sock: socket.socket | None = None

    def start(self) -> None:
        self.sock = _datagram_socket(self.path)
        self.loop.register(self.sock, EVENT_READ, self)

    def on_readable(self) -> None:
        sock = self.sock
        if sock is None:
            return
        for _ in range(_REQUESTS_PER_EVENT):
            try:
                data, address = sock.recvfrom(256)
            except (BlockingIOError, InterruptedError):
                return
            except OSError as exc:
                logger.debug("snapshot request not read: %s", exc)
                return
            if not address or not data.startswith(_REQUEST):
                continue
            reply = data[len(_REQUEST):] + b"\n" + orjson.dumps(self.snapshot())
            try:
                sock.sendto(reply, address)
            except OSError as exc:  # the supervisor gave up on this request, or is gone
                logger.debug("snapshot reply to %r not sent: %s", address, exc)

    def on_writable(self) -> None:  # pragma: no cover - never registered for writing
        pass

    def close(self) -> None:
        sock, self.sock = self.sock, None
        if sock is None:
            return
        try:
            self.loop.unregister(sock)
        except (KeyError, ValueError):
            pass
        sock.close()
        try:
            self.path.unlink()
        except OSError:
            pass


class SnapshotClient:
    """The supervisor's side: one bound socket to ask from and read the answers on."""

    def __init__(self, path: Path) -> None:
        self.sock = _datagram_socket(path)
        self.path = path
        self._seq = 0

    def gather(self, workers: dict[int, Path], timeout: float) -> dict[int, dict[str, Any] | None]:
        """Every listed worker's snapshot, or None for one that did not answer in time."""
        results: dict[int, dict[str, Any] | None] = dict.fromkeys(workers)
        self._discard_stale()
        self._seq += 1
        seq = str(self._seq).encode()
        waiting: dict[str, int] = {}
        for worker, path in workers.items():
            try:
                self.sock.sendto(_REQUEST + seq, str(path))
            except OSError as exc:  # not bound (starting, exited) or its queue is full
                logger.debug("worker %d not asked for a snapshot: %s", worker, exc)
                continue
            waiting[str(path)] = worker
        deadline = time.monotonic() + timeout
        poller = select.poll()
        poller.register(self.sock, select.POLLIN)
        while waiting:
            remaining = deadline - time.monotonic()
            if remaining <= 0 or not poller.poll(remaining * 1000):
                break
            try:
                data, address = self.sock.recvfrom(_MAX_REPLY)
            except (BlockingIOError, InterruptedError):
                continue
            head, _, body = data.partition(b"\n")
            if head != seq or address not in waiting:
                continue  # a late answer to an earlier request
            worker = waiting.pop(address)
            try:
                results[worker] = orjson.loads(body)
            except orjson.JSONDecodeError:
                logger.warning("worker %d sent an unreadable snapshot (%d bytes)", worker,
                               len(body))
        if waiting:
            logger.warning("worker(s) %s did not answer a snapshot request within %.1fs",
                           ", ".join(str(w) for w in sorted(waiting.values())), timeout)
        return results

    def _discard_stale(self) -> None:
        while True:
            try:
                self.sock.recv(_MAX_REPLY)
            except (BlockingIOError, InterruptedError):
                return
            except OSError:
                return

    def close(self) -> None:
        self.sock.close()
        try:
            os.unlink(self.path)
        except OSError:
            pass
