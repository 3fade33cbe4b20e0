"""The listening sockets: accepting until the backlog is empty, and pausing when out of files.

How this works: each listening socket is registered with the loop for reading; a readiness event
accepts until EAGAIN, at most `ACCEPTS_PER_EVENT` at a time so reads keep flowing during a
connect storm, and hands every accepted socket to `on_accepted` (the server's gate). When
accept() fails for lack of descriptors or memory (EMFILE, ENFILE, ENOBUFS, ENOMEM), the listeners
leave the loop for `ACCEPT_PAUSE` instead of spinning on a socket that stays readable: the kernel
keeps the pending connections in its backlog meanwhile. `close()` stops accepting for good (a
drain, the exit).
"""

from __future__ import annotations

import errno
import logging
import os
import socket
from collections.abc import Callable

from .loop import EVENT_READ, EventLoop

logger = logging.getLogger("webscale.server")

# After EMFILE/ENFILE, stop accepting this long instead of spinning on a listener that stays
# readable (the kernel keeps the pending connections in the backlog meanwhile).
ACCEPT_PAUSE = 0.5
# Accepts per readiness event: enough to drain a burst, bounded so reads keep flowing.
ACCEPTS_PER_EVENT = 256


class _Listener:
    def __init__(self, owner: Listeners, sock: socket.socket) -> None:
        self.owner = owner
        self.sock = sock

    def on_readable(self) -> None:
        self.owner.accept(self.sock)

    def on_writable(self) -> None:  # pragma: no cover - never registered for writing
        pass


class Listeners:
    def __init__(self, loop: EventLoop, socks: list[socket.socket],
                 on_accepted: Callable[[socket.socket, object], None],
                 on_paused: Callable[[OSError], None]) -> None:
        self.loop = loop
        self._on_accepted = on_accepted
        self._on_paused = on_paused
        self._listeners = [_Listener(self, sock) for sock in socks]
        self._paused = False
        self._closed = False

    @property
    def sockets(self) -> list[socket.socket]:
        return [listener.sock for listener in self._listeners]

    def start(self) -> None:
        for listener in self._listeners:
            listener.sock.setblocking(False)
            self.loop.register(listener.sock, EVENT_READ, listener)

    def accept(self, listen_sock: socket.socket) -> None:
        for _ in range(ACCEPTS_PER_EVENT):
            try:
                sock, address = listen_sock.accept()
            except (BlockingIOError, InterruptedError):
                return
            except OSError as exc:
                if exc.errno in (errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM):
                    self._pause(exc)
                    return
                if exc.errno in (errno.ECONNABORTED, errno.EPROTO):
                    continue  # the client gave up while queued: not our problem
                raise
            self._on_accepted(sock, address)

    def _pause(self, exc: OSError) -> None:
        if self._paused:
            return
        self._paused = True
        self._on_paused(exc)
        logger.warning("accept failed (%s): pausing accepts for %.1fs",
                       os.strerror(exc.errno or 0), ACCEPT_PAUSE)
        for listener in self._listeners:
            self.loop.unregister(listener.sock)
        self.loop.call_later(ACCEPT_PAUSE, self._resume)

    def _resume(self) -> None:
        self._paused = False
        if self._closed:
            return
        for listener in self._listeners:
            self.loop.register(listener.sock, EVENT_READ, listener)

    def close(self) -> None:
        """Stop accepting and close the sockets (a drain, the exit); safe to call twice."""
        self._closed = True
        for listener in self._listeners:
            if listener.sock.fileno() == -1:
                continue
            try:
                self.loop.unregister(listener.sock)
            except (KeyError, ValueError):
                pass
            listener.sock.close()
