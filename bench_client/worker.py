"""One worker process: its share of the clients on its own selectors loop.

How this works: the parent forks `run_worker(plan, config, pipe)`. The worker opens connections at
its share of `--ramp` (never more than `--inflight` handshakes at once), starts each one sending as
soon as it is open, and sends the parent a progress dict every `progress_interval`. Sends are laid
on one grid shared by all workers: client `i` sends at `t0 + (i / clients + k) / rate`, so the
load is spread evenly over each second whatever order connections open in. On "stop" from the
parent (or if the parent disappears) it closes every connection with 1000, waits up to
`close_timeout` for the replies, aborts the rest, and sends a final dict with everything it
measured (see `metrics.py`).
"""

from __future__ import annotations

import logging
import math
import signal
import time
from multiprocessing.connection import Connection
from typing import Any

from bench_client.config import BenchConfig, WorkerPlan, client_tls_context
from bench_client.connection import ClientConnection
from bench_client.loop import READ, EventLoop
from bench_client.metrics import WorkerMetrics
from bench_client.payload import MessageTemplate
from bench_client.stats import LatencyHistogram
from bench_client.timeline import HistogramDelta
from bench_client.transport import Target

logger = logging.getLogger(__name__)

PING_INTERVAL = 1.0  # the spec: sampled connections ping every second
# How often the ramp timer wakes to start the next batch; lower means smoother pacing, higher
# means fewer wake-ups. At 1,000 connections/s a 10 ms tick starts 10 per tick.
RAMP_TICK = 0.01


class ParentPipe:
    """Registered in the selector so a "stop" from the parent wakes the loop at once."""

    def __init__(self, worker: Worker, pipe: Connection) -> None:
        self.worker = worker
        self.pipe = pipe

    def on_readable(self) -> None:
        try:
            while self.pipe.poll():
                command = self.pipe.recv()
                if command == "stop":
                    self.worker.stop_requested = True
                elif command == "steady":
                    self.worker.begin_steady_state()
        except (EOFError, OSError):
            self.worker.stop_requested = True  # the parent is gone: wind down by ourselves
            self.worker.loop.unregister(self.pipe.fileno())

    def on_writable(self) -> None:  # pragma: no cover - only registered for reading
        pass


class Worker:
    def __init__(self, plan: WorkerPlan, config: BenchConfig, pipe: Connection) -> None:
        self.plan = plan
        self.config = config
        self.pipe = pipe
        self.loop = EventLoop()
        self.metrics = WorkerMetrics()
        self.template = MessageTemplate(config.size, config.document)
        self.target = Target(
            host=config.host,
            port=config.port,
            path=config.path,
            address=plan.address,
            tls=client_tls_context(config) if config.tls else None,
            handshake_timeout=config.handshake_timeout,
        )
        self.connections: dict[int, ClientConnection] = {}
        self.started = 0
        self.in_handshake = 0
        self.stop_requested = False
        self.ramp_started_at = 0.0
        self.grid_origin = 0.0
        self._lateness_delta = HistogramDelta()
        self._ping_rtt_delta = HistogramDelta()

    # -- ramp ---------------------------------------------------------------------------------

    def _ramp_tick(self) -> None:
        if self.stop_requested:
            return
        plan = self.plan
        allowed = math.floor((time.monotonic() - self.ramp_started_at) * plan.ramp) + 1
        while (self.started < min(allowed, plan.clients)
               and self.in_handshake < self.config.inflight):
            self._open_one()
        if self.started < plan.clients:
            self.loop.call_later(RAMP_TICK, self._ramp_tick)

    def _open_one(self) -> None:
        client_id = self.plan.first_client_id + self.started
        addrs = self.plan.source_addrs
        source = addrs[self.started % len(addrs)] if addrs else None
        self.started += 1
        self.in_handshake += 1
        if self.metrics.first_attempt_at is None:
            self.metrics.first_attempt_at = time.monotonic()
        connection = ClientConnection(client_id, self.loop, self.target, self.metrics,
                                      self.template, self._on_open, self._on_done)
        self.connections[client_id] = connection
        connection.start(source)

    def _on_open(self, connection: ClientConnection) -> None:
        self.in_handshake -= 1
        config = self.config
        if config.rate > 0:
            interval = 1.0 / config.rate
            phase = connection.client_id / config.clients * interval
            now = time.monotonic()
            periods = math.ceil((now - self.grid_origin - phase) / interval)
            connection.start_sending(self.grid_origin + phase + max(periods, 0) * interval,
                                     interval)
        if connection.client_id < config.ping_sample:
            connection.start_pinging(PING_INTERVAL)

    def _on_done(self, connection: ClientConnection) -> None:
        if not connection.opened:
            self.in_handshake -= 1
        self.connections.pop(connection.client_id, None)

    def begin_steady_state(self) -> None:
        """Keep what was recorded so far apart, as the ramp's (see metrics.py)."""
        self.metrics.lateness_ramp = self.metrics.lateness
        self.metrics.lateness = LatencyHistogram()
        self.metrics.ping_rtt_ramp = self.metrics.ping_rtt
        self.metrics.ping_rtt = LatencyHistogram()

    # -- reporting ----------------------------------------------------------------------------

    @property
    def settled(self) -> bool:
        metrics = self.metrics
        return (self.started == self.plan.clients
                and metrics.established + metrics.failed >= self.plan.clients)

    def _progress(self) -> dict[str, Any]:
        m = self.metrics
        return {
            "type": "progress",
            "worker": self.plan.index,
            "at": time.monotonic(),  # when these counts were taken (one clock for all workers)
            "attempted": m.attempted,
            "established": m.established,
            "failed": m.failed,
            "dropped": m.dropped,
            "open": m.established - m.dropped - m.closed_clean - m.closed_unanswered,
            "messages_written": m.messages_written,
            "messages_scheduled": m.messages_scheduled,
            "settled": self.settled,
            "last_established_at": m.last_established_at,
            # for the timeline (timeline.py): reasons so far, and what each latency histogram
            # gained since the last report
            "failure_reasons": dict(m.failure_reasons),
            "lateness": self._lateness_delta.since_last(m.lateness),
            "ping_rtt": self._ping_rtt_delta.since_last(m.ping_rtt),
        }

    def _report_progress(self) -> None:
        if self.stop_requested:
            return
        self._send(self._progress())
        self.loop.call_later(self.config.progress_interval, self._report_progress)

    def _send(self, message: dict[str, Any]) -> None:
        try:
            self.pipe.send(message)
        except (BrokenPipeError, OSError):
            self.stop_requested = True

    # -- run ----------------------------------------------------------------------------------

    def run(self) -> None:
        self.loop.register(self.pipe.fileno(), READ, ParentPipe(self, self.pipe))
        self.ramp_started_at = time.monotonic()
        self.grid_origin = self.ramp_started_at
        self._ramp_tick()
        self._report_progress()
        self.loop.run_until(lambda: self.stop_requested)
        self._close_all()
        self._send(self._progress())  # the timeline's last point: after the closes
        final = self.metrics.snapshot()
        final["type"] = "final"
        final["worker"] = self.plan.index
        self._send(final)
        self.loop.close()

    def _close_all(self) -> None:
        never_started = self.plan.clients - self.started
        if never_started:
            self.metrics.failed += never_started
            self.metrics.failure_reasons["stopped: not started before the end of the run"] += (
                never_started)
        for connection in list(self.connections.values()):
            connection.start_close()
        deadline = time.monotonic() + self.config.close_timeout
        self.loop.run_until(lambda: not self.connections or time.monotonic() >= deadline)
        for connection in list(self.connections.values()):
            connection.abort()


def run_worker(plan: WorkerPlan, config: BenchConfig, pipe: Connection) -> None:
    # Ctrl-C reaches the whole process group; the parent decides how to stop and tells us.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    Worker(plan, config, pipe).run()
