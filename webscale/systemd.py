"""systemd integration without libsystemd: sd_notify and socket activation, spoken directly.

How this works: systemd passes two things through the environment.

* ``$NOTIFY_SOCKET`` names an AF_UNIX datagram socket (a path, or an abstract name written with a
  leading ``@`` that stands for a NUL byte). Each datagram is newline-separated ``KEY=VALUE``
  assignments: ``READY=1``, ``STATUS=...``, ``STOPPING=1``, ``WATCHDOG=1``... (sd_notify(3)).
  `SystemdNotifier` keeps one non-blocking socket for the life of the process, so a call from the
  loop costs one ``sendto``. A notification is advice to the service manager, never a reason to
  fail: every method returns False on error and logs at DEBUG.
* ``$LISTEN_PID``/``$LISTEN_FDS``/``$LISTEN_FDNAMES`` hand over already-listening sockets
  starting at fd 3 (sd_listen_fds(3)). `listen_fds` checks that they are meant for this process,
  marks them close-on-exec and wraps them as socket objects.

Without systemd (no variables set) everything here is a cheap no-op.
"""

from __future__ import annotations

import logging
import os
import socket
import sys
import threading
import time
from collections.abc import Mapping, MutableMapping

logger = logging.getLogger(__name__)

# sd_listen_fds(3): passed descriptors start right after stdin, stdout and stderr.
SD_LISTEN_FDS_START = 3


def _notify_address(raw: str, platform: str = sys.platform) -> str | None:
    """Map ``$NOTIFY_SOCKET`` to a ``sendto`` address, or None, with a warning saying why, if
    we cannot speak to it (the manager then waits for a READY=1 that never comes)."""
    if not hasattr(socket, "AF_UNIX"):
        why = "this platform has no AF_UNIX sockets"
    elif raw.startswith("@"):
        if platform.startswith("linux"):
            # Abstract namespace: '@' is how systemd spells the leading NUL byte.
            return "\0" + raw[1:]
        why = "abstract socket names ('@...') exist only on Linux"
    elif raw.startswith("/"):
        return raw
    else:
        # systemd also knows "vsock:CID:PORT" (for VMs); a Pi service never gets one.
        why = "only a path or an '@' abstract name is supported"
    logger.warning("NOTIFY_SOCKET=%r: %s; not notifying the service manager", raw, why)
    return None


class SystemdNotifier:
    """Send sd_notify(3) messages to the service manager, if there is one.

    Safe to share between threads: datagram sends are atomic and the socket is created once
    under a lock. Methods never raise; they return True when the datagram was sent.
    """

    __slots__ = ("_address", "_lock", "_sock", "_watchdog_pid", "_watchdog_usec")

    def __init__(self, environ: Mapping[str, str] | None = None) -> None:
        env = os.environ if environ is None else environ
        raw = env.get("NOTIFY_SOCKET", "")
        self._address = _notify_address(raw) if raw else None
        self._lock = threading.Lock()
        self._sock: socket.socket | None = None
        self._watchdog_usec = env.get("WATCHDOG_USEC", "")
        self._watchdog_pid = env.get("WATCHDOG_PID", "")

    @property
    def enabled(self) -> bool:
        return self._address is not None

    def notify(self, *assignments: str) -> bool:
        """Send ``KEY=VALUE`` assignments as one datagram."""
        address = self._address
        if address is None:
            return False
        payload = "\n".join(assignments).encode("utf-8", "replace")
        try:
            sock = self._socket()
            sock.sendto(payload, address)
        except OSError as exc:
            # BlockingIOError included: a full receive queue in PID 1 must not stall our loop;
            # the next status or watchdog ping will go through.
            logger.debug("sd_notify %r to %r failed: %s", payload, address, exc)
            return False
        return True

    def ready(self, status: str | None = None) -> bool:
        """Tell systemd start-up (or a reload) is complete: we are listening."""
        if status is None:
            return self.notify("READY=1")
        return self.notify("READY=1", _status_line(status))

    def status(self, text: str) -> bool:
        """Free-form one-line status shown by ``systemctl status``."""
        return self.notify(_status_line(text))

    def stopping(self, status: str | None = None) -> bool:
        if status is None:
            return self.notify("STOPPING=1")
        return self.notify("STOPPING=1", _status_line(status))

    def reloading(self) -> bool:
        """Announce a reload; follow with `ready` when it is done.

        systemd >= 253 (Type=notify-reload) wants MONOTONIC_USEC with RELOADING=1 to match the
        message to the reload it asked for; older versions ignore the extra field.
        """
        usec = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
        return self.notify("RELOADING=1", f"MONOTONIC_USEC={usec}")

    def watchdog(self) -> bool:
        """Keep-alive ping; must arrive within WatchdogSec or systemd restarts the service."""
        return self.notify("WATCHDOG=1")

    def watchdog_interval(self) -> float | None:
        """Seconds between `watchdog` calls, or None when no watchdog is armed for this process.

        Half of ``$WATCHDOG_USEC``, as sd_watchdog_enabled(3) recommends, so one late loop
        iteration does not get us killed. A ``$WATCHDOG_PID`` naming another process (we are a
        child that inherited the environment) means the watchdog is not ours to feed.
        """
        try:
            usec = int(self._watchdog_usec)
        except ValueError:
            return None
        if usec <= 0:
            return None
        if self._watchdog_pid:
            try:
                if int(self._watchdog_pid) != os.getpid():
                    return None
            except ValueError:
                return None
        return usec / 2 / 1_000_000

    def close(self) -> None:
        with self._lock:
            if self._sock is not None:
                self._sock.close()
                self._sock = None

    def _socket(self) -> socket.socket:
        sock = self._sock
        if sock is None:
            with self._lock:
                sock = self._sock
                if sock is None:
                    # Close-on-exec, so a handler's subprocess does not inherit a channel to
                    # PID 1: Python makes every socket so (PEP 446), where SOCK_CLOEXEC exists
                    # (Linux, BSD) atomically; macOS has no SOCK_CLOEXEC to ask for.
                    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
                    sock.setblocking(False)
                    self._sock = sock
        return sock


def _status_line(text: str) -> str:
    # One datagram line per assignment: an embedded newline would start a bogus assignment.
    return "STATUS=" + text.replace("\n", " ")


def listen_fds_with_names(
    unset_env: bool = True, environ: MutableMapping[str, str] | None = None
) -> list[tuple[str, socket.socket]]:
    """Sockets passed by systemd socket activation, with their FileDescriptorName= names.

    Returns an empty list when none were passed to *this* process. With ``unset_env`` the
    ``LISTEN_*`` variables are removed (whatever the outcome, as sd_listen_fds does) so a child
    process does not mistake them for its own.
    """
    env = os.environ if environ is None else environ
    try:
        return _take_listen_fds(env)
    finally:
        if unset_env:
            for key in ("LISTEN_PID", "LISTEN_FDS", "LISTEN_FDNAMES"):
                env.pop(key, None)


def listen_fds(
    unset_env: bool = True, environ: MutableMapping[str, str] | None = None
) -> list[socket.socket]:
    """sd_listen_fds(3): listening sockets passed by systemd, as socket objects."""
    return [sock for _, sock in listen_fds_with_names(unset_env, environ)]


def _take_listen_fds(env: Mapping[str, str]) -> list[tuple[str, socket.socket]]:
    raw_pid, raw_count = env.get("LISTEN_PID", ""), env.get("LISTEN_FDS", "")
    if not raw_pid or not raw_count:
        return []
    try:
        pid, count = int(raw_pid), int(raw_count)
    except ValueError:
        logger.warning("ignoring malformed LISTEN_PID=%r LISTEN_FDS=%r", raw_pid, raw_count)
        return []
    if pid != os.getpid():
        # Inherited from a parent that was activated; those descriptors are not ours to use.
        logger.debug("LISTEN_PID=%d is not us (%d); ignoring LISTEN_FDS", pid, os.getpid())
        return []
    raw_names = env.get("LISTEN_FDNAMES", "")
    names = raw_names.split(":") if raw_names else []
    taken: list[tuple[str, socket.socket]] = []
    for index, fd in enumerate(range(SD_LISTEN_FDS_START, SD_LISTEN_FDS_START + count)):
        name = names[index] if index < len(names) else "unknown"
        try:
            os.set_inheritable(fd, False)
            # fileno= makes Python query the family, type and protocol from the kernel.
            sock = socket.socket(fileno=fd)
        except OSError as exc:
            logger.warning("passed fd %d (%s) is not a usable socket: %s", fd, name, exc)
            continue
        logger.info("using socket-activated fd %d (%s) on %s", fd, name, _describe(sock))
        taken.append((name, sock))
    return taken


def _describe(sock: socket.socket) -> str:
    try:
        return repr(sock.getsockname())
    except OSError:
        return "an unnamed socket"
