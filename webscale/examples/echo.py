"""Echo: send every message back as it came, text as text and binary as binary.

Run it with the raw payloads (no telemetry decoding), as the Autobahn TestSuite expects:

    webscale serve --decode none --handler webscale.examples.echo:handle
"""

from __future__ import annotations

from webscale import ConnectionHandle


def handle(handle: ConnectionHandle, message: str | bytes) -> None:
    handle.send(message)
