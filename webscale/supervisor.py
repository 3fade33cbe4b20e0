"""Worker processes: `webscale serve --workers N` runs a supervisor and N worker processes.

How this works: the supervisor binds the port once, so `--port 0` resolves to one port that all
workers share and that stays reserved while a worker restarts. On Linux it binds without
listening (a bound socket takes no connections) and every worker binds its own `SO_REUSEPORT`
listener on that port, so the kernel spreads connections over the workers' loops; elsewhere, and
when systemd passed sockets ($LISTEN_FDS, which the supervisor takes), the workers inherit the
listening socket(s) and each accepts from them. Each worker is `python -m webscale <same
arguments> --port PORT` started in its own session (a terminal's Ctrl-C reaches only the
supervisor, which forwards it once), told its id, inherited fds and run-time directory by hidden
`--worker-*` arguments (see worker.py).

Workers speak sd_notify to the supervisor exactly as a single process speaks it to systemd: each
gets its own datagram socket as $NOTIFY_SOCKET and a $WATCHDOG_USEC, so its loop sends READY=1,
STATUS=, STOPPING=1 and WATCHDOG=1 (every second, from a loop timer). The supervisor plays systemd
for them and is the only process that talks to the real one:

* READY=1 (and the single `listening on URL` line on stdout) once every worker is ready;
* WATCHDOG=1 at half of $WATCHDOG_USEC from the supervisor's own loop, after checking that every
  worker is alive and heartbeating or is being replaced. A worker whose heartbeats stop for
  `--worker-hang-timeout` (10 s; a hung loop) is killed with SIGKILL and restarted by the
  supervisor, so one hung worker costs a restart of that worker, not of the service; a hung
  supervisor stops feeding systemd, which restarts everything. (So `NotifyAccess=main` would do;
  `all` is harmless.)
* STATUS= with every worker's connection counts; STOPPING=1 when a drain begins; RELOADING=1, the
  SIGHUP forwarded to every worker, then READY=1 once each has reloaded its certificate.

A worker that dies is restarted after a backoff that doubles from 0.1 s to 30 s while it keeps
dying young. SIGTERM/SIGINT are forwarded and the supervisor exits once every worker has drained
(0 if all exited cleanly) or kills the rest after --shutdown-timeout plus a margin. A worker
that fails before it ever listened on the first start (a bad --handler, say) stops everything.

/stats and /metrics with several workers: the supervisor holds the one admin listener (--admin;
admin.py). For each request it asks every ready worker for its snapshot over a unix datagram
socket in the run-time directory and waits at most `_SNAPSHOT_TIMEOUT` (snapshots.py): /stats is
the sum of the answers with each worker's own snapshot under `workers` and the ones that did not
answer in `workers_missing`; /metrics is every worker's series labelled `worker="i"`, plus
`webscale_worker_up`. Both are exact at the moment of the request. Nothing here uses asyncio: a
`webscale.loop.EventLoop` drives the supervisor through the same `process.ProcessScaffold` (signals,
status, watchdog, run loop) as a server.
"""

from __future__ import annotations

import logging
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from . import limits
from .admin import AdminListener, bind_admin
from .config import Config
from .loop import EVENT_READ, EventLoop
from .metrics import render_workers
from .process import ProcessScaffold, bind, urls
from .protocol import ProtocolLimits
from .snapshots import SnapshotClient, worker_socket_path
from .stats import sum_snapshots
from .supervisor_signals import SupervisorSignals
from .systemd import SystemdNotifier, listen_fds
from .worker import worker_arguments
from .worker_slot import WorkerSlot

logger = logging.getLogger(__name__)


# A worker's loop sends WATCHDOG=1 every second (half of the WATCHDOG_USEC we give it).
_HEARTBEAT_SECONDS = 1.0
# From exec to listening: imports, certificate load and bind take well under a second.
_WORKER_START_SECONDS = 30.0
# Restart backoff: quick for a one-off crash, doubling to a ceiling for a crash loop; a worker
# that lived this long before dying starts again from the first step.
_BACKOFF_FIRST = 0.1
_BACKOFF_MAX = 30.0
_STABLE_SECONDS = 30.0
# Exit statuses that mean "stopped as asked": drained (0), or signalled before its handler was in.
_CLEAN_EXITS = (0, -signal.SIGTERM, -signal.SIGINT)
# How long an admin request waits for the workers' snapshots. A worker answers from its loop,
# within one iteration (well under a millisecond idle, tens of milliseconds under a connect
# storm); one that takes longer is reported missing rather than stalling the supervisor.
_SNAPSHOT_TIMEOUT = 2.0


# -- the supervisor --------------------------------------------------------------------------
class _NotifyReader:
    def __init__(self, supervisor: Supervisor, slot: WorkerSlot) -> None:
        self.supervisor = supervisor
        self.slot = slot

    def on_readable(self) -> None:
        self.supervisor._read_notifications(self.slot)

    def on_writable(self) -> None:  # pragma: no cover - never registered for writing
        pass


class Supervisor(SupervisorSignals):
    def __init__(self, config: Config, argv: list[str]) -> None:
        self.config = config
        # The command line we were started with ("serve ..."); workers get it back plus --port.
        self.argv = argv
        self.loop = EventLoop()
        self.notifier = SystemdNotifier()
        self.scaffold = ProcessScaffold(self.loop, self.notifier, self.status_text,
                                        self._on_signal)
        self.scaffold.healthy = self._workers_accounted_for
        self.runtime_dir = Path(tempfile.mkdtemp(prefix="webscale-"))
        self.slots: list[WorkerSlot] = []
        self.reserved: socket.socket | None = None  # Linux: bound, not listening
        self.shared: list[socket.socket] = []  # otherwise: listening, inherited by workers
        self.admin: AdminListener | None = None
        self.snapshots: SnapshotClient | None = None
        self.started_at = time.time()
        self.announced = False
        self.draining = False
        self._sigint_count = 0
        self._awaiting_reload: set[int] = set()
        self.exit_code = 0

    # -- set-up -----------------------------------------------------------------------------
    def _bind(self) -> None:
        admin_address = self.config.admin_address()
        if admin_address is not None:
            # First: a taken admin port stops the start before any worker is spawned.
            config = self.config
            self.admin = AdminListener(
                self.loop, bind_admin(admin_address), self,
                config.connection_settings(),
                ProtocolLimits(max_message_size=config.max_message_size,
                               max_header_bytes=config.max_header_bytes,
                               max_headers=config.max_headers))
            self.snapshots = SnapshotClient(self.runtime_dir / "supervisor.sock")
        activated = listen_fds()
        if activated:
            logger.info("socket activation: %d socket(s) shared by %d workers",
                        len(activated), self.config.workers)
            self.shared = activated
            return
        reuseport = kernel_balances_reuseport()
        sock = bind(self.config.host, self.config.port, self.config.backlog,
                    reuseport=reuseport, listen=not reuseport)
        if reuseport:
            self.reserved = sock
        else:
            logger.info("SO_REUSEPORT balancing is Linux-only: the %d workers share one "
                        "listening socket and each accepts from it", self.config.workers)
            self.shared = [sock]

    def urls(self) -> list[str]:
        return urls([self.reserved] if self.reserved else self.shared, self.config.scheme)

    def _make_slot(self, index: int) -> WorkerSlot:
        path = str(self.runtime_dir / f"notify-{index}.sock")
        # Close-on-exec already (PEP 446); macOS has no SOCK_CLOEXEC to ask for.
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        sock.bind(path)
        sock.setblocking(False)
        slot = WorkerSlot(index, sock, path)
        self.loop.register(sock, EVENT_READ, _NotifyReader(self, slot))
        return slot

    # -- running ----------------------------------------------------------------------------
    def run(self) -> int:
        limits.raise_nofile_limit()
        if self.config.tls and self.config.cert is None:
            # Generate the first-start certificate here, once: workers doing it at the same
            # moment could each write half of a pair.
            from .certs import ensure_certs

            ensure_certs(self.config.certs_dir)
        try:
            self._bind()
            if self.admin is not None:
                self.admin.start()
                logger.info("admin endpoints (/healthz, /stats, /metrics) for every worker on %s",
                            self.admin.url)
            self.scaffold.install_signal_handlers((signal.SIGTERM, signal.SIGINT, signal.SIGHUP,
                                                   signal.SIGCHLD))
            self.slots = [self._make_slot(i) for i in range(self.config.workers)]
            for slot in self.slots:
                self._spawn(slot)
            self.loop.call_later(_HEARTBEAT_SECONDS, self._check_workers)
            self.scaffold.start_reporting()
            self.scaffold.run(after_iteration=self._reap)
        finally:
            self._cleanup()
        return self.exit_code

    def _spawn(self, slot: WorkerSlot) -> None:
        slot.restart_timer = None
        self._drain_notifications(slot)  # leftovers from the previous incarnation
        env = dict(os.environ)
        for key in ("NOTIFY_SOCKET", "WATCHDOG_USEC", "WATCHDOG_PID", "LISTEN_PID",
                    "LISTEN_FDS", "LISTEN_FDNAMES"):
            env.pop(key, None)
        fds = [sock.fileno() for sock in self.shared]
        env.update({
            "NOTIFY_SOCKET": slot.notify_path,
            "WATCHDOG_USEC": str(int(2 * _HEARTBEAT_SECONDS * 1_000_000)),
        })
        port = (self.reserved or self.shared[0]).getsockname()[1]
        argv = [sys.executable, "-m", "webscale", *self.argv, "--port", str(port),
                *worker_arguments(slot.index, fds, self.runtime_dir)]
        # Own session: a terminal's Ctrl-C goes to the supervisor only, which forwards it once.
        slot.proc = subprocess.Popen(argv, env=env, pass_fds=fds, stdin=subprocess.DEVNULL,
                                     start_new_session=True)
        slot.started_at = slot.last_heartbeat = self.loop.time()
        slot.ready = False
        slot.status = "starting"
        logger.info("worker %d started (pid %d)", slot.index, slot.proc.pid)

    def _reap(self) -> None:
        for slot in self.slots:
            if slot.proc is None:
                continue
            code = slot.proc.poll()
            if code is not None:
                self._worker_exited(slot, code)
        if self.draining and all(slot.proc is None for slot in self.slots):
            self.scaffold.stop()

    def _worker_exited(self, slot: WorkerSlot, code: int) -> None:
        assert slot.proc is not None
        pid, lived = slot.proc.pid, self.loop.time() - slot.started_at
        slot.proc, was_ready, slot.ready = None, slot.ready, False
        slot.exit_codes.append(code)
        self._awaiting_reload.discard(slot.index)
        self._maybe_reloaded()
        if self.draining:
            log = logger.info if code in _CLEAN_EXITS else logger.warning
            log("worker %d (pid %d) exited with %s", slot.index, pid, _describe_exit(code))
            if code not in _CLEAN_EXITS:
                self.exit_code = self.exit_code or 1
            return
        if not self.announced and not was_ready:
            logger.error("worker %d (pid %d) exited with %s before listening; stopping",
                         slot.index, pid, _describe_exit(code))
            self.exit_code = 1
            self.begin_shutdown("worker failed to start", signal.SIGTERM)
            return
        slot.quick_deaths = 0 if lived >= _STABLE_SECONDS else slot.quick_deaths + 1
        delay = min(_BACKOFF_MAX, _BACKOFF_FIRST * 2 ** max(0, slot.quick_deaths - 1))
        logger.warning("worker %d (pid %d) exited with %s after %.1fs; restarting in %.1fs",
                       slot.index, pid, _describe_exit(code), lived, delay)
        slot.status = "restarting"
        slot.restart_timer = self.loop.call_later(delay, self._spawn, slot)

    # -- notifications from workers ---------------------------------------------------------
    def _drain_notifications(self, slot: WorkerSlot) -> None:
        try:
            while slot.notify_sock.recv(4096):
                pass
        except (BlockingIOError, InterruptedError):
            pass

    def _read_notifications(self, slot: WorkerSlot) -> None:
        for _ in range(64):
            try:
                datagram = slot.notify_sock.recv(4096)
            except (BlockingIOError, InterruptedError):
                return
            if slot.proc is None:
                continue  # from a worker that has exited since
            for line in datagram.decode("utf-8", "replace").split("\n"):
                key, _, value = line.partition("=")
                if key == "WATCHDOG":
                    slot.last_heartbeat = self.loop.time()
                elif key == "STATUS":
                    slot.status = value
                elif key == "READY":
                    self._worker_ready(slot)

    def _worker_ready(self, slot: WorkerSlot) -> None:
        slot.last_heartbeat = self.loop.time()
        if not slot.ready:
            slot.ready = True
            assert slot.proc is not None
            logger.info("worker %d (pid %d) is listening", slot.index, slot.proc.pid)
            if slot.reload_when_ready:
                # SIGHUP arrived while it was starting: it may have loaded the old certificate.
                slot.reload_when_ready = False
                self._awaiting_reload.add(slot.index)
                self._signal_worker(slot, signal.SIGHUP)
        else:
            self._awaiting_reload.discard(slot.index)  # READY=1 again: its reload is done
            self._maybe_reloaded()
        if not self.announced and all(s.ready for s in self.slots):
            self.announced = True
            for url in self.urls():
                print(f"listening on {url}", flush=True)
            if self.admin is not None:
                print(f"admin on {self.admin.url}", flush=True)
            self.notifier.ready(self.status_text())

    # -- timers -----------------------------------------------------------------------------
    def _check_workers(self) -> None:
        """Kill a worker whose loop stopped heartbeating, or that never started listening."""
        now = self.loop.time()
        for slot in self.slots:
            if slot.proc is None or self.draining:
                continue
            if slot.ready and now - slot.last_heartbeat > self.config.worker_hang_timeout:
                logger.error("worker %d (pid %d) sent no heartbeat for %.1fs: killing it",
                             slot.index, slot.proc.pid, now - slot.last_heartbeat)
                slot.proc.kill()
            elif not slot.ready and now - slot.started_at > _WORKER_START_SECONDS:
                logger.error("worker %d (pid %d) did not listen within %.0fs: killing it",
                             slot.index, slot.proc.pid, _WORKER_START_SECONDS)
                slot.proc.kill()
        self.loop.call_later(_HEARTBEAT_SECONDS, self._check_workers)

    def _workers_accounted_for(self) -> bool:
        now = self.loop.time()
        for slot in self.slots:
            if slot.proc is None:
                continue  # exited: a restart is scheduled (or we are draining)
            if slot.ready and now - slot.last_heartbeat > self.config.worker_hang_timeout + 2:
                # Hung and not yet killed: something is wrong with us too.
                logger.warning("not feeding the systemd watchdog: a hung worker was not "
                               "replaced")
                return False
        return True

    # -- routes.StatusView: the admin listener's view of every worker --------------------------
    def _gather(self) -> dict[int, dict[str, Any] | None]:
        """Each worker's snapshot now, None for one not ready or not answering in time."""
        ready = {slot.index: worker_socket_path(self.runtime_dir, slot.index)
                 for slot in self.slots if slot.proc is not None and slot.ready}
        answers = (self.snapshots.gather(ready, _SNAPSHOT_TIMEOUT)
                   if ready and self.snapshots is not None else {})
        return {slot.index: answers.get(slot.index) for slot in self.slots}

    def snapshot(self) -> dict[str, Any]:
        """The workers' figures added up, each worker's own under `workers`."""
        workers = self._gather()
        answered = {index: snap for index, snap in workers.items() if snap is not None}
        total = sum_snapshots(answered.values())
        total.update({
            "uptime_seconds": time.time() - self.started_at, "started_at": self.started_at,
            "pid": os.getpid(), "worker": None,
            "workers": {str(index): snap for index, snap in answered.items()},
            "workers_missing": sorted(index for index, snap in workers.items() if snap is None),
        })
        return total

    def metrics_text(self) -> str:
        return render_workers(self._gather())

    def status_text(self) -> str:
        up = sum(1 for slot in self.slots if slot.ready)
        parts = [f"worker {slot.index}: {slot.status}" for slot in self.slots]
        state = "draining; " if self.draining else ""
        return f"{state}{up}/{len(self.slots)} workers up; " + "; ".join(parts)


def kernel_balances_reuseport() -> bool:
    """Whether SO_REUSEPORT sockets on one port share its connections: Linux only (BSD and
    macOS have the option, but there the last socket bound takes every connection)."""
    return sys.platform.startswith("linux") and hasattr(socket, "SO_REUSEPORT")


def _describe_exit(code: int) -> str:
    if code < 0:
        try:
            return signal.Signals(-code).name
        except ValueError:
            return f"signal {-code}"
    return f"status {code}"


def run_supervisor(config: Config, argv: list[str]) -> int:
    """`webscale serve --workers N` (N > 1): supervise N workers until they have drained."""
    return Supervisor(config, argv).run()

