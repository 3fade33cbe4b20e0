"""Handlers the test servers load with --handler server_handlers:NAME (tests/ is on PYTHONPATH)."""

from __future__ import annotations

import os
import threading
import time

import itertools
from typing import Any

import orjson

from webscale import ConnectionHandle, Reject, Request, SendTimeout
from webscale.examples.telemetry import Telemetry

_log_lock = threading.Lock()


def ack(handle: ConnectionHandle, message: Telemetry) -> None:
    """Reply with the client id and seq, so a client can check order end to end."""
    handle.send(orjson.dumps({"client_id": message.client_id, "seq": message.seq}).decode())


def sleepy(handle: ConnectionHandle, message: Telemetry) -> None:
    """client_id 0 stands for the slow database query: it blocks its pool thread for 3 s."""
    if message.client_id == 0:
        time.sleep(3.0)
    handle.send(f"done {message.client_id}")


def napping(handle: ConnectionHandle, message: Telemetry) -> None:
    """Every message waits 0.3 s on "I/O" (a database call), holding no GIL, then replies."""
    time.sleep(0.3)
    handle.send(f"done {message.client_id}")


def slow_logged(handle: ConnectionHandle, message: Telemetry) -> None:
    """Takes a while and records each message it finished in $HANDLED_LOG (shutdown tests)."""
    time.sleep(0.05)
    with _log_lock, open(os.environ["HANDLED_LOG"], "a") as log:
        log.write(f"{message.client_id} {message.seq}\n")


def flood(handle: ConnectionHandle, message: object) -> None:
    """Sends 64 MiB in 64 KiB messages, as a handler would to a client that never reads."""
    chunk = b"x" * 65536
    for _ in range(1024):
        handle.send(chunk)


def flood_timed(handle: ConnectionHandle, message: object) -> None:
    """The same 64 MiB, sent with backpressure: waits while the client's queue is full, and
    gives up on a client that takes nothing for a second (closing it with 4408)."""
    chunk = b"x" * 65536
    try:
        for _ in range(1024):
            handle.send(chunk, timeout=1.0)
    except SendTimeout:
        handle.close(4408, "you stopped reading")


def slow_on_large(handle: ConnectionHandle, message: str | bytes) -> None:
    """A large message is a 0.2 s database write; a small one is echoed at once."""
    if len(message) > 64 * 1024:
        time.sleep(0.2)
    else:
        handle.send(message)


def crash(handle: ConnectionHandle, message: object) -> None:
    raise RuntimeError("handler bug")


def slow(handle: ConnectionHandle, message: Telemetry) -> None:
    """A 100 ms database call per message (backpressure tests)."""
    time.sleep(0.1)


def closer(handle: ConnectionHandle, message: Telemetry) -> None:
    """Closes the connection with an application code (4000 + seq) from the pool thread."""
    handle.close(4000 + message.seq, "closed by handler")


def whoami(handle: ConnectionHandle, message: object) -> None:
    """Replies with who the connection is: its client certificate and its --authorize identity
    (run with --decode none)."""
    cert = handle.peer_cert
    handle.send(orjson.dumps({
        "cn": cert.common_name if cert else None,
        "dns": list(cert.dns_names) if cert else None,
        "identity": handle.identity,
    }).decode())


# --- --authorize hooks -------------------------------------------------------------------------

def authorize_by_path(request: Request) -> Any:
    """The request's path says what to do, so one server shows every outcome:
    /allow returns what the hook saw (the identity), /deny returns None (403), /expired raises
    Reject(401), /busy raises Reject(429) with Retry-After, /crash raises a bug (500), and
    /slow?seconds=S sleeps S seconds first (past --handshake-timeout)."""
    path = request.path
    if path == "/slow":
        time.sleep(float(request.query.partition("seconds=")[2] or "1"))
        return {"slept": True}
    if path == "/allow":
        cert = request.peer_cert
        return {"path": path, "query": request.query, "token": request.headers.get("x-token"),
                "host": request.remote_address[0], "cn": cert.common_name if cert else None}
    if path == "/expired":
        raise Reject(401, "token expired", (("WWW-Authenticate", 'Bearer error="invalid_token"'),))
    if path == "/busy":
        raise Reject(429, headers=(("Retry-After", "30"),))
    if path == "/crash":
        raise KeyError("secret-internal-detail")
    return None


_calls = itertools.count(1)


def count_calls(request: Request) -> int:
    """The identity is how many times the hook has been called (once per connection)."""
    return next(_calls)


def peer_address(handle: ConnectionHandle, message: object) -> None:
    """Replies with the client address the server has for this connection, as JSON [host, port]
    (a PROXY header's client address when one was received)."""
    host, port = handle.remote_address[:2]
    handle.send(orjson.dumps([host, port]).decode())
