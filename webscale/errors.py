"""Exceptions raised by webscale.

    WebscaleError                   root: catch this to catch anything of ours
    ├── ConfigError                 a flag or setting is invalid (raised once, at start-up)
    ├── StateError                  an impossible connection-state transition (a bug, never input)
    ├── DecodeError                 a message is not valid JSON or not the payload's shape
    ├── Reject                      raised by an --authorize hook: refuse the upgrade with a status
    ├── ProxyHeaderError            a PROXY protocol header is malformed or too long
    └── SendTimeout                 handle.send(data, timeout) found the client's queue full

A peer's protocol violation is not an exception here: the sans-I/O protocol turns it into a
close code (protocol.py, RFC 6455 §7.4.1). DecodeError is counted and
reported, never fatal to the process; Reject becomes the HTTP answer to an upgrade request;
ProxyHeaderError closes that connection before TLS.
"""

from __future__ import annotations


class WebscaleError(Exception):
    """Root of every exception webscale raises on purpose."""


class ConfigError(WebscaleError):
    """A configuration value is invalid."""


class StateError(WebscaleError):
    """A connection was asked to move between states in a way the state machine forbids."""


class DecodeError(WebscaleError):
    """A message could not be decoded into the payload struct."""


_TOKEN = frozenset("!#$%&'*+-.^_`|~0123456789abcdefghijklmnopqrstuvwxyz"
                   "ABCDEFGHIJKLMNOPQRSTUVWXYZ")
# Headers the response's framing depends on: the server writes them.
_FRAMING = frozenset({"content-length", "transfer-encoding", "connection", "content-type"})


class Reject(WebscaleError):
    """Raised by an `--authorize` hook to refuse an upgrade with `status` (401, 403, 429, ...).

    `reason` is the response body the client sees (so it must not hold secrets); `headers` are
    extra response headers, such as `("Retry-After", "30")` with a 429 or a `WWW-Authenticate`
    challenge with a 401. A status outside 400-599, or a header that could split or reframe the
    response, is a ValueError raised here: inside a hook that is a hook bug, answered with 500.
    """

    def __init__(self, status: int, reason: str = "",
                 headers: tuple[tuple[str, str], ...] = ()) -> None:
        if not isinstance(status, int) or not 400 <= status <= 599:
            raise ValueError(f"Reject status must be 400-599, got {status!r}")
        for name, value in headers:
            # RFC 9110 §5.1 field names are tokens; values here are visible ASCII and spaces.
            if not name or not all(c in _TOKEN for c in name):
                raise ValueError(f"invalid header name {name!r}")
            if name.lower() in _FRAMING:
                raise ValueError(f"{name} is set by the server")
            if not all(" " <= c <= "~" or c == "\t" for c in value):
                raise ValueError(f"header {name}: only visible ASCII, spaces and tabs")
        super().__init__(f"{status} {reason}".rstrip())
        self.status = status
        self.reason = reason
        self.headers = tuple(headers)


class ProxyHeaderError(WebscaleError):
    """A PROXY protocol header (proxy_protocol.py) is malformed, too long or of a kind we refuse."""


class SendTimeout(WebscaleError):
    """`handle.send(data, timeout=...)`: the client's outbound queue stayed over its high-water
    mark for `timeout` seconds; the message was not sent."""
