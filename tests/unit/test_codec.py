from __future__ import annotations

import re
from datetime import datetime
from pathlib import Path

import orjson
import pytest
from hypothesis import given

from schemas.codec import decode, encode, to_json_dict
from schemas.errors import DecodeError
from schemas.events import Event, Message, MessageAppended, MessageRedacted
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
        (lambda e: e.update(v=3), "v"),
        (lambda e: e["payload"].update(user_id="u-1"), "payload.user_id"),  # v1 has none
        (lambda e: e.update(v=2) or e["payload"].update(user_id="has space"), "user_id"),
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


def test_a_redaction_names_only_the_message_id() -> None:
    event = MessageRedacted(tenant_id="t", session_id="s", message_id="m-7", reason="user asked")
    envelope = orjson.loads(encode(event))
    assert envelope["type"] == "message.redacted"
    assert envelope["v"] == 1
    assert envelope["payload"] == {"message_id": "m-7", "reason": "user asked"}
    assert decode(encode(event)) == event


@pytest.mark.parametrize(
    ("mutate", "field"),
    [
        (lambda p: p.pop("message_id"), "payload.message_id"),
        (lambda p: p.update(message_id=7), "payload.message_id"),
        (lambda p: p.update(message_id="has space"), "message_id"),
        (lambda p: p.update(reason=["not", "text"]), "payload.reason"),
    ],
)
def test_decoding_a_redaction_names_the_bad_field(mutate: object, field: str) -> None:
    envelope = to_json_dict(MessageRedacted(tenant_id="t", session_id="s", message_id="m"))
    mutate(envelope["payload"])  # type: ignore[operator]
    with pytest.raises(DecodeError) as caught:
        decode(orjson.dumps(envelope))
    assert caught.value.field == field


@pytest.mark.parametrize("raw", [b"{not json", b"[]", b'"text"', b"\xff\xfe"])
def test_decode_rejects_non_objects(raw: bytes) -> None:
    with pytest.raises(DecodeError):
        decode(raw)


WIRE_DOC = Path(__file__).resolve().parents[2] / "docs" / "wire-format.md"
_ENVELOPE = re.compile(r"^\| `(\{[^`]*\})` \| (\d) \| (none|`[^`]*`) \|$", re.MULTILINE)


def published_envelopes() -> list[tuple[str, int, str | None]]:
    found = _ENVELOPE.findall(WIRE_DOC.read_text())
    return [(raw, int(v), None if user == "none" else user.strip("`")) for raw, v, user in found]


def test_the_documentation_publishes_envelopes_of_each_version() -> None:
    assert {v for _, v, _ in published_envelopes()} == {1, 2}


@pytest.mark.parametrize(("raw", "version", "user_id"), published_envelopes())
def test_published_envelopes(raw: str, version: int, user_id: str | None) -> None:
    event = decode(raw)
    assert isinstance(event, MessageAppended)
    assert event.message.user_id == user_id
    assert event.version == version
    assert encode(event) == raw.encode()


@given(events)
def test_a_message_is_written_as_v2_exactly_when_it_names_a_user(event: Event) -> None:
    envelope = orjson.loads(encode(event))
    if isinstance(event, MessageAppended) and event.message.user_id is not None:
        assert envelope["v"] == 2
        assert envelope["payload"]["user_id"] == event.message.user_id
    else:
        assert envelope["v"] == 1
        assert "user_id" not in envelope["payload"]
