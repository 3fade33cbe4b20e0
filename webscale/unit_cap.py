"""How many pool units may run at once: two while the work is GIL-bound, all threads otherwise.

How this works: GIL-bound units (decode, fast handlers) gain nothing from running side by side,
one thread holds the GIL at a time, and every thread queued on it delays the loop thread (reads,
pongs) by another switch interval; two keep one pool thread busy while the other is handed its
next unit. Units that wait (a database call) should fill the pool. Which kind is running is told
by each unit's CPU time over its wall time, a moving average: a GIL-bound unit sharing the GIL
with one other unit and the loop measures ~0.35-1.0, a handler blocked on I/O ~0.05 or less.

Two corrections keep the average honest. While the cap is lifted, GIL-bound units crowding the
pool would each measure a 1/N share and look like waiting ones: so 2 s after the cap lifts it is
tried again, and only units submitted after that probe, with none from before it still in the
pool, count. And a unit still running after 50 ms is waiting on something other than the GIL: it
stops counting against the cap, so handlers stuck in a slow call never hold up the rest.

Pure bookkeeping on the loop thread, clock passed in: the dispatcher owns the timers and pool.
"""

from __future__ import annotations

_CPU_BOUND_UNITS = 2
_WAITING_RATIO = 0.2
_PROBE_SECONDS = 2.0
# Where the average restarts at a probe: just above the threshold, so one waiting unit lifts
# the cap again and a GIL-bound one (>= 0.35) keeps it.
_PROBE_RATIO = 0.22
_STALE_UNIT_SECONDS = 0.05


class UnitCap:
    __slots__ = ("threads", "cpu_ratio", "_seq", "_probe_seq", "_probed_at", "_started")

    def __init__(self, threads: int, now: float) -> None:
        self.threads = threads
        self.cpu_ratio = _PROBE_RATIO  # GIL-bound until units show otherwise
        self._seq = 0
        self._probe_seq = 0
        self._probed_at = now
        self._started: dict[int, float] = {}  # seq -> submission time, units in the pool

    @property
    def capped(self) -> bool:
        """Whether units are GIL-bound, so at most two run at once."""
        return self.cpu_ratio >= _WAITING_RATIO and self.threads > _CPU_BOUND_UNITS

    @property
    def in_pool(self) -> int:
        """Units submitted and not yet back (queued in the executor or running)."""
        return len(self._started)

    def submitted(self, now: float) -> int:
        """Book a unit going to the pool; its sequence number."""
        self._seq += 1
        self._started[self._seq] = now
        return self._seq

    def free(self, now: float) -> tuple[int, float]:
        """Units that may be submitted now while capped (<= 0: none), and the seconds until the
        oldest busy unit turns stale and frees a place."""
        busy = 0
        oldest = now
        for started in self._started.values():
            if now - started < _STALE_UNIT_SECONDS:
                busy += 1
                oldest = min(oldest, started)
        return _CPU_BOUND_UNITS - busy, _STALE_UNIT_SECONDS - (now - oldest)

    def finished(self, seq: int, cpu_seconds: float, wall_seconds: float, now: float) -> None:
        """A unit came back: fold its CPU/wall into the average (see the module docstring)."""
        del self._started[seq]
        oldest = next(iter(self._started), None)  # seqs were inserted in order
        if (seq > self._probe_seq and wall_seconds > 0
                and (oldest is None or oldest > self._probe_seq)):
            was_capped = self.cpu_ratio >= _WAITING_RATIO
            self.cpu_ratio = (0.8 * self.cpu_ratio
                              + 0.2 * min(1.0, cpu_seconds / wall_seconds))
            if was_capped and self.cpu_ratio < _WAITING_RATIO:
                self._probed_at = now  # lifted now: try the cap again in _PROBE_SECONDS
                return
        if self.cpu_ratio < _WAITING_RATIO and now - self._probed_at >= _PROBE_SECONDS:
            self._probed_at = now
            self._probe_seq = self._seq
            self.cpu_ratio = _PROBE_RATIO
