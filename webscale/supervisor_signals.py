"""What signals do to a supervisor and its workers: the drain, the reload, and the way out.

How this works: SIGTERM and SIGINT are forwarded to every worker; the first also starts the
drain (STOPPING=1, no more restarts), bounded by --drain-grace + --shutdown-timeout + a margin,
after which workers still running are killed. A second SIGINT sets exit code 130. SIGHUP is
forwarded to every ready worker (one still starting gets it once it is ready) and READY=1 follows
RELOADING=1 once each has reloaded its certificate. `_cleanup` releases everything on the way
out.

`SupervisorSignals` is a part of `supervisor.Supervisor` (a mixin, loop thread only).
"""

from __future__ import annotations

import logging
import shutil
import signal
import socket
from pathlib import Path
from typing import TYPE_CHECKING

from .admin import AdminListener
from .config import Config
from .loop import EventLoop
from .snapshots import SnapshotClient
from .systemd import SystemdNotifier
from .worker_slot import WorkerSlot

logger = logging.getLogger("webscale.supervisor")

# Workers get --shutdown-timeout to drain; this much more to exit before they are killed.
_DRAIN_MARGIN = 5.0


class SupervisorSignals:
    if TYPE_CHECKING:  # what it uses of supervisor.Supervisor, which defines all of these
        config: Config
        loop: EventLoop
        notifier: SystemdNotifier
        slots: list[WorkerSlot]
        admin: AdminListener | None
        snapshots: SnapshotClient | None
        shared: list[socket.socket]
        reserved: socket.socket | None
        runtime_dir: Path
        announced: bool
        draining: bool
        exit_code: int
        _sigint_count: int
        _awaiting_reload: set[int]

        def status_text(self) -> str: ...

    def _on_signal(self, signum: int) -> None:
        if signum == signal.SIGCHLD:
            return  # _reap runs after every iteration
        if signum == signal.SIGHUP:
            self._reload()
            return
        if signum == signal.SIGINT:
            self._sigint_count += 1
            if self._sigint_count >= 2:
                self.exit_code = 130
        self.begin_shutdown(signal.Signals(signum).name, signum)

    def _reload(self) -> None:
        if self.draining:
            return
        logger.info("SIGHUP: reloading every worker's certificate")
        self.notifier.reloading()
        for slot in self.slots:
            if slot.ready:
                self._awaiting_reload.add(slot.index)
                self._signal_worker(slot, signal.SIGHUP)
            elif slot.proc is not None:
                slot.reload_when_ready = True
        self._maybe_reloaded()

    def _maybe_reloaded(self) -> None:
        if not self._awaiting_reload and self.announced and not self.draining:
            self.notifier.ready(self.status_text())

    def begin_shutdown(self, why: str, signum: int) -> None:
        """Forward `signum` to every worker; the first call also starts the drain."""
        if not self.draining:
            self.draining = True
            self._awaiting_reload.clear()
            logger.info("%s: draining %d workers", why,
                        sum(1 for slot in self.slots if slot.proc is not None))
            self.notifier.stopping("draining workers")
            for slot in self.slots:
                if slot.restart_timer is not None:
                    slot.restart_timer.cancel()
                    slot.restart_timer = None
            self.loop.call_later(self.config.drain_grace + self.config.shutdown_timeout
                                 + _DRAIN_MARGIN,
                                 self._drain_deadline)
        for slot in self.slots:
            self._signal_worker(slot, signum)

    def _drain_deadline(self) -> None:
        for slot in self.slots:
            if slot.proc is not None:
                logger.error("worker %d (pid %d) still running after the drain deadline: "
                             "killing it", slot.index, slot.proc.pid)
                slot.proc.kill()
                self.exit_code = self.exit_code or 1

    def _signal_worker(self, slot: WorkerSlot, signum: int) -> None:
        if slot.proc is not None and slot.proc.returncode is None:
            try:
                slot.proc.send_signal(signum)
            except ProcessLookupError:
                pass  # exited a moment ago; _reap will see it

    def _cleanup(self) -> None:
        if self.admin is not None:
            self.admin.close()
        if self.snapshots is not None:
            self.snapshots.close()
        for slot in self.slots:
            if slot.proc is not None and slot.proc.poll() is None:
                slot.proc.kill()
                slot.proc.wait()
            self.loop.unregister(slot.notify_sock)
            slot.notify_sock.close()
        for sock in [*self.shared, *([self.reserved] if self.reserved else [])]:
            sock.close()
        self.loop.close()
        self.notifier.close()
        shutil.rmtree(self.runtime_dir, ignore_errors=True)
