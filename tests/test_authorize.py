"""Who gets in past TLS: the --authorize hook and --allowed-origin, on a real server, and their
decisions as pure functions.

The hooks and the handler the servers load are in server_handlers.py: `authorize_by_path` takes
its cue from the request path, so one server shows every outcome.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Callable
from typing import Any

import pytest
from websockets.asyncio.client import connect

from helpers import UNIT, ServerProcess, client_ssl_context, raw_upgrade, wait_for
from webscale import Config, ConfigError, Reject, Request, Response
from webscale.authorize import OriginPolicy, decide
from webscale.http import Headers
from webscale.rejections import RejectionLog

StartServer = Callable[..., ServerProcess]

HOOK = ("--authorize", "server_handlers:authorize_by_path", "--handler", "server_handlers:whoami",
        "--decode", "none")


async def replies(url: str, server: ServerProcess, messages: int = 1,
                  headers: dict[str, str] | None = None) -> list[Any]:
    assert server.cafile is not None
    async with connect(url, ssl=client_ssl_context(server.cafile),
                       additional_headers=headers) as ws:
        out = []
        for n in range(messages):
            await ws.send(f"message {n}")
            out.append(json.loads(await asyncio.wait_for(ws.recv(), 5 * UNIT)))
        return out


def test_allowed_identity_reaches_the_handler(server_factory: StartServer) -> None:
    server = server_factory(*HOOK)
    url = server.url + "allow?device=7"
    [reply] = asyncio.run(replies(url, server, headers={"X-Token": "abc"}))
    # The hook saw the path, query, a header and the peer address; what it returned is
    # handle.identity. No client certificate was asked for: peer_cert is None.
    assert reply == {"cn": None, "dns": None, "identity": {
        "path": "/allow", "query": "device=7", "token": "abc", "host": "127.0.0.1", "cn": None}}
    assert server.stats()["upgrades_refused_by_reason"] == {}


def test_hook_refusals_are_answered_counted_and_logged(server_factory: StartServer) -> None:
    server = server_factory(*HOOK)
    denied = raw_upgrade(server, "/deny")
    assert (denied.status, denied.body) == (403, b"Forbidden\n")
    expired = raw_upgrade(server, "/expired")
    assert (expired.status, expired.body) == (401, b"token expired\n")
    assert expired.headers["www-authenticate"] == 'Bearer error="invalid_token"'
    busy = raw_upgrade(server, "/busy")
    assert (busy.status, busy.headers["retry-after"]) == (429, "30")
    crashed = raw_upgrade(server, "/crash")
    # A hook's bug is a 500 that tells the client nothing internal, and a log line with the
    # client's address and the traceback; the server keeps serving.
    assert (crashed.status, crashed.body) == (500, b"Internal Server Error\n")
    wait_for(lambda: "Traceback" in server.stderr(), what="the hook's traceback in the log")
    log = server.stderr()
    assert "KeyError: 'secret-internal-detail'" in log
    assert "WARNING" in log and "upgrade from 127.0.0.1:" in log and "refused with 500" in log
    assert asyncio.run(replies(server.url + "allow", server))[0]["identity"]["path"] == "/allow"
    stats = server.stats()
    assert stats["upgrades_refused_by_reason"] == {"forbidden": 1, "hook_error": 1,
                                                   "rejected": 2}
    assert stats["websockets_open"] == 0 and stats["handler_errors"] == 0
    status, metrics = server.admin_get("/metrics")
    assert status == 200
    assert 'webscale_upgrades_refused_total{reason="rejected"} 2' in metrics.decode()


def test_a_hook_slower_than_the_handshake_timeout(server_factory: StartServer) -> None:
    timeout = 1.5 * UNIT
    server = server_factory(*HOOK, "--handshake-timeout", str(timeout))
    with pytest.raises(OSError):  # closed at the timeout, without an answer
        raw_upgrade(server, f"/slow?seconds={2 * timeout}")
    assert server.stats()["handshake_timeouts"] == 1
    # The hook's late answer finds the connection closed: ignored, with a warning.
    wait_for(lambda: "past the connection's --handshake-timeout" in server.stderr(),
             units=4 * timeout,
             what="the late answer's warning")
    assert "the --authorize hook answered for 127.0.0.1:" in server.stderr()
    stats = server.stats()
    assert stats["upgrades_refused_by_reason"] == {} and stats["connections_open"] == 0
    assert asyncio.run(replies(server.url + "allow", server))[0]["identity"]["path"] == "/allow"


def test_the_hook_runs_once_per_connection(server_factory: StartServer) -> None:
    server = server_factory("--authorize", "server_handlers:count_calls",
                            "--handler", "server_handlers:whoami", "--decode", "none")
    first = asyncio.run(replies(server.url, server, messages=5))
    second = asyncio.run(replies(server.url, server, messages=2))
    assert [r["identity"] for r in first] == [1] * 5
    assert [r["identity"] for r in second] == [2] * 2


def test_allowed_origin(server_factory: StartServer) -> None:
    server = server_factory("--allowed-origin", "https://app.example",
                            "--allowed-origin", "http://localhost:3000")
    refused = {
        "missing": (),
        "another site": (("Origin", "https://evil.example"),),
        "an opaque origin": (("Origin", "null"),),
        "a trailing slash": (("Origin", "https://app.example/"),),
        "listed twice": (("Origin", "https://app.example"), ("Origin", "https://app.example")),
    }
    for what, headers in refused.items():
        answer = raw_upgrade(server, headers=headers)
        assert (answer.status, answer.body) == (403, b"origin not allowed\n"), what
    for origin in ("https://app.example", "http://localhost:3000"):
        assert raw_upgrade(server, headers=(("Origin", origin),)).status == 101
    stats = server.stats()
    assert stats["upgrades_refused_by_reason"] == {"origin": len(refused)}
    log = server.stderr()
    assert "upgrade from 127.0.0.1:" in log and "refused with 403: no Origin header" in log


def test_origin_values_are_checked_at_start_up() -> None:
    for bad in ("https://app.example/", "https://App.example", "app.example", ""):
        with pytest.raises(ConfigError, match="--allowed-origin"):
            Config(allowed_origin=(bad,)).validate()
    Config(allowed_origin=("https://app.example:8443", "http://[::1]:3000", "null", "*")
           ).validate()
    with pytest.raises(ConfigError, match="tuple"):
        Config(allowed_origin="https://app.example").validate()  # type: ignore[arg-type]


# --- decisions as pure functions ----------------------------------------------------------------

def request(*headers: tuple[str, str]) -> Request:
    return Request("GET", "/ws?x=1", Headers(headers), upgrade=True,
                   remote_address=("10.0.0.7", 5000))


def test_origin_policy() -> None:
    policy = OriginPolicy(("https://app.example",))
    assert policy.allows(request(("Origin", "https://app.example")))
    assert not policy.allows(request(("Origin", "https://APP.example")))  # exact match
    assert not policy.allows(request())
    anything = OriginPolicy(("*",))
    assert anything.allows(request(("origin", "https://whatever.example")))
    assert not anything.allows(request())  # `*` lists every Origin, not a missing one
    assert not OriginPolicy(())  # no flag: no policy


def test_decide_turns_every_hook_outcome_into_a_verdict() -> None:
    def raise_(exc: BaseException) -> Callable[[Request], object]:
        def hook(request: Request) -> object:
            raise exc
        return hook

    class Untruthful:
        def __bool__(self) -> bool:
            raise RuntimeError("no truth value")

    allowed = decide(lambda r: {"device": r.path}, request())
    assert allowed.refusal is None and allowed.identity == {"device": "/ws"}
    def returning(value: object) -> Callable[[Request], object]:
        return lambda r: value

    falsy_values: tuple[object, ...] = (None, False, 0, "", {})
    for falsy in falsy_values:
        assert decide(returning(falsy), request()).refusal == Response.text(403)
    rejected = decide(raise_(Reject(429, "slow down", (("Retry-After", "5"),))), request())
    assert rejected.reason == "rejected"
    assert rejected.refusal == Response.text(429, "slow down", (("Retry-After", "5"),))
    crashed = decide(raise_(ValueError("bug")), request())
    assert crashed.reason == "hook_error" and isinstance(crashed.error, ValueError)
    assert crashed.refusal == Response.text(500)
    assert decide(lambda r: Untruthful(), request()).reason == "hook_error"


def test_reject_refuses_what_would_break_the_response() -> None:
    assert Reject(401).reason == "" and Reject(401, "who are you").status == 401
    for status in (101, 200, 302, 600):
        with pytest.raises(ValueError, match="400-599"):
            Reject(status)
    for header in (("X-A", "1\r\nSet-Cookie: x"), ("Bad Name", "1"), ("Content-Length", "0"),
                   ("X-A", "caf\u00e9")):
        with pytest.raises(ValueError):
            Reject(401, "no", (header,))


def test_rejection_log_keeps_one_line_a_second_per_reason(
        caplog: pytest.LogCaptureFixture) -> None:
    now = [100.0]
    log = RejectionLog(logging.getLogger("test.rejections"), clock=lambda: now[0])
    caplog.set_level(logging.INFO, "test.rejections")
    assert log.log("origin", logging.INFO, "refused %s", "a")
    assert not log.log("origin", logging.INFO, "refused %s", "b")
    assert not log.log("origin", logging.INFO, "refused %s", "c")
    assert log.log("forbidden", logging.INFO, "refused %s", "d")  # another reason: its own line
    now[0] += 1.0
    assert log.log("origin", logging.INFO, "refused %s", "e")
    assert [r.getMessage() for r in caplog.records] == [
        "refused a", "refused d",
        "refused e (and 2 more origin refusals not logged since the last line)"]
