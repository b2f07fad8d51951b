"""Contract checks. Every failure is a :class:`ValidationError` naming field, problem and limit."""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from datetime import datetime

import orjson

from schemas.errors import ValidationError
from schemas.events import ROLES, Event, Message, MessageAppended, MessageRedacted
from schemas.limits import DEFAULT_LIMITS, ID_ALPHABET, ID_PATTERN, Limits


def validate_id(field: str, value: object, limits: Limits = DEFAULT_LIMITS) -> str:
    if not isinstance(value, str):
        raise ValidationError(field, f"must be a string, got {type(value).__name__}")
    limit = f"1-{limits.max_id_chars} chars of [{ID_ALPHABET}]"
    if not value or len(value) > limits.max_id_chars:
        raise ValidationError(field, f"has {len(value)} chars", limit)
    if ID_PATTERN.fullmatch(value) is None:
        bad = next(ch for ch in value if ID_PATTERN.fullmatch(ch) is None)
        raise ValidationError(field, f"contains the character {bad!r}", limit)
    return value


def validate_timestamp(field: str, value: object) -> datetime:
    if not isinstance(value, datetime):
        raise ValidationError(field, f"must be a datetime, got {type(value).__name__}")
    if value.tzinfo is None or value.utcoffset() is None:
        raise ValidationError(field, "has no timezone", "timezone-aware timestamps only")
    return value


_NO_NUL = "text without U+0000"
# orjson writes U+0000 as the escape \u0000; an even run of backslashes before it is literal text.
_ESCAPED_NUL = re.compile(rb"(?<!\\)(?:\\\\)*\\u0000")


def _utf8_size(field: str, value: str) -> int:
    # Postgres text and jsonb cannot hold U+0000: refused here rather than dead-lettered later.
    if "\x00" in value:
        raise ValidationError(field, "contains a NUL character", _NO_NUL)
    try:
        return len(value.encode("utf-8"))
    except UnicodeEncodeError as exc:
        raise ValidationError(field, f"is not valid UTF-8 ({exc.reason})") from None


def validate_content(value: object, limits: Limits = DEFAULT_LIMITS, field: str = "content") -> str:
    if not isinstance(value, str):
        raise ValidationError(field, f"must be a string, got {type(value).__name__}")
    size = _utf8_size(field, value)
    if size > limits.max_content_bytes:
        raise ValidationError(
            field, f"is {size} bytes", f"{limits.max_content_bytes} bytes of UTF-8"
        )
    return value


_FLAT_TYPES = frozenset({str, int, bool, type(None)})


def _check_tree(value: dict[str, object], limits: Limits) -> None:
    """Depth and value checks orjson would not make (it writes NaN as null)."""
    if all(type(child) in _FLAT_TYPES for child in value.values()):
        return  # the common case: one flat object, nothing to walk
    stack: list[tuple[object, int]] = [(value, 1)]
    while stack:
        node, depth = stack.pop()
        if isinstance(node, dict | list):
            if depth > limits.max_metadata_depth:
                raise ValidationError(
                    "metadata",
                    f"nests deeper than {limits.max_metadata_depth}",
                    f"depth {limits.max_metadata_depth}",
                )
            children = node.values() if isinstance(node, dict) else node
            stack.extend((child, depth + 1) for child in children)
        elif isinstance(node, float) and not math.isfinite(node):
            raise ValidationError("metadata", f"holds the non-finite number {node}")


def validate_metadata(value: object, limits: Limits = DEFAULT_LIMITS) -> Mapping[str, object]:
    if not isinstance(value, dict):
        raise ValidationError("metadata", f"must be a JSON object, got {type(value).__name__}")
    _check_tree(value, limits)
    try:
        dumped = orjson.dumps(value)
    except orjson.JSONEncodeError as exc:
        raise ValidationError("metadata", f"is not JSON-serialisable ({exc})") from None
    if _ESCAPED_NUL.search(dumped):
        raise ValidationError("metadata", "contains a NUL character", _NO_NUL)
    size = len(dumped)
    if size > limits.max_metadata_bytes:
        raise ValidationError(
            "metadata", f"is {size} bytes as JSON", f"{limits.max_metadata_bytes} bytes"
        )
    return value


def validate_name(value: object, limits: Limits = DEFAULT_LIMITS) -> str:
    if not isinstance(value, str):
        raise ValidationError("name", f"must be a string, got {type(value).__name__}")
    if not value or len(value) > limits.max_id_chars:
        raise ValidationError("name", f"has {len(value)} chars", f"1-{limits.max_id_chars} chars")
    _utf8_size("name", value)
    return value


def validate_message(message: Message, limits: Limits = DEFAULT_LIMITS) -> Message:
    validate_id("tenant_id", message.tenant_id, limits)
    validate_id("session_id", message.session_id, limits)
    validate_id("id", message.id, limits)
    if message.role not in ROLES:
        raise ValidationError("role", f"is {message.role!r}", f"one of {', '.join(sorted(ROLES))}")
    validate_content(message.content, limits)
    if message.parent_id is not None:
        validate_id("parent_id", message.parent_id, limits)
    if message.agent_id is not None:
        validate_id("agent_id", message.agent_id, limits)
    if message.name is not None:
        validate_name(message.name, limits)
    if message.user_id is not None:
        validate_id("user_id", message.user_id, limits)
    validate_timestamp("created_at", message.created_at)
    validate_metadata(message.metadata, limits)
    return message


def validate_event(event: Event, limits: Limits = DEFAULT_LIMITS) -> Event:
    validate_id("event_id", event.event_id, limits)
    validate_timestamp("produced_at", event.produced_at)
    if isinstance(event, MessageAppended):
        validate_message(event.message, limits)
    else:
        validate_id("tenant_id", event.tenant_id, limits)
        validate_id("session_id", event.session_id, limits)
        if isinstance(event, MessageRedacted):
            validate_id("message_id", event.message_id, limits)
        if event.reason is not None:
            validate_content(event.reason, limits, field="reason")
    return event
