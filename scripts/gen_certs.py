#!/usr/bin/env python3
"""Generate a throwaway CA and a server certificate signed by it (see webscale/certs.py).

    python scripts/gen_certs.py [--out certs/] [--rsa 2048] [--san my.host] [--force]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from webscale.certs import ensure_certs


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("certs"),
                        help="output directory (default: certs/)")
    parser.add_argument("--rsa", type=int, metavar="BITS", default=None,
                        help="RSA key size instead of ECDSA P-256 (handshakes cost ~10x more)")
    parser.add_argument("--san", action="append", default=[], metavar="NAME",
                        help="extra subjectAltName (DNS name or IP); repeatable")
    parser.add_argument("--cn", default="webscale", help="server certificate common name")
    parser.add_argument("--force", action="store_true",
                        help="issue a new server certificate even if one exists (keeps the CA)")
    args = parser.parse_args(argv)
    paths = ensure_certs(args.out, force=args.force, rsa_bits=args.rsa, extra_sans=args.san,
                         common_name=args.cn)
    print(f"CA:     {paths.ca_cert}\ncert:   {paths.server_cert}\nkey:    {paths.server_key}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
