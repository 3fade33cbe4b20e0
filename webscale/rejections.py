"""Rate-limited log lines for rejections: what was refused or closed, and who it was.

Every refusal the server decides (a malformed or oversized request, an upgrade past
--max-connections, a message over --max-message-size, a slow reader, the memory budget) is worth
a line naming the remote address, but a hostile client can cause thousands a second. So at most
`LINES_PER_SECOND` such lines are written in any second; the next line written after a quiet
moment says how many were left out. Loop thread only (the counters are plain attributes).
"""

from __future__ import annotations

import logging
import time

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


def peer(address: object) -> str:
    """A remote address for a log line: host:port, [v6]:port, or what the socket gave."""
    if isinstance(address, tuple) and len(address) >= 2:
        host, port = address[0], address[1]
        return f"[{host}]:{port}" if ":" in str(host) else f"{host}:{port}"
    return str(address)
