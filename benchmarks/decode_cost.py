#!/usr/bin/env python3
"""The in-process floors of one ~10 KB workload message: what the server cannot do cheaper.

Times, in one process with no sockets, the steps every message goes through: orjson's parse, the
hand-written `decode_telemetry` (webscale/examples/telemetry.py: parse + the dataclasses, every
field type-checked), the generic decoder `webscale.decoder.build_decoder(Telemetry)` generates, the
dataclass construction alone, and wsproto's parse of one masked 10 KB text frame with the C unmask
webscale installs and with wsproto's own; then the frame path the server runs (webscale/frames.py:
wsproto's FrameProtocol with the specialised header parse and whole-text decode, one per
connection, fed frame after frame) next to wsproto's plain FrameProtocol. The decoders run on two
document shapes: bench_client's MessageTemplate (~114 readings in 10 KB) and issue 10's "notes"
document (`bench_client.payload.notes_document`: 40 readings, a free-text note padding to the same
size, and `site`/`firmware` strings the struct ignores); the two decoders of a shape alternate
round by round, so a neighbour's load hits both alike. CPU time (`time.process_time`) per call, the
best of --repeat rounds of --number calls, cycling through 200 distinct documents so the parser
does not see the same bytes every time. Prints a table and the ratio generic / hand-written per
shape; --json writes the numbers (microseconds, and the ratios under "ratios").

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

from bench_client.payload import MessageTemplate, notes_document  # noqa: E402
from webscale import fastmask  # noqa: E402
from webscale.decoder import build_decoder  # noqa: E402
from webscale.examples.telemetry import Reading, Telemetry, decode_telemetry  # noqa: E402
from webscale.frames import server_frames  # noqa: E402

HAND = "decode_telemetry (orjson + dataclasses, type-checked)"
GENERIC = "build_decoder(Telemetry) (generated, same checks)"


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


def alternating(fns: dict[str, Callable[[Any], object]], inputs: list[Any], number: int,
                repeat: int) -> dict[str, float]:
    """`per_call` for several functions, one round of each in turn, best round of each."""
    best = dict.fromkeys(fns, float("inf"))
    for _ in range(repeat):
        for name, fn in fns.items():
            best[name] = min(best[name], per_call(fn, inputs, number, 1))
    return best


def frame_parse(frames: list[bytes]) -> Callable[[int], object]:
    """Parse one masked frame on a fresh open wsproto connection (no handshake state)."""
    def run(i: int) -> object:
        conn = Connection(ConnectionType.SERVER)
        conn.receive_data(frames[i])
        return list(conn.events())
    return run


def frame_stream(make: Callable[[], frame_protocol.FrameProtocol],
                 frames: list[bytes]) -> Callable[[int], object]:
    """Feed one frame to a long-lived frame state machine and take its frames, as a
    connection does for every read."""
    protocol = make()

    def run(i: int) -> object:
        protocol.receive_bytes(frames[i])
        return list(protocol.received_frames())
    return run


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--size", type=int, default=10240)
    p.add_argument("--number", type=int, default=2000)
    p.add_argument("--repeat", type=int, default=5)
    p.add_argument("--json", type=Path)
    args = p.parse_args()

    template = MessageTemplate(args.size)
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

    notes = [notes_document(args.size, seed).decode() for seed in range(200)]
    generic = build_decoder(Telemetry)
    decoders = {HAND: decode_telemetry, GENERIC: generic}

    rows: dict[str, float] = {}
    ratios: dict[str, float] = {}
    rows["orjson.loads"] = per_call(orjson.loads, docs, args.number, args.repeat)
    rows.update(alternating(decoders, docs, args.number, args.repeat))
    ratios["template"] = rows[GENERIC] / rows[HAND]
    rows["notes: orjson.loads"] = per_call(orjson.loads, notes, args.number, args.repeat)
    for name, seconds in alternating(decoders, notes, args.number, args.repeat).items():
        rows[f"notes: {name}"] = seconds
    ratios["notes"] = rows[f"notes: {GENERIC}"] / rows[f"notes: {HAND}"]
    rows[f"{template.readings_count} Reading dataclasses from parsed dicts"] = per_call(
        construct, readings, args.number, args.repeat)
    python_masker = frame_protocol.XorMaskerSimple
    rows["wsproto frame parse, wsproto's Python unmask"] = per_call(
        frame_parse(frames), indices, args.number // 4, args.repeat)
    if fastmask.install():
        rows["wsproto frame parse, C unmask (as the server runs)"] = per_call(
            frame_parse(frames), indices, args.number, args.repeat)
        rows["frame path: wsproto FrameProtocol, C unmask"] = per_call(
            frame_stream(lambda: frame_protocol.FrameProtocol(False, []), frames), indices,
            args.number, args.repeat)
        rows["frame path: webscale/frames.py (as the server runs)"] = per_call(
            frame_stream(lambda: server_frames([]), frames), indices, args.number, args.repeat)
        frame_protocol.XorMaskerSimple = python_masker  # type: ignore[misc]

    print(f"one {args.size}-byte message: template {template.readings_count} readings, notes "
          f"40 readings + note; CPU per call, best of {args.repeat}; pid {os.getpid()}")
    width = max(map(len, rows))
    for name, seconds in rows.items():
        print(f"  {name:<{width}}  {seconds * 1e6:7.1f} us")
    for shape, ratio in ratios.items():
        print(f"  generic / hand-written, {shape}: {ratio:.3f}")
    if args.json:
        numbers: dict[str, Any] = {k: round(v * 1e6, 2) for k, v in rows.items()}
        numbers["ratios"] = {k: round(v, 3) for k, v in ratios.items()}
        args.json.write_text(json.dumps(numbers, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
