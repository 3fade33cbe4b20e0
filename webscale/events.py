"""What the sans-I/O protocol (protocol.py) reports: small frozen values, one class per event.

The connection acts on them by type (wsproto/events.py's habit): a request head to answer,
a complete message, a pong, the end of the WebSocket, a refused request, frames left for the
next turn of the loop.
"""

from __future__ import annotations

from dataclasses import dataclass

from .http import Headers


@dataclass(frozen=True, slots=True)
class RequestReceived:
    """A complete request head: answer with respond(), or (an upgrade) accept_upgrade()."""
    method: str
    target: str
    headers: Headers
    upgrade: bool


@dataclass(frozen=True, slots=True)
class MessageReceived:
    data: str | bytes


@dataclass(frozen=True, slots=True)
class PongReceived:
    payload: bytes


@dataclass(frozen=True, slots=True)
class Closed:
    """The WebSocket is closed: `code` is the close code that ended it (1006: no close frame)."""
    code: int
    reason: str
    by_peer: bool


@dataclass(frozen=True, slots=True)
class HandshakeFailed:
    """The request was refused (bad head or bad upgrade); an HTTP error is on its way."""
    status: int
    reason: str


@dataclass(frozen=True, slots=True)
class BacklogPending:
    """Frames are left unparsed (EVENTS_PER_CALL): feed nothing more before `parse_backlog()`."""


BACKLOG = BacklogPending()

Event = (RequestReceived | MessageReceived | PongReceived | Closed | HandshakeFailed
         | BacklogPending)
