"""The worker side of `--workers N`: a worker's role, and its peers' stats.

A worker is `webscale serve` started by the supervisor (supervisor.py) with its id, inherited
listening fds and a run-time directory in hidden arguments (`worker_arguments` writes them,
`add_worker_arguments` lets the command line read them, `role_from_args` turns them into a
`WorkerRole`), and `run_worker` serves with them. Everything else a worker does is a plain server.

/stats and /metrics with several workers: a request is answered by whichever worker accepted the
connection. /stats shows that worker's counters with its `worker` id and `pid`. /metrics labels
every series with `worker="i"` and shows all workers: each worker writes its snapshot to the
supervisor's run-time directory once a second and renders the others' latest files next to its
own live numbers (so the other workers' values may be up to a second old); sum over `worker` in
PromQL for service totals.
"""

from __future__ import annotations

import argparse
import logging
import os
import socket
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson

from .config import Config

logger = logging.getLogger(__name__)

@dataclass(frozen=True, slots=True)
class WorkerRole:
    """Who this process is when a supervisor started it."""

    worker_id: int
    listen_fds: tuple[int, ...]
    stats_dir: Path | None


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
    # Without inherited sockets the server binds --host/--port itself with SO_REUSEPORT
    # (server._bind sets it whenever --workers > 1).
    return run(config, listen_sockets=sockets or None, worker_id=role.worker_id, announce=False,
               peer_stats=_PeerStats(role) if role.stats_dir else None)


class _PeerStats:
    """Each worker's snapshot on disk, so any worker's /metrics can show all of them."""

    def __init__(self, role: WorkerRole) -> None:
        assert role.stats_dir is not None
        self.directory = role.stats_dir
        self.worker_id = role.worker_id

    def publish(self, snapshot: dict[str, Any]) -> None:
        # Write then rename: a reader sees the old file or the new one, never half of one.
        path = self.directory / f"worker-{self.worker_id}.json"
        partial = path.with_suffix(".tmp")
        try:
            partial.write_bytes(orjson.dumps(snapshot))
            os.replace(partial, path)
        except OSError as exc:
            logger.debug("cannot publish stats to %s: %s", path, exc)

    def others(self) -> list[tuple[int, dict[str, Any]]]:
        out = []
        for path in sorted(self.directory.glob("worker-*.json")):
            worker_id = int(path.stem.rsplit("-", 1)[1])
            if worker_id == self.worker_id:
                continue
            try:
                out.append((worker_id, orjson.loads(path.read_bytes())))
            except (OSError, orjson.JSONDecodeError):
                continue  # that worker is restarting; its series reappear with it
        return out

    def render_metrics(self, own_snapshot: dict[str, Any]) -> str:
        """Every worker's series, labelled worker="i", one block per metric family."""
        from .metrics import render_prometheus

        workers = sorted([(self.worker_id, own_snapshot), *self.others()], key=lambda w: w[0])
        return _merge_families(render_prometheus(snapshot, f'worker="{worker_id}"')
                               for worker_id, snapshot in workers)


def _merge_families(texts: Iterable[str]) -> str:
    """Concatenate exposition texts, keeping one HELP/TYPE per family with all its samples
    together (a family split in two is an error for Prometheus' parser)."""
    families: dict[str, list[str]] = {}
    current: list[str] = []
    for text in texts:
        for line in text.splitlines():
            if line.startswith("# HELP "):
                name = line.split(" ", 3)[2]
                current = families.setdefault(name, [line])
            elif line.startswith("# TYPE "):
                if len(current) == 1:
                    current.append(line)
            elif line:
                current.append(line)
    return "\n".join(line for lines in families.values() for line in lines) + "\n"
