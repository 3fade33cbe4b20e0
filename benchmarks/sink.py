"""A WebSocket sink that answers the upgrade and then discards every byte: to measure the client.

    python benchmarks/sink.py --port 0 [--cert C --key K]

bench_client's own ceiling (connections/s, messages/s) cannot be seen against a server that is
slower than it; this sink does the least a server can (no frame parsing, no decode, no close
reply), so what limits a run against it is the client. Prints `listening on ws[s]://HOST:PORT`.
"""

from __future__ import annotations

import argparse
import base64
import hashlib
import selectors
import socket
import ssl

GUID = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--cert")
    parser.add_argument("--key")
    args = parser.parse_args()
    tls = None
    if args.cert:
        tls = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        tls.load_cert_chain(args.cert, args.key)
    listener = socket.create_server((args.host, args.port), backlog=4096)
    listener.setblocking(False)
    selector = selectors.DefaultSelector()
    selector.register(listener, selectors.EVENT_READ, None)
    host, port = listener.getsockname()[:2]
    print(f"listening on {'wss' if tls else 'ws'}://{host}:{port}", flush=True)
    heads: dict[socket.socket, bytes] = {}
    while True:
        for key, _ in selector.select():
            if key.data is None:
                while True:
                    try:
                        sock, _ = listener.accept()
                    except BlockingIOError:
                        break
                    sock.setblocking(False)
                    if tls is not None:
                        sock = tls.wrap_socket(sock, server_side=True,
                                               do_handshake_on_connect=False)
                    heads[sock] = b""
                    selector.register(sock, selectors.EVENT_READ, "client")
                continue
            sock = key.fileobj  # type: ignore[assignment]
            while True:
                try:
                    if isinstance(sock, ssl.SSLSocket) and heads.get(sock) == b"":
                        sock.do_handshake()
                    data = sock.recv(262144)
                except (ssl.SSLWantReadError, ssl.SSLWantWriteError, BlockingIOError):
                    break
                except OSError:
                    data = b""
                if not data:
                    selector.unregister(sock)
                    heads.pop(sock, None)
                    sock.close()
                    break
                if sock in heads:
                    head = heads[sock] + data
                    if b"\r\n\r\n" not in head:
                        heads[sock] = head or b" "
                        continue
                    del heads[sock]
                    request_key = next(line.split(b":", 1)[1].strip()
                                       for line in head.split(b"\r\n")
                                       if line.lower().startswith(b"sec-websocket-key:"))
                    accept = base64.b64encode(hashlib.sha1(request_key + GUID).digest())
                    sock.sendall(b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n"
                                 b"Connection: Upgrade\r\nSec-WebSocket-Accept: " + accept
                                 + b"\r\n\r\n")


if __name__ == "__main__":
    main()
