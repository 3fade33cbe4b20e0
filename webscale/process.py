"""What a server process and a supervisor process share: bind, signals, status, the run loop.

How this works: `ProcessScaffold` owns a process's `EventLoop` and its service-manager
`Notifier`. Signal handlers only record the signal (and `set_wakeup_fd` interrupts the loop's
wait); `run()` turns the loop until `stop()` and hands each recorded signal to the process's
`on_signal` between iterations, on the loop thread (gunicorn's arbiter, uvicorn's server). A
timer sends STATUS= every few seconds and another feeds the systemd watchdog, so a hung loop
stops feeding it. `bind()` and `urls()` are the one way either process binds and names its port.
"""

from __future__ import annotations

import logging
import signal
import socket
from collections.abc import Callable
from types import FrameType
from typing import Protocol

from .loop import EventLoop

logger = logging.getLogger(__name__)

# STATUS= every few seconds: `systemctl status` stays current without flooding PID 1.
STATUS_INTERVAL = 5.0


class Notifier(Protocol):
    """What a process tells its service manager (systemd.SystemdNotifier's calls)."""

    def ready(self, status: str | None = None) -> bool: ...

    def status(self, text: str) -> bool: ...

    def stopping(self, status: str | None = None) -> bool: ...

    def reloading(self) -> bool: ...

    def watchdog(self) -> bool: ...

    def watchdog_interval(self) -> float | None: ...


def bind(host: str, port: int, backlog: int, *, reuseport: bool = False,
         listen: bool = True) -> socket.socket:
    """A TCP socket bound to host:port (IPv6 when the host has a colon), listening unless
    `listen` is False (a supervisor reserves the port that its workers bind with SO_REUSEPORT)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    if reuseport and hasattr(socket, "SO_REUSEPORT"):
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    try:
        sock.bind((host, port))
        if listen:
            sock.listen(backlog)
    except OSError:
        sock.close()
        raise
    return sock


def urls(socks: list[socket.socket], scheme: str) -> list[str]:
    """`scheme://host:port` for each bound socket."""
    out = []
    for sock in socks:
        host, port = sock.getsockname()[:2]
        host = f"[{host}]" if ":" in host else host
        out.append(f"{scheme}://{host}:{port}")
    return out


class ProcessScaffold:
    def __init__(self, loop: EventLoop, notifier: Notifier, status_text: Callable[[], str],
                 on_signal: Callable[[int], None]) -> None:
        self.loop = loop
        self.notifier = notifier
        self._status_text = status_text
        self._on_signal = on_signal
        self._pending: list[int] = []
        self._stopped = False
        # Called before each WATCHDOG=1; False withholds it (a supervisor with a hung worker).
        self.healthy: Callable[[], bool] = lambda: True

    def install_signal_handlers(self, signums: tuple[int, ...]) -> None:
        """Main thread only: signals set a flag; the wake-up fd interrupts the loop's wait."""
        signal.set_wakeup_fd(self.loop.wakeup_fd, warn_on_full_buffer=False)
        for signum in signums:
            signal.signal(signum, self._record_signal)

    def _record_signal(self, signum: int, frame: FrameType | None) -> None:
        self._pending.append(signum)

    def start_reporting(self) -> None:
        """STATUS= every few seconds; WATCHDOG=1 when the service manager armed a watchdog."""
        self.loop.call_later(STATUS_INTERVAL, self._report_status)
        interval = self.notifier.watchdog_interval()
        if interval is not None:
            self.loop.call_later(interval, self._feed_watchdog, interval)

    def _report_status(self) -> None:
        self.notifier.status(self._status_text())
        self.loop.call_later(STATUS_INTERVAL, self._report_status)

    def _feed_watchdog(self, interval: float) -> None:
        # A timer, not a thread: if the loop hangs, the pings stop and the manager restarts us.
        if self.healthy():
            self.notifier.watchdog()
        self.loop.call_later(interval, self._feed_watchdog, interval)

    def run(self, after_iteration: Callable[[], None] | None = None) -> None:
        """Turn the loop until stop(); signals are handled between iterations."""
        loop = self.loop
        while not self._stopped:
            loop.run_once(max_wait=1.0)
            if self._pending:
                pending, self._pending = self._pending, []
                for signum in pending:
                    self._on_signal(signum)
                    if self._stopped:
                        break
            if after_iteration is not None:
                after_iteration()

    def stop(self) -> None:
        """Leave run() after the current iteration; from any thread."""
        self._stopped = True
        self.loop.wake()

    @property
    def stopped(self) -> bool:
        return self._stopped
