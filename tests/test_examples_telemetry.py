"""decode_telemetry, the hand-written decoder: the workload's document and every way it is wrong."""

from __future__ import annotations

import orjson
import pytest

from payloads import telemetry_json
from webscale.errors import DecodeError
from webscale.examples.telemetry import Reading, Telemetry, decode_telemetry


def test_decodes_the_10kb_document() -> None:
    text = telemetry_json(42, 7)
    assert 10240 <= len(text) < 10500
    message = decode_telemetry(text)
    assert isinstance(message, Telemetry)
    assert (message.client_id, message.seq) == (42, 7)
    assert len(message.readings) > 50
    assert message.readings[0] == Reading("sensor-0000", 20.0, "celsius", False,
                                          ["rack-1", "zone-0"])


def test_accepts_bytes_and_integer_values() -> None:
    doc = {"client_id": 1, "seq": 2, "sent_at": 3, "readings": [
        {"sensor": "s", "value": 4, "unit": "u", "ok": True, "tags": []}]}
    message = decode_telemetry(orjson.dumps(doc))
    assert message.sent_at == 3.0 and message.readings[0].value == 4


@pytest.mark.parametrize("payload, complaint", [
    ("not json", "invalid JSON"),
    ("[1, 2]", "not a JSON object"),
    ('{"client_id": 1, "seq": 2, "sent_at": 3.0}', "lacks 'readings'"),
    ('{"client_id": "1", "seq": 2, "sent_at": 3.0, "readings": []}', "integers"),
    ('{"client_id": 1, "seq": 2, "sent_at": "now", "readings": []}', "sent_at"),
    ('{"client_id": 1, "seq": 2, "sent_at": 3.0, "readings": {}}', "must be a list"),
    ('{"client_id": 1, "seq": 2, "sent_at": 3.0, "readings": [1]}', "not an object"),
    ('{"client_id": 1, "seq": 2, "sent_at": 3.0, "readings": [{"sensor": "s"}]}', "lacks"),
    ('{"client_id": 1, "seq": 2, "sent_at": 3.0, "readings": [{"sensor": "s", "value": "x",'
     ' "unit": "u", "ok": true, "tags": []}]}', "not a number"),
    ('{"client_id": 1, "seq": 2, "sent_at": 3.0, "readings": [{"sensor": "s", "value": 1,'
     ' "unit": "u", "ok": true, "tags": [1]}]}', "tags"),
    ('{"client_id": true, "seq": 2, "sent_at": 3.0, "readings": []}', "integers"),
])
def test_wrong_documents_raise_decode_error(payload: str, complaint: str) -> None:
    with pytest.raises(DecodeError, match=complaint):
        decode_telemetry(payload)
