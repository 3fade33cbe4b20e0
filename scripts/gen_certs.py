#!/usr/bin/env python3
"""Generate a throwaway CA and a server certificate signed by it, or a client certificate signed
by the same CA (see webscale/certs.py).

    python scripts/gen_certs.py [--out certs/] [--rsa 2048] [--san my.host] [--force]
    python scripts/gen_certs.py client NAME [--out certs/] [--rsa 2048] [--san 10.0.0.7]

A client certificate (client-NAME.pem and client-NAME.key, CN=NAME) is what a device presents to
a server started with `--client-ca certs/ca.pem`.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from webscale.certs import ensure_certs, issue_client_cert


def _common_flags(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--out", type=Path, default=Path("certs"),
                        help="output directory, holding the CA (default: certs/)")
    parser.add_argument("--rsa", type=int, metavar="BITS", default=None,
                        help="RSA key size instead of ECDSA P-256 (handshakes cost ~10x more)")
    parser.add_argument("--san", action="append", default=[], metavar="NAME",
                        help="extra subjectAltName (DNS name or IP); repeatable")


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["client"]:
        return _client(argv[1:])
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                     epilog="`gen_certs.py client NAME --out DIR` issues a client "
                                            "certificate from the same CA.")
    _common_flags(parser)
    parser.add_argument("--cn", default="webscale", help="server certificate common name")
    parser.add_argument("--force", action="store_true",
                        help="issue a new server certificate even if one exists (keeps the CA)")
    args = parser.parse_args(argv)
    paths = ensure_certs(args.out, force=args.force, rsa_bits=args.rsa, extra_sans=args.san,
                         common_name=args.cn)
    print(f"CA:     {paths.ca_cert}\ncert:   {paths.server_cert}\nkey:    {paths.server_key}")
    return 0


def _client(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="gen_certs.py client",
                                     description="Issue a client certificate (mutual TLS) signed "
                                                 "by the CA in --out, made first if missing.")
    parser.add_argument("name", help="the client's name: its CN and a DNS subjectAltName")
    _common_flags(parser)
    args = parser.parse_args(argv)
    try:
        paths = issue_client_cert(args.out, args.name, rsa_bits=args.rsa, extra_sans=args.san)
    except ValueError as exc:
        parser.error(str(exc))
    print(f"CA:     {paths.ca_cert}  (the server's --client-ca)\ncert:   {paths.cert}\n"
          f"key:    {paths.key}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
