"""Who gets in: the Origin check and the --authorize hook, as pure decisions on a Request.

How this works: admission.py (loop thread) first checks the request's Origin against
--allowed-origin (`OriginPolicy.allows`, a set lookup). If an authorization hook is configured,
`decide(hook, request)` then runs in the thread pool, since a hook may block on a database or a
token service; it never raises, and returns a `Verdict` the pool thread hands back to the loop.
The loop then accepts the upgrade (the hook's value becomes `handle.identity`) or sends the
refusal. Nothing here touches a connection, a socket, a thread or a log.

What a hook returns: anything truthy allows (and is the identity), anything falsy is 403, raising
`webscale.Reject(status, reason)` answers that status with the reason as body, and any other
exception is a bug in the hook: 500, and the exception goes back to be logged with its traceback.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

from .errors import Reject
from .http import Request, Response

Authorizer = Callable[[Request], object]


class OriginPolicy:
    """--allowed-origin: exact matches against the Origin header (RFC 6454 §7, RFC 6455 §4.2.2).

    Browsers send the page's origin as `scheme://host[:port]` on every WebSocket handshake; a
    request without one is not from a browser page. With a policy, a request without an Origin
    is refused, as is one whose Origin is not listed; `*` lists every Origin a client sends
    (still not a missing one). Without a policy (no --allowed-origin) every request passes.
    """

    __slots__ = ("allowed", "any_origin")

    def __init__(self, allowed: Iterable[str]) -> None:
        self.allowed = frozenset(allowed)
        self.any_origin = "*" in self.allowed

    def __bool__(self) -> bool:
        return bool(self.allowed)

    def allows(self, request: Request) -> bool:
        origins = request.headers.get_all("origin")
        if len(origins) != 1:
            return False  # missing, or sent twice (which value would a browser have meant?)
        return self.any_origin or origins[0] in self.allowed


@dataclass(frozen=True, slots=True)
class Verdict:
    """What the hook decided, from the pool thread to the loop.

    `refusal` None means allowed, with `identity` the hook's value. `reason` labels the
    outcome in /stats (upgrades_refused_by_reason) and the logs; `error` is the exception of a
    hook that failed, logged on the loop thread."""

    identity: Any = None
    refusal: Response | None = None
    reason: str = "allowed"
    error: BaseException | None = None


# When the hook itself cannot be called to completion (a BaseException such as SystemExit).
HOOK_FAILED = Verdict(refusal=Response.text(500), reason="hook_error")


def decide(hook: Authorizer, request: Request) -> Verdict:
    """Call `hook(request)` (in a pool thread) and turn whatever it does into a Verdict."""
    try:
        value = hook(request)
        allowed = bool(value)  # inside the try: a __bool__ that raises is the hook's bug too
    except Reject as reject:
        body = reject.reason or None  # None: the status's reason phrase
        return Verdict(refusal=Response.text(reject.status, body, reject.headers),
                       reason="rejected")
    except Exception as exc:  # the hook's bug: 500 to the client, the traceback to the log
        return Verdict(refusal=Response.text(500), reason="hook_error", error=exc)
    if not allowed:
        return Verdict(refusal=Response.text(403), reason="forbidden")
    return Verdict(identity=value)
