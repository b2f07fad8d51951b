"""Hypothesis strategies for valid events."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone

from hypothesis import strategies as st

from schemas.events import (
    ROLES,
    JSONValue,
    Message,
    MessageAppended,
    MessageRedacted,
    SessionErased,
)

ids = st.text(alphabet="abcXYZ019._:@/-", min_size=1, max_size=128)
aware_datetimes = st.datetimes(
    min_value=datetime(1971, 1, 1), max_value=datetime(2100, 1, 1)
).flatmap(
    lambda dt: st.sampled_from([UTC, timezone(timedelta(hours=5, minutes=30))]).map(
        lambda tz: dt.replace(tzinfo=tz)
    )
)
# No U+0000: Postgres cannot store it, so validation refuses it.
text = st.text(st.characters(exclude_categories=["Cs"], exclude_characters="\x00"), max_size=300)
json_leaves: st.SearchStrategy[JSONValue] = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-(2**53), 2**53),
    st.floats(allow_nan=False, allow_infinity=False),
    text,
)
json_values: st.SearchStrategy[JSONValue] = st.recursive(
    json_leaves,
    lambda children: st.lists(children, max_size=4) | st.dictionaries(text, children, max_size=4),
    max_leaves=12,
)
metadata = st.dictionaries(text, json_values, max_size=5)

messages = st.builds(
    Message,
    tenant_id=ids,
    session_id=ids,
    id=ids,
    role=st.sampled_from(sorted(ROLES)),
    content=text,
    parent_id=st.none() | ids,
    agent_id=st.none() | ids,
    user_id=st.none() | ids,
    name=st.none() | st.text(alphabet="abc XYZ_-é", min_size=1, max_size=40),
    created_at=aware_datetimes,
    metadata=metadata,
)
events = st.one_of(
    st.builds(MessageAppended, message=messages, event_id=ids, produced_at=aware_datetimes),
    st.builds(
        SessionErased,
        tenant_id=ids,
        session_id=ids,
        reason=st.none() | text,
        event_id=ids,
        produced_at=aware_datetimes,
    ),
    st.builds(
        MessageRedacted,
        tenant_id=ids,
        session_id=ids,
        message_id=ids,
        reason=st.none() | text,
        event_id=ids,
        produced_at=aware_datetimes,
    ),
)
