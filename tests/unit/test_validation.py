from __future__ import annotations

from datetime import datetime

import pytest
from hypothesis import given
from hypothesis import strategies as st

from schemas.errors import ValidationError
from schemas.events import Message, MessageRedacted
from schemas.limits import Limits
from schemas.validation import validate_event, validate_id, validate_message
from tests.strategies import messages


def _message(**overrides: object) -> Message:
    fields: dict[str, object] = {"tenant_id": "t", "session_id": "s", "role": "user"}
    fields["content"] = "hello"
    fields.update(overrides)
    return Message(**fields)  # type: ignore[arg-type]


@given(messages)
def test_generated_messages_are_valid(message: Message) -> None:
    assert validate_message(message) is message


@given(st.text(min_size=1, max_size=200))
def test_ids_outside_the_alphabet_or_too_long_are_refused(value: str) -> None:
    allowed = set("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789._:@/-")
    ok = len(value) <= 128 and set(value) <= allowed
    if ok:
        assert validate_id("id", value) == value
    else:
        with pytest.raises(ValidationError) as caught:
            validate_id("id", value)
        assert caught.value.field == "id"
        assert "128" in str(caught.value)


@pytest.mark.parametrize(
    ("overrides", "field", "limit_text"),
    [
        ({"role": "wizard"}, "role", "assistant, system, tool, user"),
        ({"content": "x" * (256 * 1024 + 1)}, "content", "262144 bytes"),
        ({"content": "\ud800"}, "content", None),
        ({"id": "a b"}, "id", "1-128 chars"),
        ({"tenant_id": ""}, "tenant_id", "1-128 chars"),
        ({"session_id": "s" * 129}, "session_id", "1-128 chars"),
        ({"parent_id": "p!"}, "parent_id", "1-128 chars"),
        ({"created_at": datetime(2026, 1, 1)}, "created_at", "timezone-aware"),
        ({"metadata": {"k": "v" * 17000}}, "metadata", "16384 bytes"),
        ({"metadata": {"a": [[[[[[[[1]]]]]]]]}}, "metadata", "depth 8"),
        ({"metadata": {"x": float("nan")}}, "metadata", None),
        ({"metadata": {1: "non-string key"}}, "metadata", None),
        ({"metadata": ["not", "an", "object"]}, "metadata", None),
    ],
)
def test_errors_name_field_problem_and_limit(
    overrides: dict[str, object], field: str, limit_text: str | None
) -> None:
    with pytest.raises(ValidationError) as caught:
        validate_message(_message(**overrides))
    assert caught.value.field == field
    if limit_text is not None:
        assert caught.value.limit is not None
        assert limit_text in caught.value.limit
    assert "\n" not in str(caught.value)


def test_metadata_at_depth_eight_is_accepted() -> None:
    validate_message(_message(metadata={"a": [[[[[[1]]]]]]}))


def test_limits_are_settings() -> None:
    tight = Limits(max_content_bytes=4)
    with pytest.raises(ValidationError):
        validate_message(_message(content="hello"), tight)


@pytest.mark.parametrize(
    ("overrides", "field"),
    [
        ({"message_id": "a b"}, "message_id"),
        ({"message_id": ""}, "message_id"),
        ({"session_id": "s" * 129}, "session_id"),
        ({"reason": "x" * (256 * 1024 + 1)}, "reason"),
    ],
)
def test_a_redaction_is_validated_like_the_message_it_names(
    overrides: dict[str, object], field: str
) -> None:
    fields: dict[str, object] = {"tenant_id": "t", "session_id": "s", "message_id": "m"}
    fields.update(overrides)
    with pytest.raises(ValidationError) as caught:
        validate_event(MessageRedacted(**fields))  # type: ignore[arg-type]
    assert caught.value.field == field
