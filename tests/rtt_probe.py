"""A well-behaved client in its own process: one ~10 KB text message every 100 ms, each echoed.

    python tests/rtt_probe.py wss://127.0.0.1:PORT/ CAFILE

Prints "ready" once connected, sends until a line arrives on stdin ("stop N": and at least N
round trips are done, however soon the line came), then prints one JSON line:
{"rtts": [seconds, ...], "sent": [seconds since connecting, ...], "error": null or what went
wrong}. Its own process, so that the load the
tests generate (TLS clients in threads) does not share its GIL and delay its measurements.
"""

from __future__ import annotations

import asyncio
import json
import ssl
import sys
import time

from websockets.asyncio.client import connect


def _at_least(line: str) -> int:
    words = line.split()
    return int(words[1]) if len(words) > 1 else 0


async def probe(url: str, cafile: str | None) -> dict[str, object]:
    context = ssl.create_default_context(cafile=cafile) if url.startswith("wss:") else None
    rtts: list[float] = []
    sent: list[float] = []
    loop = asyncio.get_running_loop()
    stop = loop.run_in_executor(None, sys.stdin.readline)
    try:
        async with connect(url, ssl=context, max_size=None, open_timeout=10,
                           ping_interval=None) as ws:
            print("ready", flush=True)
            opened = time.monotonic()
            seq = 0
            while not stop.done() or len(rtts) < _at_least(stop.result()):
                payload = f"{seq:08d} " + "w" * 10_000
                started = time.monotonic()
                sent.append(started - opened)
                await ws.send(payload)
                reply = await asyncio.wait_for(ws.recv(), 10)
                rtts.append(time.monotonic() - started)
                if reply != payload:
                    return {"rtts": rtts, "sent": sent, "error": f"reply {seq} was not the echo"}
                seq += 1
                await asyncio.sleep(0.1)
    except Exception as exc:  # reported to the test, which fails on it
        return {"rtts": rtts, "sent": sent, "error": repr(exc)}
    return {"rtts": rtts, "sent": sent, "error": None}


if __name__ == "__main__":
    result = asyncio.run(probe(sys.argv[1], sys.argv[2] if len(sys.argv) > 2 else None))
    print(json.dumps(result), flush=True)
