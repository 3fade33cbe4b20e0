"""The thread pool: a `concurrent.futures.ThreadPoolExecutor` whose idle threads wake one at a time.

Why: the executor's work queue is a `queue.SimpleQueue`. When several of its threads wait idle, a
`put` wakes one, and that thread, on taking the item, releases the queue's lock again, which wakes
a second idle thread for nothing: it must take the GIL (stalling the thread doing real work, or the
loop) only to find the queue empty and sleep again. A server hands the pool a unit hundreds of
times a second, and a woken thread costs two context switches and a GIL hand-off (~10 us of CPU
per unit on a 2-core VM, benchmarks/handoff_cost.py). `WakeOneQueue` keeps one lock per waiting
thread and releases exactly one on `put`, the way `threading.Condition.notify()` does.

Everything else is the standard executor: `submit`, futures, `shutdown`; only its queue object is
replaced, before any thread starts (the executor's threads take the queue from the executor when
they are created; CPython 3.11-3.13 name it `_work_queue`).
"""

from __future__ import annotations

import logging
import os
import queue
import threading
from collections import deque
from concurrent.futures import ThreadPoolExecutor
from typing import Any

logger = logging.getLogger(__name__)


class WakeOneQueue:
    """The subset of `queue.SimpleQueue` the executor uses, waking one waiter per item."""

    __slots__ = ("_items", "_waiters", "_lock")

    def __init__(self) -> None:
        self._items: deque[Any] = deque()
        self._waiters: deque[Any] = deque()  # one acquired lock per waiting thread
        self._lock = threading.Lock()

    def put(self, item: Any, block: bool = True, timeout: float | None = None) -> None:
        with self._lock:
            self._items.append(item)
            if self._waiters:
                self._waiters.popleft().release()

    def get(self, block: bool = True, timeout: float | None = None) -> Any:
        while True:
            with self._lock:
                if self._items:
                    return self._items.popleft()
                if not block:
                    raise queue.Empty
                waiter = threading.Lock()
                waiter.acquire()
                self._waiters.append(waiter)
            # put() releases it; with a timeout, a late release is harmless (the next put's
            # release of a lock nobody waits on is skipped below).
            if not waiter.acquire(timeout=-1 if timeout is None else timeout):
                with self._lock:
                    try:
                        self._waiters.remove(waiter)
                    except ValueError:
                        pass  # released meanwhile: an item is there for us
                    else:
                        raise queue.Empty

    def get_nowait(self) -> Any:
        return self.get(block=False)

    def put_nowait(self, item: Any) -> None:
        self.put(item)

    def empty(self) -> bool:
        return not self._items

    def qsize(self) -> int:
        return len(self._items)


def _batch_scheduling_available() -> bool:
    return hasattr(os, "SCHED_BATCH") and hasattr(os, "sched_setscheduler")


def _batch_scheduling() -> None:
    """Pool threads are batch work: on Linux, SCHED_BATCH keeps a woken pool thread from
    preempting the loop thread that woke it (it would only block on the GIL the loop holds).
    Elsewhere (no SCHED_BATCH) the threads keep the default policy."""
    if _batch_scheduling_available():
        try:
            os.sched_setscheduler(0, os.SCHED_BATCH, os.sched_param(0))
        except OSError:
            pass


class WorkerPool(ThreadPoolExecutor):
    def __init__(self, max_workers: int, thread_name_prefix: str = "") -> None:
        if not _batch_scheduling_available():
            logger.debug("no SCHED_BATCH here (Linux-only): pool threads keep the default "
                         "scheduling policy and may preempt the loop thread that wakes them")
        super().__init__(max_workers, thread_name_prefix=thread_name_prefix,
                         initializer=_batch_scheduling)
        if not hasattr(self, "_work_queue") or self._threads:
            raise RuntimeError("this Python's ThreadPoolExecutor has no _work_queue to replace")
        self._work_queue = WakeOneQueue()  # type: ignore[assignment]
