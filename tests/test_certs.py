"""Certificate generation: what clients need to trust, and keys nobody else can read."""

from __future__ import annotations

import ipaddress
import stat
import subprocess
import sys
from pathlib import Path

from cryptography import x509
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from helpers import ROOT
from webscale.certs import ensure_certs, issue_client_cert


def test_gen_certs_script_writes_ca_cert_and_private_key(tmp_path: Path) -> None:
    out = tmp_path / "certs"
    subprocess.run([sys.executable, str(ROOT / "scripts/gen_certs.py"), "--out", str(out),
                    "--san", "ws.example.test"], check=True, capture_output=True)
    for name in ("ca.pem", "server.pem", "server.key"):
        assert (out / name).is_file()
    assert stat.S_IMODE((out / "server.key").stat().st_mode) == 0o600
    cert = x509.load_pem_x509_certificate((out / "server.pem").read_bytes())
    sans = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert "localhost" in sans.get_values_for_type(x509.DNSName)
    assert "ws.example.test" in sans.get_values_for_type(x509.DNSName)
    assert ipaddress.ip_address("127.0.0.1") in sans.get_values_for_type(x509.IPAddress)
    assert ipaddress.ip_address("::1") in sans.get_values_for_type(x509.IPAddress)
    ca = x509.load_pem_x509_certificate((out / "ca.pem").read_bytes())
    cert.verify_directly_issued_by(ca)


def test_idempotent_unless_forced(tmp_path: Path) -> None:
    first = ensure_certs(tmp_path)
    before = first.server_cert.read_bytes()
    assert ensure_certs(tmp_path).server_cert.read_bytes() == before
    ca_before = first.ca_cert.read_bytes()
    forced = ensure_certs(tmp_path, force=True)
    assert forced.server_cert.read_bytes() != before
    assert forced.ca_cert.read_bytes() == ca_before  # re-issued by the same CA


def test_rsa_option(tmp_path: Path) -> None:
    paths = ensure_certs(tmp_path, rsa_bits=2048)
    cert = x509.load_pem_x509_certificate(paths.server_cert.read_bytes())
    assert cert.public_key().key_size == 2048  # type: ignore[union-attr]


def test_gen_certs_client_subcommand_issues_from_the_same_ca(tmp_path: Path) -> None:
    out = tmp_path / "certs"
    script = str(ROOT / "scripts/gen_certs.py")
    subprocess.run([sys.executable, script, "--out", str(out)], check=True, capture_output=True)
    ca_before = (out / "ca.pem").read_bytes()
    subprocess.run([sys.executable, script, "client", "pi-7", "--out", str(out),
                    "--san", "10.0.0.7"], check=True, capture_output=True)
    assert (out / "ca.pem").read_bytes() == ca_before  # the same CA, not a new one
    assert stat.S_IMODE((out / "client-pi-7.key").stat().st_mode) == 0o600
    cert = x509.load_pem_x509_certificate((out / "client-pi-7.pem").read_bytes())
    cert.verify_directly_issued_by(x509.load_pem_x509_certificate(ca_before))
    assert cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value == "pi-7"
    sans = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert sans.get_values_for_type(x509.DNSName) == ["pi-7"]
    assert sans.get_values_for_type(x509.IPAddress) == [ipaddress.ip_address("10.0.0.7")]
    usage = cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert list(usage) == [ExtendedKeyUsageOID.CLIENT_AUTH]
    bad = subprocess.run([sys.executable, script, "client", "../escape", "--out", str(out)],
                         capture_output=True, text=True)
    assert bad.returncode == 2 and "client name '../escape'" in bad.stderr
    assert not (tmp_path / "escape.pem").exists()


def test_client_cert_without_a_ca_makes_one(tmp_path: Path) -> None:
    paths = issue_client_cert(tmp_path, "sensor-1")
    ca = x509.load_pem_x509_certificate(paths.ca_cert.read_bytes())
    x509.load_pem_x509_certificate(paths.cert.read_bytes()).verify_directly_issued_by(ca)
