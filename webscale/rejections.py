"""Log lines for refused clients: each names the remote address, and none can flood the log.

How this works: every refusal (a failed client-certificate check, an Origin not allowed, the
--authorize hook saying no) goes through `RejectionLog.log(reason, ...)`. The first of a reason
is logged; later ones within a second are only counted, and the next line logged for that reason
says how many were left out. So an operator sees who was refused and why, and a client retrying
a thousand times a second costs one line a second per reason, not a thousand (nginx's
limit_req_log_level and its "delaying request" lines have the same aim).

Loop thread only: no locks. Pool threads hand their outcome to the loop, which logs it.

Two ways in, for two kinds of refusal. `RejectionLog` (admission: the TLS client-certificate
check, Origin, the hook) keeps one line a second per reason. `log_rejection` (the protocol and
the memory budget: a malformed request, a message over the cap, a slow reader, a connection shed)
writes at most LINES_PER_SECOND lines in any second whatever they are, and the next line after a
quiet moment says how many were left out. Both name the remote address (`format_address`).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import Any

# At most one line per reason per this many seconds.
INTERVAL = 1.0


class RejectionLog:
    __slots__ = ("logger", "clock", "interval", "_last", "_suppressed")

    def __init__(self, logger: logging.Logger, clock: Callable[[], float] = time.monotonic,
                 interval: float = INTERVAL) -> None:
        self.logger = logger
        self.clock = clock
        self.interval = interval
        self._last: dict[str, float] = {}
        self._suppressed: dict[str, int] = {}

    def log(self, reason: str, level: int, fmt: str, *args: object,
            exc_info: BaseException | None = None) -> bool:
        """Log `fmt % args` unless `reason` was logged less than `interval` ago; True if logged."""
        if not self.logger.isEnabledFor(level):
            return False
        now = self.clock()
        last = self._last.get(reason)
        if last is not None and now - last < self.interval:
            self._suppressed[reason] = self._suppressed.get(reason, 0) + 1
            return False
        self._last[reason] = now
        suppressed = self._suppressed.pop(reason, 0)
        if suppressed:
            fmt += " (and %d more %s refusals not logged since the last line)"
            args = (*args, suppressed, reason)
        self.logger.log(level, fmt, *args, exc_info=exc_info)
        return True


def format_address(address: Any) -> str:
    """A peer address for a log line: host:port, [v6]:port, or whatever else it is."""
    if isinstance(address, tuple) and len(address) >= 2:
        host, port = address[0], address[1]
        return f"[{host}]:{port}" if ":" in str(host) else f"{host}:{port}"
    return str(address)


# peer(address): the name the protocol-layer callers use.
peer = format_address


LINES_PER_SECOND = 10


class _Window:
    __slots__ = ("started", "written", "suppressed")

    def __init__(self) -> None:
        self.started = 0.0
        self.written = 0
        self.suppressed = 0


_window = _Window()


def log_rejection(logger: logging.Logger, fmt: str, *args: object,
                  level: int = logging.INFO) -> bool:
    """Log one rejection unless this second's share is spent; True when it was written."""
    if not logger.isEnabledFor(level):
        return False
    window = _window
    now = time.monotonic()
    if now - window.started >= 1.0:
        if window.suppressed:
            logger.log(level, "%d more rejection(s) not logged in the last second(s)",
                       window.suppressed)
        window.started, window.written, window.suppressed = now, 0, 0
    if window.written >= LINES_PER_SECOND:
        window.suppressed += 1
        return False
    window.written += 1
    logger.log(level, fmt, *args)
    return True


