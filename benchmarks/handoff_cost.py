#!/usr/bin/env python3
"""What one hand-off to a thread pool costs, in CPU: the floor of webscale's per-unit overhead.

    python benchmarks/handoff_cost.py [--tasks 3000] [--rate 1000]

A main thread submits a ~10 us task `--rate` times a second (sleeping in between, as a server's
loop sleeps in epoll between messages) to: nothing (the work done inline, the baseline), a
`concurrent.futures.ThreadPoolExecutor` with one and with two idle threads (its SimpleQueue wakes
a second idle thread for nothing), and webscale's `pool.WorkerPool` (wake-one queue, pool threads
SCHED_BATCH). Prints the process's CPU per task and, against the inline baseline, the CPU one
hand-off costs. Whatever the server does per unit of pool work costs at least this.
"""

from __future__ import annotations

import argparse
import json
import sys
import threading
import time
from collections.abc import Callable
from concurrent.futures import Executor, ThreadPoolExecutor
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from webscale.pool import WorkerPool


def work() -> int:
    total = 0
    for i in range(300):  # ~10 us of Python
        total += i
    return total


def per_task(submit: Callable[[], object], tasks: int, rate: float) -> float:
    started = time.process_time()
    for _ in range(tasks):
        submit()
        time.sleep(1 / rate)
    time.sleep(0.05)  # let the last task finish on its thread
    return (time.process_time() - started) / tasks


def warmed(pool: Executor, threads: int) -> Executor:
    """`pool` with `threads` threads started and idle."""
    gates = [threading.Event() for _ in range(threads)]
    futures = [pool.submit(gate.wait) for gate in gates]
    time.sleep(0.05)
    for gate in gates:
        gate.set()
    for future in futures:
        future.result()
    time.sleep(0.05)
    return pool


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--tasks", type=int, default=3000)
    p.add_argument("--rate", type=float, default=1000.0, help="tasks per second")
    p.add_argument("--json", type=Path)
    args = p.parse_args()
    inline = per_task(work, args.tasks, args.rate)
    rows = {"inline (no pool)": inline}
    for name, make, threads in (("ThreadPoolExecutor, 1 idle thread", ThreadPoolExecutor, 1),
                                ("ThreadPoolExecutor, 2 idle threads", ThreadPoolExecutor, 2),
                                ("webscale WorkerPool, 2 idle threads", WorkerPool, 2)):
        pool = warmed(make(16), threads)
        rows[name] = per_task(lambda pool=pool: pool.submit(work), args.tasks, args.rate)
        pool.shutdown()
    print(f"{args.tasks} tasks of ~10 us at {args.rate:g}/s; CPU of the whole process per task")
    for name, seconds in rows.items():
        extra = "" if seconds is inline else f"   (hand-off: {(seconds - inline) * 1e6:5.1f} us)"
        print(f"  {name:<38} {seconds * 1e6:6.1f} us{extra}")
    if args.json:
        args.json.write_text(json.dumps({name: round(seconds * 1e6, 2)
                                         for name, seconds in rows.items()}, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
