#!/usr/bin/env python3
"""The in-process floors of one ~10 KB workload message: what the server cannot do cheaper.

Times, in one process with no sockets, the steps every message goes through: orjson's parse,
`webscale.messages.decode_telemetry` (parse + the dataclasses, every field type-checked), the
dataclass construction alone, and wsproto's parse of one masked 10 KB text frame with the C
unmask webscale installs and with wsproto's own. CPU time (`time.process_time`) per call, the
best of --repeat rounds of --number calls, cycling through 200 distinct documents so the parser
does not see the same bytes every time. Prints a table; --json writes the numbers.

    python benchmarks/decode_cost.py
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import orjson  # noqa: E402
from wsproto import ConnectionType, frame_protocol  # noqa: E402
from wsproto.connection import Connection  # noqa: E402

from bench_client.payload import DOCUMENTS, MessageTemplate  # noqa: E402
from webscale import fastmask  # noqa: E402
from webscale.messages import Reading, decode_telemetry  # noqa: E402


def per_call(fn: Callable[[Any], object], inputs: list[Any], number: int, repeat: int) -> float:
    """Best-of-`repeat` CPU seconds per call over `number` calls cycling through `inputs`."""
    best = float("inf")
    n = len(inputs)
    for _ in range(repeat):
        started = time.process_time()
        for i in range(number):
            fn(inputs[i % n])
        best = min(best, (time.process_time() - started) / number)
    return best


def frame_parse(frames: list[bytes]) -> Callable[[int], object]:
    """Parse one masked frame on a fresh open wsproto connection (no handshake state)."""
    def run(i: int) -> object:
        conn = Connection(ConnectionType.SERVER)
        conn.receive_data(frames[i])
        return list(conn.events())
    return run


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--size", type=int, default=10240)
    p.add_argument("--document", choices=DOCUMENTS, default="telemetry",
                   help="the message's shape, as bench_client's --document")
    p.add_argument("--number", type=int, default=2000)
    p.add_argument("--repeat", type=int, default=5)
    p.add_argument("--json", type=Path)
    args = p.parse_args()

    template = MessageTemplate(args.size, args.document)
    docs = [bytes(template.render(i, i, 1.7e9 + i)).decode() for i in range(200)]
    readings = [orjson.loads(d)["readings"] for d in docs]
    frames = []
    for i in range(200):
        out = bytearray()
        template.write_frame(out, i, i, 1.7e9 + i)
        frames.append(bytes(out))
    indices = list(range(200))

    def construct(raws: list[dict[str, Any]]) -> object:
        return [Reading(r["sensor"], r["value"], r["unit"], r["ok"], r["tags"]) for r in raws]

    rows: dict[str, float] = {}
    rows["orjson.loads"] = per_call(orjson.loads, docs, args.number, args.repeat)
    rows["decode_telemetry (orjson + dataclasses, type-checked)"] = per_call(
        decode_telemetry, docs, args.number, args.repeat)
    rows[f"{template.readings_count} Reading dataclasses from parsed dicts"] = per_call(
        construct, readings, args.number, args.repeat)
    python_masker = frame_protocol.XorMaskerSimple
    rows["wsproto frame parse, wsproto's Python unmask"] = per_call(
        frame_parse(frames), indices, args.number // 4, args.repeat)
    if fastmask.install():
        rows["wsproto frame parse, C unmask (as the server runs)"] = per_call(
            frame_parse(frames), indices, args.number, args.repeat)
        frame_protocol.XorMaskerSimple = python_masker  # type: ignore[misc]

    print(f"one {args.size}-byte {args.document} message, {template.readings_count} readings; "
          f"CPU per call, best of {args.repeat}; pid {os.getpid()}")
    width = max(map(len, rows))
    for name, seconds in rows.items():
        print(f"  {name:<{width}}  {seconds * 1e6:7.1f} us")
    if args.json:
        args.json.write_text(json.dumps({k: round(v * 1e6, 2) for k, v in rows.items()},
                                        indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
