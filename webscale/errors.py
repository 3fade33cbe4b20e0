"""Exceptions raised by webscale.

    WebscaleError                   root: catch this to catch anything of ours
    ├── ConfigError                 a flag or setting is invalid (raised once, at start-up)
    ├── StateError                  an impossible connection-state transition (a bug, never input)
    ├── ProtocolError               the peer broke a protocol rule; carries the close code to send
    │   └── MessageTooBig           a message exceeded --max-message-size (close 1009)
    ├── DecodeError                 a message is not valid JSON or not the payload's shape
    └── SendTimeout                 handle.send(data, timeout) found the client's queue full

Protocol errors become close codes at the connection boundary; DecodeError is counted and
reported, never fatal to the process.
"""

from __future__ import annotations


class WebscaleError(Exception):
    """Root of every exception webscale raises on purpose."""


class ConfigError(WebscaleError):
    """A configuration value is invalid."""


class StateError(WebscaleError):
    """A connection was asked to move between states in a way the state machine forbids."""


class ProtocolError(WebscaleError):
    """The peer violated the protocol; `close_code` is what we answer with (RFC 6455 §7.4.1)."""

    def __init__(self, message: str, close_code: int = 1002) -> None:
        super().__init__(message)
        self.close_code = close_code


class MessageTooBig(ProtocolError):
    def __init__(self, size: int, limit: int) -> None:
        super().__init__(f"message of {size}+ bytes exceeds the limit of {limit}", 1009)
        self.size = size
        self.limit = limit


class DecodeError(WebscaleError):
    """A message could not be decoded into the payload struct."""


class SendTimeout(WebscaleError):
    """`handle.send(data, timeout=...)`: the client's outbound queue stayed over its high-water
    mark for `timeout` seconds; the message was not sent."""
