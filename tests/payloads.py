"""The workload's document, built the way bench_client builds it (about `size` bytes)."""

from __future__ import annotations

import time

import orjson


def telemetry_json(client_id: int, seq: int, size: int = 10240) -> str:
    readings = []
    doc = {"client_id": client_id, "seq": seq, "sent_at": time.time(), "readings": readings}
    i = 0
    while len(orjson.dumps(doc)) < size:
        readings.append({"sensor": f"sensor-{i:04d}", "value": 20.0 + i / 7, "unit": "celsius",
                         "ok": i % 5 != 0, "tags": ["rack-1", f"zone-{i % 4}"]})
        i += 1
    return orjson.dumps(doc).decode()
