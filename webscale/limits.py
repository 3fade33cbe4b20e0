"""Open-file limits: every client connection costs one file descriptor, and some memory.

Distributions start services with a soft RLIMIT_NOFILE of 1024 (systemd's default, kept low for
select()-based programs) and a much larger hard limit. We use epoll/kqueue, so at start-up each
process raises its soft limit to the hard one, then checks that ``--max-connections`` fits.

Descriptors are not the only bound: under systemd the hard limit is often a million, and a
connection's fixed cost is not in the memory budget (budget.py), so the default
``--max-connections`` is also what half of memory holds at ``CONNECTION_COST`` each: 16,384 on a
1 GB Raspberry Pi 4, whose quarter goes to the budget and the rest to the system.
"""

from __future__ import annotations

import logging
import resource

logger = logging.getLogger(__name__)

# Descriptors a process needs besides client sockets: listeners, the selector, the wake-up
# pipe, log files, certificate reads during a reload, a few in the handler's libraries.
DEFAULT_RESERVE = 64
# One connection's fixed memory: ~20 KB of Python objects and OpenSSL state for an idle TLS
# WebSocket (README: 20.1 KB measured by benchmarks/peer_table.py), the kernel's socket, and
# room for one mid-handshake or mid-read holding more; rounded up.
CONNECTION_COST = 32 * 1024


def memory_connection_limit(memory: int | None, workers: int = 1) -> int | None:
    """Connections that half of `memory` holds at CONNECTION_COST each, per worker (None when
    the memory is not known)."""
    if not memory:
        return None
    return max(1, memory // 2 // CONNECTION_COST // max(1, workers))


def raise_nofile_limit() -> tuple[int, int]:
    """Raise the soft open-files limit as far as allowed; return the resulting (soft, hard).

    Never raises: on failure the limit is left as it was and a warning is logged.
    """
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    for target in _targets(soft, hard):
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
        except (ValueError, OSError) as exc:
            # An "unlimited" hard limit is not a valid soft limit on Linux (capped by
            # fs.nr_open) or macOS (capped by kern.maxfilesperproc): try the next candidate.
            logger.debug("cannot set RLIMIT_NOFILE soft limit to %d: %s", target, exc)
            continue
        break
    else:
        if soft != hard:
            logger.warning("could not raise the open-files limit above %d", soft)
    new_soft, new_hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if new_soft != soft:
        logger.debug("open-files limit raised from %d to %d", soft, new_soft)
    return new_soft, new_hard


def _targets(soft: int, hard: int) -> list[int]:
    if hard != resource.RLIM_INFINITY:
        return [hard] if hard > soft else []
    candidates = [_linux_nr_open(), 1_048_576, 65_536, 10_240]
    return [value for value in candidates if value is not None and value > soft]


NR_OPEN_PATH = "/proc/sys/fs/nr_open"


def _linux_nr_open(path: str = NR_OPEN_PATH) -> int | None:
    """Linux's cap on a soft limit; None without /proc (BSD, macOS): the fixed candidates in
    `_targets` are tried instead, largest first."""
    try:
        with open(path, encoding="ascii") as f:
            return int(f.read())
    except (OSError, ValueError) as exc:
        logger.debug("cannot read %s (%s): trying fixed open-files limits", path, exc)
        return None


def check_connection_budget(
    max_connections: int, soft: int, reserve: int = DEFAULT_RESERVE
) -> str | None:
    """Return a warning when ``max_connections`` clients cannot all get a descriptor.

    ``max_connections <= 0`` means no cap was configured, so there is nothing to check; the
    accept loop still copes with EMFILE by pausing.
    """
    if max_connections <= 0 or soft == resource.RLIM_INFINITY or soft < 0:
        return None
    if max_connections + reserve <= soft:
        return None
    fits = max(0, soft - reserve)
    return (
        f"--max-connections {max_connections} does not fit under the open-files limit {soft} "
        f"({reserve} descriptors are kept for listeners and internals): at most {fits} clients "
        f"can connect; raise the limit (LimitNOFILE=, ulimit -n) or lower --max-connections"
    )


def default_max_handshaking(max_connections: int) -> int:
    """--max-handshaking's default: a quarter of --max-connections, at least 64 of them."""
    return max(min(64, max_connections), max_connections // 4)


def default_max_connections(memory: int | None, workers: int = 1) -> int:
    """--max-connections' default: the open-files limit (read after raise_nofile_limit()) less
    DEFAULT_RESERVE, or what half of `memory` holds (memory_connection_limit) if that is
    fewer."""
    by_memory = memory_connection_limit(memory, workers)
    try:
        soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    except (ValueError, OSError):
        by_files = 1000
    else:
        by_files = (100_000 if soft == resource.RLIM_INFINITY
                    else max(1, soft - DEFAULT_RESERVE))
    return by_files if by_memory is None else min(by_files, by_memory)
