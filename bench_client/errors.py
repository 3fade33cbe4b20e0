"""Exceptions raised by bench_client.

    BenchError
    ├── ConfigError       bad command-line values (reported before anything starts)
    ├── ConnectError      a TCP connect that could not start or was refused (reason in args)
    ├── HandshakeError    the server's answer to the upgrade request is not a valid 101
    └── FrameError        the server sent bytes that are not valid RFC 6455 frames
"""

from __future__ import annotations


class BenchError(Exception):
    """Root of every error bench_client raises on purpose."""


class ConfigError(BenchError):
    pass


class ConnectError(BenchError):
    pass


class HandshakeError(BenchError):
    pass


class FrameError(BenchError):
    pass
