#!/usr/bin/env python3
"""The CPU floor of one TLS handshake on each side, in process: OpenSSL's share of a connect.

Runs full handshakes between a client context (verifying the server against the test CA, as
bench_client does) and webscale's own server context over memory BIOs, so no sockets, syscalls
or event loops are counted, and times each side's `do_handshake` calls with the thread's CPU
clock. Both ticket settings are measured interleaved (the server sends 2 TLS 1.3 session tickets
by default). What a real connect costs on top (socket, loop, HTTP upgrade) is the difference to
bench_client's and the server's measured CPU per connection.

    python benchmarks/handshake_cost.py [--rounds 1000]
"""

from __future__ import annotations

import argparse
import json
import ssl
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from webscale.certs import ensure_certs  # noqa: E402
from webscale.tls import make_server_context  # noqa: E402


def _step(side: ssl.SSLObject) -> tuple[bool, float]:
    """One do_handshake call: (complete, thread CPU seconds it took)."""
    started = time.thread_time()
    try:
        side.do_handshake()
        done = True
    except ssl.SSLWantReadError:
        done = False
    return done, time.thread_time() - started


def handshake(client: ssl.SSLContext, server: ssl.SSLContext) -> tuple[float, float]:
    """One full handshake; (client CPU seconds, server CPU seconds)."""
    c_in, c_out, s_in, s_out = ssl.MemoryBIO(), ssl.MemoryBIO(), ssl.MemoryBIO(), ssl.MemoryBIO()
    c = client.wrap_bio(c_in, c_out, server_hostname="localhost")
    s = server.wrap_bio(s_in, s_out, server_side=True)
    c_cpu = s_cpu = 0.0
    c_done = s_done = False
    while not (c_done and s_done):
        if not c_done:
            c_done, spent = _step(c)
            c_cpu += spent
        s_in.write(c_out.read())
        if not s_done:
            s_done, spent = _step(s)
            s_cpu += spent
        c_in.write(s_out.read())
    return c_cpu, s_cpu


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--rounds", type=int, default=1000)
    p.add_argument("--json", type=Path)
    args = p.parse_args()
    certs = ensure_certs(ROOT / "certs")
    client = ssl.create_default_context(cafile=str(certs.ca_cert))
    server = make_server_context(certs.ca_cert.parent / "server.pem",
                                 certs.ca_cert.parent / "server.key")
    totals = {2: [0.0, 0.0], 0: [0.0, 0.0]}
    for _ in range(args.rounds):
        for tickets in totals:
            server.num_tickets = tickets
            c_cpu, s_cpu = handshake(client, server)
            totals[tickets][0] += c_cpu
            totals[tickets][1] += s_cpu
    out = {f"{tickets}_tickets": {"client_us": round(c / args.rounds * 1e6),
                                  "server_us": round(s / args.rounds * 1e6)}
           for tickets, (c, s) in totals.items()}
    print(f"{ssl.OPENSSL_VERSION}; {args.rounds} handshakes per setting, CPU per handshake:")
    for name, row in out.items():
        print(f"  server sends {name.replace('_', ' ')}: client {row['client_us']} us, "
              f"server {row['server_us']} us")
    if args.json:
        args.json.write_text(json.dumps(out, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
