"""Admission: whether an upgrade request gets its WebSocket, decided now or from the pool.

How this works: the server checks its own capacity (503), then hands the request to
`Admission.check`. The Origin check runs at once, on the loop thread. Without a hook the
connection is admitted at once too; with one, `authorize.decide` runs the hook in the thread
pool while the connection reads nothing more (its upgrade is pending), and the pool thread hands
the verdict back with `call_soon_threadsafe`; only the loop thread ever looks at the connection.
An admitted connection goes to the server's `admit(conn, identity)` callback; a refused one is
answered here (`conn.respond`), counted by reason (`upgrades_refused_by_reason`) and logged with
the client's address, at most a line a second per reason (rejections.RejectionLog).

--handshake-timeout covers the hook: the connection's handshake timer keeps running while the
hook does, and closes it when it expires. A verdict that comes back for a closed connection is
dropped, with a warning when it came after the connection's deadline. A pool thread cannot be
interrupted, so a hook slower than the timeout still holds its thread until it returns.

Failed TLS handshakes (counted by the connection) are logged here too, by the same rules.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from concurrent.futures import Executor
from typing import Any, Protocol

from .authorize import HOOK_FAILED, Authorizer, OriginPolicy, Verdict, decide
from .http import Request, Response
from .loop import Timer
from .rejections import RejectionLog, format_address
from .stats import Stats

logger = logging.getLogger(__name__)


class Applicant(Protocol):
    """The connection whose upgrade is being decided (connection.Connection implements it)."""

    conn_id: int
    address: Any
    upgrade_pending: bool
    handshake_timer: Timer | None

    @property
    def closed(self) -> bool: ...

    def respond(self, response: Response) -> None: ...


class Loop(Protocol):
    """The loop calls admission uses (loop.EventLoop implements them)."""

    def time(self) -> float: ...

    def call_soon_threadsafe(self, callback: Callable[..., object], *args: Any,
                             wake: bool = True) -> None: ...


class Admission:
    def __init__(self, loop: Loop, pool: Executor, stats: Stats, *,
                 admit: Callable[[Any, Any], None], origins: OriginPolicy,
                 authorizer: Authorizer | None, handshake_timeout: float) -> None:
        self.loop = loop
        self.pool = pool
        self.stats = stats
        self.admit = admit  # admit(conn, identity), on the loop thread
        self.origins = origins
        self.authorizer = authorizer
        self.handshake_timeout = handshake_timeout
        self.rejections = RejectionLog(logger)

    # -- upgrades (loop thread) -------------------------------------------------------------
    def check(self, conn: Applicant, request: Request) -> None:
        """Admit `conn` or refuse it, now or once the hook has answered."""
        if self.origins and not self.origins.allows(request):
            origin = request.headers.get("origin")
            self.refuse(conn, "origin", Response.text(403, "origin not allowed"),
                        f"Origin {origin!r} not allowed" if origin is not None
                        else "no Origin header")
            return
        if self.authorizer is None:
            self.admit(conn, None)
            return
        timer = conn.handshake_timer
        started = self.loop.time()
        deadline = timer.when if timer is not None else started + self.handshake_timeout
        self.pool.submit(self._run_hook, self.authorizer, conn, request, started, deadline)

    def _run_hook(self, hook: Authorizer, conn: Applicant, request: Request, started: float,
                  deadline: float) -> None:
        """Pool thread: run the hook, hand the verdict to the loop; `conn` is not touched."""
        verdict = HOOK_FAILED
        try:
            verdict = decide(hook, request)
        finally:
            self.loop.call_soon_threadsafe(self._verdict, conn, verdict, started, deadline)

    def _verdict(self, conn: Applicant, verdict: Verdict, started: float,
                 deadline: float) -> None:
        if conn.closed or not conn.upgrade_pending:
            now = self.loop.time()
            if now >= deadline:  # the handshake timed out while the hook ran
                self.rejections.log("hook_late", logging.WARNING,
                                    "conn %d: the --authorize hook answered for %s after %.1fs, "
                                    "past the connection's --handshake-timeout (%.1fs); it was "
                                    "closed meanwhile", conn.conn_id,
                                    format_address(conn.address), now - started,
                                    self.handshake_timeout)
            return  # the client left, or the handshake timed out: nothing to answer
        if verdict.refusal is None:
            self.admit(conn, verdict.identity)
            return
        if verdict.reason == "hook_error":
            detail = f"the --authorize hook raised {verdict.error!r}"
        elif verdict.reason == "rejected":
            body = verdict.refusal.body.decode(errors="replace").rstrip("\n")
            detail = f"the --authorize hook raised Reject: {body!r}"
        else:
            detail = "the --authorize hook returned a false value"
        self.refuse(conn, verdict.reason, verdict.refusal, detail, verdict.error)

    def refuse(self, conn: Applicant, reason: str, response: Response, detail: str,
               error: BaseException | None = None) -> None:
        """Refuse an upgrade by policy: count it, log it (rate-limited), answer `response`."""
        self.stats.upgrades_refused_by_reason[reason] += 1
        # A hook that failed is the server's problem (a warning, with the traceback); the rest
        # is clients being told no (info).
        level = logging.WARNING if reason == "hook_error" else logging.INFO
        self.rejections.log(reason, level, "conn %d: upgrade from %s refused with %d: %s",
                            conn.conn_id, format_address(conn.address), response.status, detail,
                            exc_info=error)
        conn.respond(response)

    # -- TLS (loop thread) ------------------------------------------------------------------
    def tls_failed(self, conn: Applicant, reason: str, error: BaseException) -> None:
        """Log a failed TLS handshake (the connection counted it)."""
        if reason == "other":
            # Scanners, TCP-only health checks, clients that do not trust our certificate:
            # noise at info level, so debug only.
            if logger.isEnabledFor(logging.DEBUG):
                logger.debug("conn %d: TLS handshake from %s failed: %r", conn.conn_id,
                             format_address(conn.address), error)
            return
        why = getattr(error, "verify_message", None) or getattr(error, "reason", None) or error
        self.rejections.log(f"tls_{reason}", logging.INFO,
                            "conn %d: TLS handshake from %s refused (%s): %s", conn.conn_id,
                            format_address(conn.address), reason, why)
