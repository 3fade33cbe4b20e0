"""bench_client: the sans-I/O pieces on literal bytes, then whole runs against real servers.

The integration tests start the asyncio twin (and webscale, once `webscale serve` exists) as
subprocesses on 127.0.0.1 port 0, read the port from the `listening on` line, run bench_client as
a subprocess with `--json`, and check its report against the server's own /stats counters.
"""

from __future__ import annotations

import http.client
import json
import os
import socket
import struct
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import orjson
import pytest

from helpers import (
    PICOWS_TWIN,
    TWIN,
    UNIT,
    ServerProcess,
    client_ssl_context,
    start_server,
    wait_for,
)
from bench_client.config import BenchConfig, parse_source_addrs, split_plans, worker_count
from bench_client.errors import ConfigError, FrameError, HandshakeError
from bench_client.payload import (
    MessageTemplate,
    apply_mask,
    apply_mask_python,
)
from webscale.examples.telemetry import decode_telemetry
from bench_client.protocol import (
    OPCODE_CLOSE,
    OPCODE_PING,
    ClientHandshake,
    FrameReader,
    accept_token,
    encode_close,
)

REPO = Path(__file__).resolve().parent.parent


# -- payload ----------------------------------------------------------------------------------


@pytest.mark.parametrize("size", [256, 1000, 10_240, 65_536])
def test_template_is_exactly_the_requested_size_and_decodes(size: int) -> None:
    template = MessageTemplate(size)
    document = bytes(template.render(client_id=42, seq=7, sent_at=1_700_000_000.25))
    assert len(document) == size
    telemetry = decode_telemetry(document)
    assert (telemetry.client_id, telemetry.seq, telemetry.sent_at) == (42, 7, 1_700_000_000.25)
    assert len(telemetry.readings) == template.readings_count > 0
    reading = telemetry.readings[0]
    assert isinstance(reading.value, float) and isinstance(reading.ok, bool)
    assert all(isinstance(tag, str) for tag in reading.tags)


def test_patching_changes_only_the_fixed_fields() -> None:
    template = MessageTemplate(2048)
    first = bytes(template.render(1, 1, 1.0))
    second = bytes(template.render(9_999_999_999, 123_456, 1_800_000_000.123456))
    assert len(first) == len(second)
    assert orjson.loads(second)["readings"] == orjson.loads(first)["readings"]
    assert orjson.loads(second)["client_id"] == 9_999_999_999


def test_write_frame_is_a_masked_text_frame_that_unmasks_to_the_document() -> None:
    template = MessageTemplate(10_240)
    out = bytearray()
    written = template.write_frame(out, 3, 4, 5.5)
    assert written == len(out) == 4 + 4 + 10_240
    assert out[0] == 0x81  # FIN + text
    assert out[1] == 0x80 | 126  # masked, 16-bit length
    assert struct.unpack("!H", out[2:4])[0] == 10_240
    mask = bytes(out[4:8])
    document = apply_mask(bytes(out[8:]), mask)
    assert decode_telemetry(document).seq == 4
    second = bytearray()
    template.write_frame(second, 3, 4, 5.5)
    assert second[4:8] != out[4:8] or second[8:] != out[8:]  # a fresh key per frame


@pytest.mark.parametrize("size", [6000, 10_240, 65_536])
def test_notes_document_has_the_second_shape_and_decodes(size: int) -> None:
    template = MessageTemplate(size, "notes")
    document = bytes(template.render(client_id=42, seq=7, sent_at=1_700_000_000.25))
    assert len(document) == size
    raw = orjson.loads(document)
    assert set(raw) == {"client_id", "seq", "sent_at", "site", "firmware", "readings", "note"}
    assert isinstance(raw["site"], str) and isinstance(raw["firmware"], str)
    assert len(raw["readings"]) == template.readings_count == 40
    note = raw["note"]
    assert len(note) > size // 3  # the note pads the document, whatever the size
    words = note.replace(".", " ").replace(",", " ").split()
    assert len(set(words)) >= 40  # prose, not one repeated character
    assert max(len(w) for w in words) < 20
    # webscale's decoder takes it as telemetry and ignores the fields its struct lacks
    telemetry = decode_telemetry(document)
    assert (telemetry.client_id, telemetry.seq, telemetry.sent_at) == (42, 7, 1_700_000_000.25)
    assert len(telemetry.readings) == 40
    second = bytes(template.render(9_999_999_999, 8, 1.0))
    assert orjson.loads(second)["note"] == note  # only the fixed fields change per send


def test_a_size_too_small_for_the_notes_document_is_a_config_error() -> None:
    with pytest.raises(ConfigError, match="notes document needs more than"):
        BenchConfig(url="wss://127.0.0.1:1/", size=1000, document="notes")
    BenchConfig(url="wss://127.0.0.1:1/", size=1000)  # the telemetry shape fits


def test_pure_python_mask_matches_the_c_one() -> None:
    data = bytes(range(256)) * 5 + b"xyz"
    mask = b"\x01\x80\xfe\x7f"
    assert apply_mask_python(data, mask) == apply_mask(data, mask)
    assert apply_mask_python(apply_mask_python(data, mask), mask) == data
    assert apply_mask_python(b"", mask) == b""


# -- protocol ---------------------------------------------------------------------------------


def _response(key: bytes, status: str = "101 Switching Protocols") -> bytes:
    return (f"HTTP/1.1 {status}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
            f"Sec-WebSocket-Accept: {accept_token(key).decode()}\r\n\r\n").encode()


def test_accept_token_matches_rfc_6455_example() -> None:
    # RFC 6455 §1.3
    assert accept_token(b"dGhlIHNhbXBsZSBub25jZQ==") == b"s3pPLMBiTxaQ9kYGzzhZRbK+xOo="


def test_handshake_request_and_response_one_byte_at_a_time() -> None:
    handshake = ClientHandshake("127.0.0.1", 8443, "/feed", default_port=443)
    assert handshake.request.startswith(b"GET /feed HTTP/1.1\r\nHost: 127.0.0.1:8443\r\n")
    assert b"Sec-WebSocket-Key: " + handshake.key + b"\r\n" in handshake.request
    data = _response(handshake.key) + b"\x89\x00"  # a ping right behind the head
    results = [handshake.receive(data[i : i + 1]) for i in range(len(data) - 2)]
    assert results[:-1] == [None] * (len(results) - 1)
    assert results[-1] == b""
    handshake = ClientHandshake("localhost", 443, "/", default_port=443)
    assert b"Host: localhost\r\n" in handshake.request
    assert handshake.receive(_response(handshake.key) + b"\x89\x00") == b"\x89\x00"


@pytest.mark.parametrize("response, reason", [
    (b"HTTP/1.1 426 Upgrade Required\r\n\r\n", "status 426"),
    (b"garbage\r\n\r\n", "malformed status line"),
    ((b"HTTP/1.1 101 OK\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
      b"Sec-WebSocket-Accept: AAAA\r\n\r\n"), "wrong Sec-WebSocket-Accept"),
])
def test_handshake_rejects_bad_responses(response: bytes, reason: str) -> None:
    handshake = ClientHandshake("h", 80, "/", default_port=80)
    with pytest.raises(HandshakeError, match=reason):
        handshake.receive(response)


def test_frame_reader_split_byte_by_byte() -> None:
    text = b"\x81\x05hello"
    long_text = b"\x81\x7e" + struct.pack("!H", 300) + b"a" * 300
    fragmented = b"\x01\x02ab\x80\x01c"  # one message in two frames
    ping = b"\x89\x04ping"
    close = b"\x88\x02" + struct.pack("!H", 1000)
    stream = text + long_text + fragmented + ping + close
    reader = FrameReader()
    controls = []
    for i in range(len(stream)):
        controls += reader.receive(stream[i : i + 1])
    assert reader.messages_received == 3
    assert [(c.opcode, c.payload) for c in controls] == [
        (OPCODE_PING, b"ping"), (OPCODE_CLOSE, struct.pack("!H", 1000))]


def test_frame_reader_rejects_reserved_opcodes_and_long_control_frames() -> None:
    with pytest.raises(FrameError):
        FrameReader().receive(b"\x83\x00")
    with pytest.raises(FrameError):
        FrameReader().receive(b"\x89\x7e\x00\x80" + b"x" * 128)


def test_close_frame_is_masked_with_code() -> None:
    frame = encode_close(1000)
    assert frame[0] == 0x88 and frame[1] == 0x80 | 2
    assert apply_mask(frame[6:], frame[2:6]) == struct.pack("!H", 1000)


# -- configuration ----------------------------------------------------------------------------


def test_source_addrs_ranges_and_lists() -> None:
    assert parse_source_addrs("127.0.0.1-127.0.0.3") == ("127.0.0.1", "127.0.0.2", "127.0.0.3")
    assert parse_source_addrs("127.0.0.5,127.0.0.9") == ("127.0.0.5", "127.0.0.9")
    with pytest.raises(ConfigError):
        parse_source_addrs("127.0.0.9-127.0.0.1")


def test_worker_split_covers_every_client_once() -> None:
    config = BenchConfig(url="wss://127.0.0.1:1/", clients=45_001, procs=0,
                         source_addrs=parse_source_addrs("127.0.0.1-127.0.0.16"))
    workers = worker_count(config, file_limit=20_000)
    assert workers >= 3  # 19,000 sockets per process at most
    plans = split_plans(config, workers, ("127.0.0.1", 1))
    assert sum(p.clients for p in plans) == 45_001
    assert max(p.clients for p in plans) <= 19_000
    ids = [p.first_client_id + i for p in plans for i in range(p.clients)]
    assert ids == list(range(45_001))
    assert set().union(*(p.source_addrs for p in plans)) == set(config.source_addrs)
    assert sum(p.ramp for p in plans) == pytest.approx(config.ramp)


def test_bad_urls_are_config_errors() -> None:
    with pytest.raises(ConfigError):
        BenchConfig(url="http://127.0.0.1/")
    with pytest.raises(ConfigError):
        BenchConfig(url="wss://127.0.0.1:1/", clients=0)


# -- real servers -----------------------------------------------------------------------------


@pytest.fixture
def twin(certs: Path, tmp_path: Path) -> Iterator[ServerProcess]:
    server = start_server([], certs=certs, tmp_path=tmp_path, command=TWIN)
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def webscale(webscale_server: ServerProcess) -> ServerProcess:
    return webscale_server


def run_bench(tmp_path: Path, *args: str, timeout: float = 30.0) -> tuple[int, dict[str, Any], str]:
    report_path = tmp_path / "report.json"
    result = subprocess.run(
        [sys.executable, "-m", "bench_client", "--quiet", "--json", str(report_path), *args],
        cwd=REPO, env=dict(os.environ, PYTHONPATH=str(REPO)), capture_output=True, text=True,
        timeout=timeout * UNIT, check=False,
    )
    report = json.loads(report_path.read_text()) if report_path.exists() else {}
    return result.returncode, report, result.stdout + result.stderr


def _check_200_clients(server: ServerProcess, tmp_path: Path) -> None:
    before = server.stats()
    rc, report, output = run_bench(
        tmp_path, "--url", server.url, "--cafile", str(server.cafile), "--clients", "200",
        "--rate", "1", "--duration", "3", "--ping-sample", "5", "--procs", "2")
    assert rc == 0, output
    conns = report["connections"]
    assert conns["established"] == conns["attempted"] == 200, output
    assert conns["failed"] == conns["dropped"] == 0, conns["failed_by_reason"]
    assert conns["closed_clean"] == 200
    written = int(report["messages"]["written"])
    assert written == report["messages"]["scheduled"]
    assert written >= 200 * 3  # every client sends once a second for the 3 s of steady state
    assert report["ping_rtt_s"]["count"] > 0
    lateness_samples = report["send_lateness_s"]["count"] + report["send_lateness_ramp_s"]["count"]
    assert lateness_samples == written
    assert report["send_lateness_s"]["count"] >= 200 * 2  # steady state has its own numbers
    timeline = report["timeline"]  # what --html draws, second by second
    assert max(timeline["established"]) == 200 and timeline["open"][-1] == 0
    assert sum(timeline["messages_written_per_s"]) == pytest.approx(written, abs=1)

    def decoded_all() -> bool:
        stats = server.stats()
        return int(stats["messages_decoded"]) - int(before["messages_decoded"]) >= written

    wait_for(decoded_all, 10, what="the server to decode every message written")
    after = server.stats()
    assert after["messages_decoded"] - before["messages_decoded"] == written
    assert after["messages_received"] - before["messages_received"] == written
    assert after["decode_errors"] == before["decode_errors"] == 0
    # >=: a server may count its plain-HTTP /stats connections too (webscale does)
    assert after["connections_total"] - before["connections_total"] >= 200
    # <= 1: a server may count the /stats request's own connection as open (webscale does)
    wait_for(lambda: server.stats()["connections_open"] <= 1, 10,
             what="every connection to close")


def test_200_clients_against_the_asyncio_twin(twin: ServerProcess, tmp_path: Path) -> None:
    _check_200_clients(twin, tmp_path)


def test_200_clients_against_the_picows_twin(certs: Path, tmp_path: Path) -> None:
    server = start_server([], certs=certs, tmp_path=tmp_path, command=PICOWS_TWIN)
    try:
        _check_200_clients(server, tmp_path)
    finally:
        server.stop()


def test_200_clients_against_webscale(webscale: ServerProcess, tmp_path: Path) -> None:
    _check_200_clients(webscale, tmp_path)


def test_warmup_keeps_its_samples_out_of_steady_state(webscale: ServerProcess,
                                                      tmp_path: Path) -> None:
    # What a server does while it drains the backlog its handshakes built must not count as
    # its steady state: --warmup records those seconds with the ramp's samples.
    rc, report, output = run_bench(
        tmp_path, "--url", webscale.url, "--cafile", str(webscale.cafile), "--clients", "10",
        "--rate", "2", "--warmup", "2.5", "--duration", "2", "--ping-sample", "10",
        "--procs", "1")
    assert rc == 0, output
    assert report["config"]["warmup"] == 2.5
    assert "during the ramp and warm-up" in output
    # Pings go out once a second per connection: >= 2 each in the 2.5 s warm-up.
    assert report["ping_rtt_ramp_s"]["count"] >= 10 * 2
    assert 10 <= report["ping_rtt_s"]["count"] <= 10 * 3
    # Two messages a second: the warm-up's 5 per client are not in steady state's samples.
    assert report["send_lateness_ramp_s"]["count"] >= 10 * 4
    assert report["send_lateness_s"]["count"] <= 10 * 2 * 2 + 10
    assert 1.9 <= report["timing"]["steady_state_s"] <= 2.5 * UNIT


def test_notes_documents_are_decoded_by_webscale(webscale: ServerProcess,
                                                 tmp_path: Path) -> None:
    before = webscale.stats()
    rc, report, output = run_bench(
        tmp_path, "--url", webscale.url, "--cafile", str(webscale.cafile), "--clients", "10",
        "--rate", "2", "--duration", "1", "--procs", "1", "--document", "notes")
    assert rc == 0, output
    assert report["config"]["document"] == "notes" and "document=notes" in output
    written = report["messages"]["written"]
    assert written >= 10 * 2
    wait_for(lambda: webscale.stats()["messages_decoded"] - before["messages_decoded"]
             == written, 10, what="every notes document decoded")
    assert webscale.stats()["decode_errors"] == before["decode_errors"]


def test_plain_ws_from_several_source_addresses(tmp_path: Path) -> None:
    server = start_server(["--no-tls"], certs=None, tmp_path=tmp_path, command=TWIN)
    try:
        rc, report, output = run_bench(tmp_path, "--url", server.url, "--clients", "20",
                                       "--rate", "5", "--duration", "1", "--procs", "2",
                                       "--source-addrs", "127.0.0.2-127.0.0.5")
        assert rc == 0, output
        assert report["connections"]["established"] == 20
        written = report["messages"]["written"]
        assert written >= 20 * 5
        wait_for(lambda: server.stats()["messages_decoded"] == written, 10, what="decode")
        assert server.stats()["peer_hosts"] == 4  # 127.0.0.2 .. 127.0.0.5, round-robin
    finally:
        server.stop()


def test_closed_port_fails_every_connection_quickly(tmp_path: Path) -> None:
    # A bound socket that never listens: connects to it are refused, and no one else can take
    # the port while the test runs.
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        port = holder.getsockname()[1]
        started = time.monotonic()
        rc, report, output = run_bench(tmp_path, "--url", f"wss://127.0.0.1:{port}/",
                                       "--insecure", "--clients", "50", "--duration", "30")
        took = time.monotonic() - started
    assert rc != 0
    conns = report["connections"]
    assert conns["established"] == 0
    assert conns["failed"] == conns["attempted"] == 50
    assert conns["failed_by_reason"] == {"connect: ECONNREFUSED": 50}
    assert "connect: ECONNREFUSED" in output and "FAILED" in output
    assert took < 10 * UNIT  # does not sit out --duration with nothing to measure


def test_untrusted_certificate_is_a_tls_failure(twin: ServerProcess, tmp_path: Path) -> None:
    rc, report, output = run_bench(tmp_path, "--url", twin.url, "--clients", "5",
                                   "--duration", "1", "--procs", "1", "--max-failures", "4")
    assert rc == 1, output
    reasons = report["connections"]["failed_by_reason"]
    assert list(reasons) == ["tls: unable to get local issuer certificate"], reasons
    assert reasons["tls: unable to get local issuer certificate"] == 5


def test_max_failures_allows_a_bounded_number(tmp_path: Path) -> None:
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        port = holder.getsockname()[1]
        rc, report, _ = run_bench(tmp_path, "--url", f"ws://127.0.0.1:{port}/", "--clients", "3",
                                  "--max-failures", "3", "--procs", "1")
    assert rc == 0
    assert report["connections"]["failed"] == 3 and report["ok"] is True


def test_a_server_that_never_answers_times_out_every_handshake(tmp_path: Path) -> None:
    # Listening but never accepting: the kernel completes TCP, nobody speaks TLS.
    with socket.create_server(("127.0.0.1", 0), backlog=64) as silent:
        port = silent.getsockname()[1]
        started = time.monotonic()
        rc, report, output = run_bench(tmp_path, "--url", f"wss://127.0.0.1:{port}/",
                                       "--insecure", "--clients", "5", "--procs", "1",
                                       "--handshake-timeout", "1", "--duration", "30")
        took = time.monotonic() - started
    assert rc == 1, output
    assert report["connections"]["failed_by_reason"] == {"timeout: tls_handshake": 5}
    assert took < 10 * UNIT


def test_a_missing_cafile_is_one_clear_error(tmp_path: Path) -> None:
    rc, _, output = run_bench(tmp_path, "--url", "wss://127.0.0.1:1/", "--cafile",
                              str(tmp_path / "absent.pem"), "--clients", "1")
    assert rc == 2
    assert f"bench_client: --cafile {tmp_path / 'absent.pem'}: [Errno 2]" in output
    assert "Traceback" not in output


def test_help_is_written_for_users() -> None:
    result = subprocess.run([sys.executable, "-m", "bench_client", "--help"], cwd=REPO,
                            env=dict(os.environ, PYTHONPATH=str(REPO)), capture_output=True,
                            text=True, timeout=30 * UNIT, check=True)
    assert "fork the workers" not in result.stdout  # the module docstring is for maintainers
    assert result.stdout.startswith("usage: bench_client")
    assert "Load-test a WebSocket server" in result.stdout
    assert "example:\n  bench_client --url wss://127.0.0.1:8443/" in result.stdout


def _serve_one_upgrade_then_read_forever(listener: socket.socket) -> None:
    """A WebSocket server that upgrades one client, then reads and never answers anything."""
    conn, _ = listener.accept()
    with conn:
        head = b""
        while b"\r\n\r\n" not in head:
            head += conn.recv(4096)
        key = next(line.split(b":", 1)[1].strip() for line in head.split(b"\r\n")
                   if line.lower().startswith(b"sec-websocket-key:"))
        conn.sendall(b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n"
                     b"Connection: Upgrade\r\nSec-WebSocket-Accept: " + accept_token(key)
                     + b"\r\n\r\n")
        while conn.recv(65536):
            pass


def test_unanswered_pings_are_reported_lost_with_their_wait(tmp_path: Path) -> None:
    # One connection pings once a second for 9.5 s against a server that never answers: the
    # ninth ping gives up on the first (8 outstanding at most), and the rest are lost when the
    # connection ends. Each lost ping is an RTT sample of the time it waited.
    with socket.create_server(("127.0.0.1", 0)) as listener:
        server = threading.Thread(target=_serve_one_upgrade_then_read_forever, args=(listener,),
                                  daemon=True)
        server.start()
        port = listener.getsockname()[1]
        rc, report, output = run_bench(tmp_path, "--url", f"ws://127.0.0.1:{port}/",
                                       "--clients", "1", "--rate", "0", "--ping-sample", "1",
                                       "--duration", "9.5", "--close-timeout", "0.5",
                                       "--procs", "1")
        server.join(10 * UNIT)
    assert rc == 0, output
    pings = report["pings"]
    assert pings["sent"] >= 9
    assert pings["answered"] == 0
    assert pings["lost"] == pings["sent"]
    rtt = report["ping_rtt_s"]
    assert rtt["count"] + report["ping_rtt_ramp_s"]["count"] == pings["lost"]
    assert rtt["max"] >= 8.0  # the first ping, given up on after 8 newer ones
    assert f"{pings['sent']} / 0 / {pings['lost']}" in output


# -- mutual TLS: bench_client's client certificate, the twins' --client-ca ------------------------


def _issue_client_cert(out: Path, name: str, ca_dir: Path | None) -> tuple[Path, Path]:
    """A client certificate (CN=name, clientAuth) signed by the CA in `ca_dir` (ca.pem, ca.key),
    or by a throwaway CA of its own when `ca_dir` is None."""
    import datetime as dt

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

    now = dt.datetime.now(dt.UTC)
    if ca_dir is None:
        ca_key = ec.generate_private_key(ec.SECP256R1())
        ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "another CA")])
    else:
        loaded = serialization.load_pem_private_key((ca_dir / "ca.key").read_bytes(), None)
        assert isinstance(loaded, ec.EllipticCurvePrivateKey)
        ca_key = loaded
        ca_name = x509.load_pem_x509_certificate((ca_dir / "ca.pem").read_bytes()).subject
    key = ec.generate_private_key(ec.SECP256R1())
    cert = (x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)]))
            .issuer_name(ca_name)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - dt.timedelta(minutes=5))
            .not_valid_after(now + dt.timedelta(days=1))
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.CLIENT_AUTH]),
                           critical=False)
            .sign(ca_key, hashes.SHA256()))
    cert_path, key_path = out / f"{name}.pem", out / f"{name}.key"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(key.private_bytes(serialization.Encoding.PEM,
                                           serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    return cert_path, key_path


@pytest.mark.parametrize("command", [TWIN, PICOWS_TWIN], ids=["asyncio", "picows"])
def test_client_certificates_against_a_twin_that_requires_them(
        command: list[str], certs: Path, tmp_path: Path) -> None:
    server = start_server(["--client-ca", str(certs / "ca.pem")], certs=certs,
                          tmp_path=tmp_path, command=command)
    try:
        common = ["--url", server.url, "--cafile", str(server.cafile), "--clients", "5",
                  "--rate", "2", "--duration", "1", "--procs", "1"]
        cert, key = _issue_client_cert(tmp_path, "device-1", certs)
        rc, report, output = run_bench(tmp_path, *common, "--cert", str(cert), "--key", str(key))
        assert rc == 0, output
        assert report["connections"]["established"] == 5
        assert report["config"]["client_cert"] is True
        written = report["messages"]["written"]

        def decoded() -> int:  # /stats too needs the client certificate now
            context = client_ssl_context(certs / "ca.pem")
            context.load_cert_chain(cert, key)
            conn = http.client.HTTPSConnection(server.host, server.port, context=context,
                                               timeout=5 * UNIT)
            try:
                conn.request("GET", "/stats")
                return int(json.loads(conn.getresponse().read())["messages_decoded"])
            finally:
                conn.close()

        wait_for(lambda: decoded() == written, 10, what="every message decoded")

        for label, extra in (("none", []), ("another CA", list(map(str, _issue_client_cert(
                tmp_path, "stranger", None))))):
            flags = ["--cert", extra[0], "--key", extra[1]] if extra else []
            rc, report, output = run_bench(tmp_path, *common, "--max-failures", "5", *flags)
            conns = report["connections"]
            assert conns["established"] == 0, (label, output)
            assert conns["failed"] == 5, (label, output)
            assert all(reason.startswith(("tls:", "handshake:"))
                       for reason in conns["failed_by_reason"]), (label, conns)
    finally:
        server.stop()


def test_cert_without_key_or_on_plain_ws_is_a_config_error() -> None:
    with pytest.raises(ConfigError, match="--cert and --key go together"):
        BenchConfig(url="wss://127.0.0.1:1/", cert="c.pem")
    with pytest.raises(ConfigError, match="needs a wss:// URL"):
        BenchConfig(url="ws://127.0.0.1:1/", cert="c.pem", key="k.pem")
