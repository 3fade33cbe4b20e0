"""Throwaway certificate authority, server and client certificates for test and first-start TLS.

How this works: `ensure_certs(out_dir)` writes `ca.pem`/`ca.key` (a self-signed CA) and
`server.pem`/`server.key` (a leaf signed by that CA) unless they already exist. Clients trust
`ca.pem`. `issue_client_cert(out_dir, name)` signs `client-NAME.pem`/`client-NAME.key` with the
same CA (creating it first if needed): a device certificate for mutual TLS, with the clientAuth
extended key usage, CN=NAME and NAME as a DNS subject alternative name; a server started with
`--client-ca ca.pem` accepts it. Keys are written with mode 0600. ECDSA P-256 is the default
because a P-256 handshake costs the server roughly a tenth of an RSA-2048 one, which matters
when 10,000 clients connect at once.
"""

from __future__ import annotations

import datetime as dt
import ipaddress
import logging
import os
import re
import socket
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

logger = logging.getLogger(__name__)

PrivateKey = ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey

# Long enough that a test CA never expires during a project's life, short enough to be obviously
# not a production certificate.
VALIDITY = dt.timedelta(days=825)


@dataclass(frozen=True, slots=True)
class CertPaths:
    ca_cert: Path
    ca_key: Path
    server_cert: Path
    server_key: Path

    @classmethod
    def in_dir(cls, out_dir: Path) -> CertPaths:
        return cls(
            ca_cert=out_dir / "ca.pem",
            ca_key=out_dir / "ca.key",
            server_cert=out_dir / "server.pem",
            server_key=out_dir / "server.key",
        )

    def all_exist(self) -> bool:
        return all(p.exists() for p in (self.ca_cert, self.server_cert, self.server_key))


def _new_key(rsa_bits: int | None) -> PrivateKey:
    if rsa_bits:
        return rsa.generate_private_key(public_exponent=65537, key_size=rsa_bits)
    return ec.generate_private_key(ec.SECP256R1())


def _write_key(path: Path, key: PrivateKey) -> None:
    data = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    # Create with 0600 from the start: never a moment where the key is world-readable.
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(data)
    os.chmod(path, 0o600)


def _write_cert(path: Path, cert: x509.Certificate) -> None:
    path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))


def _subject_alt_names(extra: Iterable[str]) -> list[x509.GeneralName]:
    names: list[str] = ["localhost", "127.0.0.1", "::1", socket.gethostname(), *extra]
    out: list[x509.GeneralName] = []
    seen: set[str] = set()
    for name in names:
        if not name or name in seen:
            continue
        seen.add(name)
        try:
            out.append(x509.IPAddress(ipaddress.ip_address(name)))
        except ValueError:
            out.append(x509.DNSName(name))
    return out


def _make_ca(key: PrivateKey, now: dt.datetime) -> x509.Certificate:
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "webscale test CA")])
    return (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + VALIDITY)
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True, key_cert_sign=True, crl_sign=True,
                content_commitment=False, key_encipherment=False, data_encipherment=False,
                key_agreement=False, encipher_only=False, decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .sign(key, hashes.SHA256())
    )


def _make_leaf(
    key: PrivateKey, ca_key: PrivateKey, ca_cert: x509.Certificate, sans: list[x509.GeneralName],
    now: dt.datetime, common_name: str,
    usage: x509.ObjectIdentifier = ExtendedKeyUsageOID.SERVER_AUTH,
) -> x509.Certificate:
    return (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)]))
        .issuer_name(ca_cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + VALIDITY)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.SubjectAlternativeName(sans), critical=False)
        .add_extension(x509.ExtendedKeyUsage([usage]), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), critical=False
        )
        .sign(ca_key, hashes.SHA256())
    )


def _load_ca(paths: CertPaths) -> tuple[PrivateKey, x509.Certificate] | None:
    if not (paths.ca_cert.exists() and paths.ca_key.exists()):
        return None
    key = serialization.load_pem_private_key(paths.ca_key.read_bytes(), password=None)
    if not isinstance(key, (ec.EllipticCurvePrivateKey, rsa.RSAPrivateKey)):
        return None
    return key, x509.load_pem_x509_certificate(paths.ca_cert.read_bytes())


def ensure_certs(
    out_dir: Path,
    *,
    force: bool = False,
    rsa_bits: int | None = None,
    extra_sans: Iterable[str] = (),
    common_name: str = "webscale",
) -> CertPaths:
    """Write CA and server certificate into `out_dir` unless present; return their paths.

    With `force`, a new server certificate is issued (by the existing CA when there is one, so
    clients that already trust `ca.pem` keep working).
    """
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = CertPaths.in_dir(out_dir)
    if paths.all_exist() and not force:
        return paths
    now = dt.datetime.now(dt.UTC)
    existing = _load_ca(paths)
    if existing is None:
        ca_key = _new_key(rsa_bits)
        ca_cert = _make_ca(ca_key, now)
        _write_key(paths.ca_key, ca_key)
        _write_cert(paths.ca_cert, ca_cert)
    else:
        ca_key, ca_cert = existing
    key = _new_key(rsa_bits)
    leaf = _make_leaf(key, ca_key, ca_cert, _subject_alt_names(extra_sans), now, common_name)
    _write_key(paths.server_key, key)
    _write_cert(paths.server_cert, leaf)
    logger.info("wrote test certificates to %s (trust %s)", out_dir, paths.ca_cert)
    return paths


@dataclass(frozen=True, slots=True)
class ClientCertPaths:
    cert: Path
    key: Path
    ca_cert: Path  # what the server's --client-ca points at


# A client name becomes a file name and a DNS SAN: keep it to what both accept.
_CLIENT_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9.-]{0,62}")


def issue_client_cert(out_dir: Path, name: str, *, rsa_bits: int | None = None,
                      extra_sans: Iterable[str] = ()) -> ClientCertPaths:
    """Sign a client certificate for `name` with the CA in `out_dir` (made first if missing).

    Always a new certificate and key (re-issuing a device's certificate is the point of
    running it again); `client-NAME.pem` and `client-NAME.key` are overwritten."""
    if not _CLIENT_NAME.fullmatch(name):
        raise ValueError(f"client name {name!r}: letters, digits, dots and dashes (a DNS name)")
    paths = ensure_certs(out_dir, rsa_bits=rsa_bits)
    loaded = _load_ca(paths)
    if loaded is None:
        raise ValueError(f"{paths.ca_key} is missing or not an EC/RSA key: cannot sign")
    ca_key, ca_cert = loaded
    sans: list[x509.GeneralName] = [x509.DNSName(name)]
    for extra in extra_sans:
        try:
            sans.append(x509.IPAddress(ipaddress.ip_address(extra)))
        except ValueError:
            sans.append(x509.DNSName(extra))
    key = _new_key(rsa_bits)
    leaf = _make_leaf(key, ca_key, ca_cert, sans, dt.datetime.now(dt.UTC), name,
                      ExtendedKeyUsageOID.CLIENT_AUTH)
    out = ClientCertPaths(out_dir / f"client-{name}.pem", out_dir / f"client-{name}.key",
                          paths.ca_cert)
    _write_key(out.key, key)
    _write_cert(out.cert, leaf)
    logger.info("wrote a client certificate for %s to %s (signed by %s)", name, out.cert,
                paths.ca_cert)
    return out
