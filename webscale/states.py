"""The one check every state machine here goes through (h11/_state.py's habit).

`connection.ConnState` (socket life) and `protocol.Phase` (HTTP/WebSocket life) each keep a table
of allowed moves; `check_move` rejects an impossible one with a StateError naming the states and
the event, and logs every move at DEBUG.
"""

from __future__ import annotations

import enum
import logging
from collections.abc import Mapping
from typing import TypeVar

from .errors import StateError

S = TypeVar("S", bound=enum.Enum)


def check_move(allowed: Mapping[S, frozenset[S]], current: S, to: S, why: str, conn_id: int,
               logger: logging.Logger) -> S:
    """Return `to` if the table allows current -> to; raise StateError otherwise."""
    if to not in allowed[current]:
        raise StateError(f"conn {conn_id}: cannot move from {current.value} to {to.value} "
                         f"on {why}")
    if logger.isEnabledFor(logging.DEBUG):
        logger.debug("conn %d: %s -> %s (%s)", conn_id, current.value, to.value, why)
    return to
