"""Command line: `webscale serve [flags]` (also `python -m webscale serve`)."""

from __future__ import annotations

import argparse
import logging
import os
import sys
import threading
from dataclasses import fields
from pathlib import Path

from .config import Config
from .errors import ConfigError
from .worker import add_worker_arguments, role_from_args

logger = logging.getLogger("webscale")


def _add_serve_flags(p: argparse.ArgumentParser) -> None:
    d = Config()
    add = p.add_argument
    add("--host", default=d.host, help="address to bind (default: %(default)s)")
    add("--port", type=int, default=d.port,
        help="TCP port, 0 for any free one (default: %(default)s)")
    add("--cert", type=Path, help="PEM certificate chain (default: certs/server.pem, generated on "
        "first start)")
    add("--key", type=Path, help="PEM private key matching --cert")
    add("--certs-dir", type=Path, default=d.certs_dir,
        help="where a first start writes a throwaway CA and certificate (default: %(default)s)")
    add("--no-tls", dest="tls", action="store_false",
        help="serve plain ws:// (behind a TLS-terminating proxy)")
    add("--client-ca", type=Path, metavar="PATH",
        help="PEM CA certificate: clients must present a certificate it signed (mutual TLS); "
             "reloaded on SIGHUP")
    add("--client-cert", choices=["required", "optional"], default=d.client_cert,
        help="with --client-ca: refuse clients without a certificate, or accept them with "
             "handle.peer_cert None (default: %(default)s)")
    add("--authorize", metavar="MODULE:FUNCTION",
        help="called in the pool with each upgrade request; truthy allows (the value becomes "
             "handle.identity), falsy is 403, webscale.Reject(status, reason) that status")
    add("--allowed-origin", action="append", metavar="ORIGIN",
        help="an Origin browser pages may connect from, exactly as sent (https://app.example); "
             "repeatable, '*' for any; when given, upgrades without a listed Origin get 403")
    add("--threads", type=int, default=d.threads,
        help="thread-pool size for decoding and handlers (default: %(default)s)")
    add("--handler", help="module:function called in the pool as handler(handle, message)")
    add("--message-type", metavar="MODULE:CLASS",
        help="dataclass each message is decoded into (default: the handler's annotation of its "
             "message parameter, else the Telemetry example)")
    add("--decode", choices=["json", "telemetry", "none"], default=d.decode,
        help="decode each message as JSON into the message type, or pass raw str/bytes "
             "('telemetry' is the old name of json) (default: %(default)s)")
    add("--invalid-json", choices=["keep", "close"], default=d.invalid_json,
        help="on a message that fails to decode: count it and keep the connection, or also "
             "close it with 1007 (default: %(default)s)")
    add("--max-message-size", type=byte_size, default=d.max_message_size,
        help="bytes as sent (text encoded, inflated with deflate), plus 64 for each frame "
             "before a message's last; larger messages fail the connection with 1009; sizes "
             "take KiB, MiB, GiB (default: %(default)s)")
    add("--max-header-bytes", type=byte_size, default=d.max_header_bytes,
        help="request head limit; larger gets 431 (default: %(default)s)")
    add("--max-headers", type=int, default=d.max_headers,
        help="request header count limit; more gets 431 (default: %(default)s)")
    add("--ping-interval", type=float, default=d.ping_interval,
        help="seconds between keepalive pings, 0 to disable (default: %(default)s)")
    add("--ping-timeout", type=float, default=d.ping_timeout,
        help="seconds to wait for a pong before dropping the peer (default: %(default)s)")
    add("--handshake-timeout", type=float, default=d.handshake_timeout,
        help="seconds from accept to a completed TLS + WebSocket handshake (default: %(default)s)")
    add("--idle-timeout", type=float, default=d.idle_timeout,
        help="seconds with nothing received before closing, 0 to disable (default: %(default)s)")
    add("--close-timeout", type=float, default=d.close_timeout,
        help="seconds to wait for the peer's close frame (default: %(default)s)")
    add("--max-connections", type=int, default=d.max_connections,
        help="concurrent connections; beyond it upgrades get 503 (default: the open-files limit "
             "less 64, or what half of memory holds at 32 KiB a connection if fewer: 16384 on "
             "a 1 GB Raspberry Pi 4)")
    add("--max-handshaking", type=int, default=d.max_handshaking,
        help="connections still in their handshake (PROXY header, TLS, upgrade); past it the "
             "oldest of them is dropped for a new one (default: a quarter of --max-connections, "
             "at least 64)")
    add("--max-connections-per-ip", type=int, default=d.max_connections_per_ip,
        help="connections one client address (IPv6: one /64) may hold; more are closed before "
             "TLS (default: no limit)")
    add("--max-handshakes-per-ip-per-s", type=float, default=d.max_handshakes_per_ip_per_s,
        help="new connections per second from one client address, in bursts of as many; more "
             "are closed before TLS (default: no limit)")
    add("--proxy-protocol-from", action="append", metavar="CIDR", default=None,
        help="a load balancer that sends the PROXY protocol (v1 or v2) before TLS; its clients' "
             "addresses replace its own (repeatable; default: none)")
    add("--admin", default=d.admin, metavar="HOST:PORT",
        help="plain-HTTP listener for /stats, /metrics and /healthz, port 0 for any free one, "
             "'off' for none (default: %(default)s)")
    add("--shutdown-timeout", type=float, default=d.shutdown_timeout,
        help="seconds to drain on SIGTERM before exiting (default: %(default)s)")
    add("--drain-grace", type=float, default=d.drain_grace,
        help="seconds after SIGTERM of answering /healthz and upgrades with 503 while still "
             "listening, before connections are closed: lets a load balancer's health checks "
             "move clients elsewhere first (default: %(default)s)")
    add("--batch-linger", type=float, default=d.batch_linger,
        help="seconds fast messages wait for company before a pool hand-off (not when their "
             "handler replies); fewer hand-offs cost less CPU, 0 favours latency "
             "(default: %(default)s)")
    add("--max-in-flight-per-connection", type=int, default=d.max_in_flight_per_connection,
        help="messages queued for the pool per connection before reading pauses "
             "(default: %(default)s)")
    add("--max-in-flight-total", type=int, default=d.max_in_flight_total,
        help="messages queued for the pool in all before reading pauses (default: %(default)s)")
    add("--max-in-flight-bytes-per-connection", type=byte_size,
        default=d.max_in_flight_bytes_per_connection,
        help="bytes of messages queued for the pool per connection before reading pauses "
             "(default: %(default)s)")
    add("--max-buffered-bytes", type=byte_size, default=d.max_buffered_bytes,
        help="memory budget for everything buffered for clients (partial messages, queued "
             "messages, queued replies, inflated data); past it connections stop being read and "
             "those holding the most are closed if it does not recover; split between --workers "
             "(default: a quarter of memory)")
    add("--outbound-limit-bytes", type=byte_size, default=d.outbound_limit_bytes,
        help="high-water mark of replies queued for a client: handle.send(timeout=...) waits "
             "over it, and a client must take this much every --slow-reader-timeout seconds "
             "while over it or be closed with 1008 (default: %(default)s)")
    add("--slow-reader-timeout", type=float, default=d.slow_reader_timeout,
        help="seconds a client with more than --outbound-limit-bytes queued has to take at "
             "least that much (default: %(default)s)")
    add("--read-chunk-bytes", type=byte_size, default=d.read_chunk_bytes,
        help="bytes per recv (default: %(default)s)")
    add("--backlog", type=int, default=d.backlog, help="listen backlog (default: %(default)s)")
    add("--compression", choices=["off", "deflate"], default=d.compression,
        help="permessage-deflate (costs tens of KiB per connection) (default: %(default)s)")
    add("--deflate-window-bits", type=int, default=d.deflate_window_bits,
        help="permessage-deflate window bits, 9-15 (default: %(default)s)")
    add("--workers", type=_workers, default=d.workers,
        help="worker processes, each with its own loop; above 1 a supervisor process starts "
             "and restarts them; 'auto': one per available core (default: %(default)s)")
    add("--worker-hang-timeout", type=float, default=d.worker_hang_timeout,
        help="with --workers: seconds without a heartbeat before a worker is killed and "
             "restarted (default: %(default)s)")
    add("--log-level", default=d.log_level,
        choices=["debug", "info", "warning", "error"], help="(default: %(default)s)")


_UNITS = {"": 1, "b": 1, "k": 1000, "kb": 1000, "kib": 1 << 10, "m": 1000**2, "mb": 1000**2,
          "mib": 1 << 20, "g": 1000**3, "gb": 1000**3, "gib": 1 << 30}


def byte_size(value: str) -> int:
    """A number of bytes: 1048576, 1MiB, 512KiB, 20MB (decimal), 1.5GiB."""
    text = value.strip().lower().replace(" ", "").replace("_", "")
    number = text.rstrip("kmgib")
    unit = text[len(number):]
    try:
        if unit not in _UNITS:
            raise ValueError(unit)
        return int(float(number) * _UNITS[unit])
    except ValueError:
        raise argparse.ArgumentTypeError(f"{value!r} is not a size (e.g. 1048576, 1MiB, "
                                         f"512KiB)") from None


def available_cores() -> int:
    """Cores this process may run on (its CPU affinity, which systemd's CPUAffinity= and
    containers narrow), else the machine's count (macOS and BSD: no os.sched_getaffinity)."""
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return os.cpu_count() or 1


def _workers(value: str) -> int:
    if value == "auto":
        return available_cores()
    try:
        return int(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{value!r} is not a number or 'auto'") from None


def config_from_args(args: argparse.Namespace) -> Config:
    names = {f.name for f in fields(Config)}
    values = {k: v for k, v in vars(args).items() if k in names}
    # Repeatable flags: argparse gives a list (or None when absent), Config a tuple.
    values["allowed_origin"] = tuple(values.get("allowed_origin") or ())
    values["proxy_protocol_from"] = tuple(values.get("proxy_protocol_from") or ())
    return Config(**values).validate()


def setup_logging(level: str) -> None:
    # One line per event on stderr; under systemd the journal adds the timestamp, so a plain
    # format there (JOURNAL_STREAM is set when stderr is the journal).
    fmt = ("%(levelname)s %(name)s: %(message)s" if os.environ.get("JOURNAL_STREAM")
           else "%(asctime)s %(levelname)s %(name)s[%(process)d]: %(message)s")
    logging.basicConfig(level=level.upper(), format=fmt, stream=sys.stderr)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="webscale", description="TLS WebSocket server on a "
                                     "selectors loop and a thread pool")
    sub = parser.add_subparsers(dest="command", required=True)
    serve = sub.add_parser("serve", help="run the server")
    _add_serve_flags(serve)
    add_worker_arguments(serve)
    argv = sys.argv[1:] if argv is None else argv
    args = parser.parse_args(argv)
    setup_logging(args.log_level)
    try:
        config = config_from_args(args)
        from .server import run
        from .supervisor import run_supervisor
        from .worker import run_worker

        role = role_from_args(args)
        if role is not None:
            code = run_worker(config, role)
        elif config.workers > 1:
            code = run_supervisor(config, argv)
        else:
            code = run(config)
    except ConfigError as exc:
        print(f"webscale: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        code = 130
    if code != 0 and threading.active_count() > 1:
        # Handlers still blocked in the pool would keep the interpreter alive at exit; the
        # deadline has passed, so leave now.
        logging.shutdown()
        os._exit(code)
    return code
