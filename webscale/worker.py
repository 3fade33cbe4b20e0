"""The worker side of `--workers N`: a worker's role, read from hidden arguments.

A worker is `webscale serve` started by the supervisor (supervisor.py) with its id, inherited
listening fds and a run-time directory in hidden arguments (`worker_arguments` writes them,
`add_worker_arguments` lets the command line read them, `role_from_args` turns them into a
`WorkerRole`), and `run_worker` serves with them. Everything else a worker does is a plain server.

/stats and /metrics with several workers: a worker has no admin listener of its own (--admin is
the supervisor's). It answers its supervisor's snapshot requests on `worker-N.sock` in the
run-time directory (snapshots.py), and the supervisor's one admin listener shows every worker's
figures as they are at the moment of the request.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import socket
from dataclasses import dataclass
from pathlib import Path

from .config import Config
from .snapshots import worker_socket_path


@dataclass(frozen=True, slots=True)
class WorkerRole:
    """Who this process is when a supervisor started it."""

    worker_id: int
    listen_fds: tuple[int, ...]
    runtime_dir: Path | None


def worker_arguments(worker_id: int, fds: list[int], runtime_dir: Path) -> list[str]:
    """The hidden arguments a supervisor appends to a worker's `webscale serve` command."""
    return ["--worker-id", str(worker_id), "--worker-fds", ",".join(map(str, fds)),
            "--worker-runtime-dir", str(runtime_dir)]


def add_worker_arguments(parser: argparse.ArgumentParser) -> None:
    """Hidden from --help: only a supervisor passes them."""
    parser.add_argument("--worker-id", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--worker-fds", default="", help=argparse.SUPPRESS)
    parser.add_argument("--worker-runtime-dir", type=Path, help=argparse.SUPPRESS)


def role_from_args(args: argparse.Namespace) -> WorkerRole | None:
    if getattr(args, "worker_id", None) is None:
        return None
    fds = tuple(int(fd) for fd in args.worker_fds.split(",") if fd)
    return WorkerRole(args.worker_id, fds, args.worker_runtime_dir)


def run_worker(config: Config, role: WorkerRole) -> int:
    """Serve as worker `role.worker_id`; the supervisor announces the URL, not us."""
    from .server import run

    sockets = [socket.socket(fileno=fd) for fd in role.listen_fds]
    for sock in sockets:
        os.set_inheritable(sock.fileno(), False)
    # The supervisor holds the admin listener; ours would clash with it (and with each other).
    config = dataclasses.replace(config, admin="off")
    snapshot_path = (worker_socket_path(role.runtime_dir, role.worker_id)
                     if role.runtime_dir is not None else None)
    # Without inherited sockets the server binds --host/--port itself with SO_REUSEPORT
    # (server._bind sets it whenever --workers > 1).
    return run(config, listen_sockets=sockets or None, worker_id=role.worker_id, announce=False,
               snapshot_path=snapshot_path)
