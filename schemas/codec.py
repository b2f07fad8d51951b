"""The wire format: one JSON envelope per stream entry (see ``docs/wire-format.md``)."""

from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime
from typing import Any

import orjson

from schemas.errors import DecodeError, ValidationError
from schemas.events import Event, Message, MessageAppended, MessageRedacted, SessionErased
from schemas.limits import DEFAULT_LIMITS, Limits
from schemas.validation import validate_event

_OPTIONAL_MESSAGE_FIELDS = ("parent_id", "agent_id", "name", "user_id")
_EVENT_TYPES: dict[str, type[MessageAppended] | type[SessionErased] | type[MessageRedacted]] = {
    MessageAppended.TYPE: MessageAppended,
    SessionErased.TYPE: SessionErased,
    MessageRedacted.TYPE: MessageRedacted,
}


def to_json_dict(event: Event) -> dict[str, Any]:
    """The envelope in the documented field order; timestamps stay ``datetime``."""
    envelope: dict[str, Any] = {
        "type": event.TYPE,
        "v": event.version,
        "event_id": event.event_id,
        "produced_at": event.produced_at,
        "tenant_id": event.tenant_id,
        "session_id": event.session_id,
    }
    if isinstance(event, MessageAppended):
        message = event.message
        payload: dict[str, Any] = {"id": message.id, "role": message.role}
        payload["content"] = message.content
        for name in _OPTIONAL_MESSAGE_FIELDS:
            value = getattr(message, name)
            if value is not None:
                payload[name] = value
        payload["created_at"] = message.created_at
        if message.metadata:
            payload["metadata"] = message.metadata
    else:
        payload = {"message_id": event.message_id} if isinstance(event, MessageRedacted) else {}
        if event.reason is not None:
            payload["reason"] = event.reason
    envelope["payload"] = payload
    return envelope


def encode(event: Event) -> bytes:
    # orjson writes aware datetimes as RFC 3339 itself, UTC as ``Z``: far cheaper than isoformat.
    return orjson.dumps(to_json_dict(event), option=orjson.OPT_UTC_Z)


def _field(obj: Mapping[str, Any], name: str, kind: type, prefix: str = "") -> Any:
    if name not in obj:
        raise DecodeError(prefix + name, "is missing")
    value = obj[name]
    if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
        raise DecodeError(prefix + name, f"must be {kind.__name__}, got {type(value).__name__}")
    return value


def _optional(obj: Mapping[str, Any], name: str, kind: type, prefix: str) -> Any:
    return None if obj.get(name) is None else _field(obj, name, kind, prefix)


def _parse_ts(field: str, value: str) -> datetime:
    try:
        parsed = datetime.fromisoformat(value)
    except ValueError:
        raise DecodeError(field, f"is not an ISO 8601 timestamp: {value[:40]!r}") from None
    if parsed.tzinfo is None:
        raise DecodeError(field, "has no timezone", "timezone-aware timestamps only")
    return parsed


def _user_id(payload: Mapping[str, Any], version: int) -> str | None:
    user_id: str | None = _optional(payload, "user_id", str, "payload.")
    if user_id is not None and version < 2:
        raise DecodeError("payload.user_id", f"is not part of v{version}", "v=2")
    return user_id


def from_json_dict(envelope: object, limits: Limits = DEFAULT_LIMITS) -> Event:
    """Build and validate an event from a parsed envelope."""
    if not isinstance(envelope, dict):
        raise DecodeError("event", f"must be a JSON object, got {type(envelope).__name__}")
    type_name = _field(envelope, "type", str)
    cls = _EVENT_TYPES.get(type_name)
    if cls is None:
        raise DecodeError("type", f"is unknown: {type_name[:60]!r}", ", ".join(_EVENT_TYPES))
    version = _field(envelope, "v", int)
    if version not in cls.VERSIONS:
        supported = " or ".join(f"v={v}" for v in cls.VERSIONS)
        raise DecodeError("v", f"{version} is not supported for {type_name}", supported)
    common = {
        "event_id": _field(envelope, "event_id", str),
        "produced_at": _parse_ts("produced_at", _field(envelope, "produced_at", str)),
    }
    tenant_id = _field(envelope, "tenant_id", str)
    session_id = _field(envelope, "session_id", str)
    payload = _field(envelope, "payload", dict)
    event: Event
    if cls is MessageAppended:
        p = "payload."
        message = Message(
            tenant_id=tenant_id,
            session_id=session_id,
            id=_field(payload, "id", str, p),
            role=_field(payload, "role", str, p),
            content=_field(payload, "content", str, p),
            parent_id=_optional(payload, "parent_id", str, p),
            agent_id=_optional(payload, "agent_id", str, p),
            name=_optional(payload, "name", str, p),
            user_id=_user_id(payload, version),
            created_at=_parse_ts(p + "created_at", _field(payload, "created_at", str, p)),
            metadata=_optional(payload, "metadata", dict, p) or {},
        )
        event = MessageAppended(message=message, **common)
    elif cls is MessageRedacted:
        event = MessageRedacted(
            tenant_id=tenant_id,
            session_id=session_id,
            message_id=_field(payload, "message_id", str, "payload."),
            reason=_optional(payload, "reason", str, "payload."),
            **common,
        )
    else:
        reason = _optional(payload, "reason", str, "payload.")
        event = SessionErased(tenant_id=tenant_id, session_id=session_id, reason=reason, **common)
    try:
        return validate_event(event, limits)
    except ValidationError as exc:
        raise DecodeError(exc.field, exc.problem, exc.limit) from None


def decode(raw: bytes | str, limits: Limits = DEFAULT_LIMITS) -> Event:
    """Parse one stream entry's ``event`` field; raises :class:`DecodeError` naming the field."""
    try:
        envelope = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise DecodeError("event", f"is not valid JSON ({exc})") from None
    return from_json_dict(envelope, limits)
