from __future__ import annotations

from datetime import datetime

import orjson
import pytest
from hypothesis import given

from schemas.codec import decode, encode, to_json_dict
from schemas.errors import DecodeError
from schemas.events import Event, Message, MessageAppended
from tests.strategies import events


@given(events)
def test_round_trip_is_exact(event: Event) -> None:
    assert decode(encode(event)) == event


@given(events)
def test_encoding_is_plain_json_with_the_documented_envelope(event: Event) -> None:
    envelope = orjson.loads(encode(event))
    assert list(envelope)[:6] == ["type", "v", "event_id", "produced_at", "tenant_id", "session_id"]
    produced_at = datetime.fromisoformat(envelope["produced_at"])
    assert produced_at.tzinfo is not None
    assert produced_at == event.produced_at
    assert envelope["tenant_id"] == event.tenant_id


def _valid() -> dict[str, object]:
    event = MessageAppended(
        message=Message(tenant_id="t", session_id="s", role="user", content="x")
    )
    return to_json_dict(event)


@pytest.mark.parametrize(
    ("mutate", "field"),
    [
        (lambda e: e.pop("type"), "type"),
        (lambda e: e.update(type="message.deleted"), "type"),
        (lambda e: e.update(v=2), "v"),
        (lambda e: e.update(v=True), "v"),
        (lambda e: e.pop("tenant_id"), "tenant_id"),
        (lambda e: e["payload"].pop("content"), "payload.content"),
        (lambda e: e["payload"].update(role="wizard"), "role"),
        (lambda e: e["payload"].update(created_at="2026-01-01T00:00:00"), "payload.created_at"),
        (lambda e: e["payload"].update(created_at="yesterday"), "payload.created_at"),
        (lambda e: e["payload"].update(content="x" * (256 * 1024 + 1)), "content"),
        (lambda e: e.update(session_id="has space"), "session_id"),
    ],
)
def test_decode_names_the_bad_field(mutate: object, field: str) -> None:
    envelope = _valid()
    mutate(envelope)  # type: ignore[operator]
    with pytest.raises(DecodeError) as caught:
        decode(orjson.dumps(envelope))
    assert caught.value.field == field


@pytest.mark.parametrize("raw", [b"{not json", b"[]", b'"text"', b"\xff\xfe"])
def test_decode_rejects_non_objects(raw: bytes) -> None:
    with pytest.raises(DecodeError):
        decode(raw)
