"""Admission in-process: a fake connection, a loop whose clock the test sets, and an executor
that runs the hook when the test says so (the pool's part), so the order of events is exact."""

from __future__ import annotations

import logging
from collections.abc import Callable
from concurrent.futures import Executor, Future
from typing import Any

import pytest

from webscale import Reject, Request, Response
from webscale.admission import Admission
from webscale.authorize import Authorizer, OriginPolicy
from webscale.http import Headers
from webscale.loop import Timer
from webscale.stats import Stats


class FakeConn:
    def __init__(self, conn_id: int = 1, deadline: float = 10.0) -> None:
        self.conn_id = conn_id
        self.address = ("10.0.0.7", 5000)
        self.upgrade_pending = True
        self.handshake_timer: Timer | None = Timer(deadline, lambda: None, ())
        self.responses: list[Response] = []
        self.is_closed = False

    @property
    def closed(self) -> bool:
        return self.is_closed

    def respond(self, response: Response) -> None:
        self.upgrade_pending = False
        self.responses.append(response)


class FakeLoop:
    def __init__(self) -> None:
        self.now = 0.0
        self.queued: list[tuple[Callable[..., object], tuple[Any, ...]]] = []

    def time(self) -> float:
        return self.now

    def call_soon_threadsafe(self, callback: Callable[..., object], *args: Any,
                             wake: bool = True) -> None:
        self.queued.append((callback, args))

    def run_queued(self) -> None:
        queued, self.queued = self.queued, []
        for callback, args in queued:
            callback(*args)


class HeldPool(Executor):
    """Holds submitted calls until `run_all` (the pool thread's turn)."""

    def __init__(self) -> None:
        self.held: list[tuple[Callable[..., object], tuple[Any, ...]]] = []

    def submit(self, fn: Callable[..., Any], /, *args: Any, **kwargs: Any) -> Future[Any]:
        self.held.append((fn, args))
        return Future()

    def run_all(self) -> None:
        held, self.held = self.held, []
        for fn, args in held:
            fn(*args)


class Rig:
    def __init__(self, hook: Authorizer | None, origins: tuple[str, ...] = ()) -> None:
        self.loop = FakeLoop()
        self.pool = HeldPool()
        self.stats = Stats()
        self.admitted: list[tuple[Any, Any]] = []
        self.admission = Admission(self.loop, self.pool, self.stats,
                                   admit=lambda conn, identity: self.admitted.append(
                                       (conn, identity)),
                                   origins=OriginPolicy(origins), authorizer=hook,
                                   handshake_timeout=10.0)


def upgrade(*headers: tuple[str, str]) -> Request:
    return Request("GET", "/", Headers(headers), upgrade=True, remote_address=("10.0.0.7", 5000))


def test_without_a_hook_admission_is_immediate() -> None:
    rig = Rig(None)
    conn = FakeConn()
    rig.admission.check(conn, upgrade())
    assert rig.admitted == [(conn, None)] and rig.pool.held == []


def test_the_hook_runs_in_the_pool_and_its_verdict_on_the_loop() -> None:
    rig = Rig(lambda request: "device-7")
    conn = FakeConn()
    rig.admission.check(conn, upgrade())
    assert rig.admitted == [] and len(rig.pool.held) == 1  # nothing decided on the loop
    rig.pool.run_all()
    assert rig.admitted == [] and len(rig.loop.queued) == 1  # the pool only queues the verdict
    rig.loop.run_queued()
    assert rig.admitted == [(conn, "device-7")]


def test_refusals_are_answered_and_counted() -> None:
    def hook(request: Request) -> object:
        raise Reject(401, "who are you")

    rig = Rig(hook, origins=("https://app.example",))
    wrong_origin, refused = FakeConn(1), FakeConn(2)
    rig.admission.check(wrong_origin, upgrade(("Origin", "https://evil.example")))
    assert wrong_origin.responses == [Response.text(403, "origin not allowed")]
    assert rig.pool.held == []  # the hook is not asked about a refused Origin
    rig.admission.check(refused, upgrade(("Origin", "https://app.example")))
    rig.pool.run_all()
    rig.loop.run_queued()
    assert refused.responses == [Response.text(401, "who are you")] and rig.admitted == []
    assert rig.stats.upgrades_refused_by_reason == {"origin": 1, "rejected": 1}


@pytest.mark.parametrize(("answer_at", "warned"), [(5.0, False), (12.0, True)])
def test_a_verdict_for_a_closed_connection_is_dropped(
        answer_at: float, warned: bool, caplog: pytest.LogCaptureFixture) -> None:
    """The client left (before its deadline: silently) or the handshake timed out (the hook
    was too slow: a warning); either way nothing is sent and nothing admitted."""
    caplog.set_level(logging.INFO, "webscale.admission")
    rig = Rig(lambda request: "device-7")
    conn = FakeConn(deadline=10.0)
    rig.admission.check(conn, upgrade())
    conn.is_closed = True
    rig.loop.now = answer_at
    rig.pool.run_all()
    rig.loop.run_queued()
    assert rig.admitted == [] and conn.responses == []
    assert ("past the connection's --handshake-timeout" in caplog.text) is warned
