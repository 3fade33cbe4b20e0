"""bench_client: a load generator for TLS WebSocket servers, with no asyncio.

`bench_client --url wss://127.0.0.1:8443/ --clients 25000` spreads the clients over worker
processes (`worker.py`), each running its own selectors loop (`loop.py`) that drives every
connection (`connection.py`) through TCP connect, TLS and the WebSocket upgrade (`protocol.py`),
then sends the telemetry document (`payload.py`) at a fixed rate. Workers report to the parent
(`cli.py`) over pipes; the parent merges the statistics (`stats.py`) into the report (`report.py`).
`asyncio_twin.py` is the same server job written with `websockets` on asyncio, for comparison.
"""

__all__: list[str] = []
