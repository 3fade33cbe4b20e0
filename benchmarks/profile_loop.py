#!/usr/bin/env python3
"""Run `webscale serve` with the loop thread under cProfile; print the top functions at exit.

    python benchmarks/profile_loop.py [serve flags...]     # then load it, then SIGTERM it

The pool threads are not profiled (their work is decode + handler, measured on its own by
benchmarks/decode_cost.py); this shows what the loop spends per message.
"""

from __future__ import annotations

import cProfile
import pstats
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from webscale.cli import main

if __name__ == "__main__":
    # The loop thread's CPU clock, not the wall clock: a wall-clock profile charges each C call
    # that releases the GIL (an SSL read, epoll) with the time spent waiting to get it back.
    profiler = cProfile.Profile(time.thread_time)
    try:
        profiler.runcall(main, ["serve", *sys.argv[1:]])
    finally:
        stats = pstats.Stats(profiler, stream=sys.stderr)
        stats.sort_stats("tottime").print_stats(35)
