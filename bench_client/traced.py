"""Run a Python module under tracemalloc and write its peak traced memory when it exits.

    python -m bench_client.traced --out PEAK.json -- -m webscale serve --port 0 ...

Used by `scripts/pudding` to measure any server's Python-heap peak without the server's help:
tracemalloc starts before the server module is imported, and the peak (bytes) is written to
`--out` when the module returns or raises SystemExit (e.g. after a graceful SIGTERM).
"""

from __future__ import annotations

import argparse
import json
import runpy
import sys
import tracemalloc

# One frame per allocation is the cheapest setting; the peak does not depend on the depth.
TRACEBACK_FRAMES = 1


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="bench_client.traced",
                                     description=__doc__.splitlines()[0])
    parser.add_argument("--out", required=True, help="file to write {'tracemalloc_peak': bytes}")
    parser.add_argument("command", nargs=argparse.REMAINDER,
                        help="-- -m MODULE ARGS... (the module to run and its arguments)")
    args = parser.parse_args(argv)
    command = args.command[1:] if args.command[:1] == ["--"] else args.command
    if len(command) < 2 or command[0] != "-m":
        parser.error("expected: -- -m MODULE [ARGS...]")
    module, module_args = command[1], command[2:]
    sys.argv = [module, *module_args]
    tracemalloc.start(TRACEBACK_FRAMES)
    code: object = 0
    try:
        runpy.run_module(module, run_name="__main__", alter_sys=True)
    except SystemExit as exc:
        code = exc.code
    finally:
        _, peak = tracemalloc.get_traced_memory()
        tracemalloc.stop()
        with open(args.out, "w", encoding="utf-8") as handle:
            json.dump({"tracemalloc_peak": peak}, handle)
    return code if isinstance(code, int) else (0 if code is None else 1)


if __name__ == "__main__":
    raise SystemExit(main())
