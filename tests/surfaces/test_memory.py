"""The handle the surfaces share: listing sessions at once, and calls across event loops."""

from __future__ import annotations

import uuid
from dataclasses import replace

import pytest

from rehydrator.errors import HistoryUnavailableError
from schemas.errors import ConfigurationError
from schemas.events import Message
from stack.settings import Settings
from surfaces.memory import Memory


def said(tenant: str, session: str, text: str) -> Message:
    return Message(tenant_id=tenant, session_id=session, role="user", content=text)


async def test_sessions_are_listed_latest_first_as_soon_as_appended(memory: Memory) -> None:
    tenant = f"t-{uuid.uuid4().hex[:8]}"
    await memory.remember([said(tenant, "a", "one"), said(tenant, "a", "two")])
    await memory.remember([said(tenant, "gone", "erased soon")])
    await memory.remember([said(tenant, "b", "three")])
    await memory.forget(tenant, "gone")
    listed = await memory.sessions(tenant)
    assert [(s.session_id, s.message_count) for s in listed] == [("b", 1), ("a", 2)]
    assert listed[1].participants == {"user"}
    assert [s.session_id for s in await memory.sessions(tenant, limit=1)] == ["b"]
    assert await memory.sessions(f"{tenant}-other") == []


async def test_a_blocking_call_on_the_memorys_own_loop_is_refused(memory: Memory) -> None:
    with pytest.raises(ConfigurationError, match="async variant"):
        memory.blocking(lambda: memory.sessions("nobody"))


async def test_a_history_past_the_log_scan_limit_is_refused_not_cut(settings: Settings) -> None:
    """No projector ran and the log past the history store's watermark is longer than the
    scan limit: a whole history cannot be read, and saying so beats returning part of it;
    the latest few messages still can be."""
    tight = replace(settings, rehydrate=replace(settings.rehydrate, log_tail_entries=50))
    tenant = f"t-{uuid.uuid4().hex[:8]}"
    async with Memory.open(tight) as memory:
        await memory.remember([said(tenant, "long", f"turn {i}") for i in range(1200)])
        with pytest.raises(HistoryUnavailableError, match="more than 50 log entries"):
            await memory.read(tenant, "long")
        # The newest few are read backwards from the log's end, whatever the lag.
        newest = await memory.read(tenant, "long", limit=10)
        assert [m.message.content for m in newest] == [f"turn {i}" for i in range(1190, 1200)]
