"""An OpenAI Agents SDK session on the log: ``Runner.run(agent, text, session=...)``.

Each item the SDK stores (messages, function calls and their outputs, reasoning, tool
calls of every kind) is one message of the session, its text readable by the projections
and the item itself kept whole (:mod:`surfaces.originals`), so :meth:`get_items` gives back
exactly what :meth:`add_items` was given. Guide: ``docs/openai-agents.md``.

Needs the ``agents`` extra: ``pip install 'atomic-memory[agents]'``.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any, cast

from agents.items import TResponseInputItem
from agents.memory import SessionSettings
from agents.memory.session_settings import resolve_session_limit

from projectors.store import StoredMessage
from rehydrator.context import Context
from rehydrator.http_keys import LOCAL_TENANT
from rehydrator.rehydrate import ScopeName
from schemas.errors import ValidationError
from schemas.events import Message
from surfaces.memory import Memory
from surfaces.originals import pack, unpack

KIND = "openai-agents"
"""What :func:`surfaces.originals.pack` records as the kind of the items kept here."""
_ROLES = {"user": "user", "assistant": "assistant", "system": "system", "developer": "system"}
_NAMED = frozenset({"function_call", "custom_tool_call", "mcp_call"})
"""Calls whose ``name`` (the tool's) is the speaker of their line in a context."""


def _role(item: dict[str, Any]) -> str:
    role = _ROLES.get(str(item.get("role")))
    if role is not None:
        return role
    kind = str(item.get("type", ""))
    return "tool" if kind.endswith("_output") or kind == "mcp_approval_response" else "assistant"


def _plain(message: Message) -> dict[str, Any]:
    """A message some other surface appended, as the SDK's easy input message."""
    role = message.role if message.role in ("user", "system") else "assistant"
    return {"role": role, "content": message.content}


class AtomicMemorySession:
    """The Agents SDK's ``Session`` protocol on one session of the log.

    ``add_items`` appends the items in one all-or-nothing append; retrying a call that
    raised, with the same items through the same Memory, appends nothing twice.
    ``get_items`` reads the latest items in order (read-your-writes: those not projected
    yet included), ``pop_item`` redacts the last item, and ``clear_session`` erases the
    session from every store (with ``erase_wait_s``, waits for the proof).
    """

    def __init__(
        self,
        session_id: str,
        *,
        memory: Memory,
        tenant_id: str = LOCAL_TENANT,
        user_id: str | None = None,
        session_settings: SessionSettings | None = None,
        erase_wait_s: float | None = None,
    ) -> None:
        self.session_id = session_id
        self.session_settings = session_settings
        self.tenant_id = tenant_id
        self.user_id = user_id
        self.erase_wait_s = erase_wait_s
        self._memory = memory
        self._lock = asyncio.Lock()
        self._log = logging.getLogger(f"{__name__}.{type(self).__name__}")

    async def get_items(self, limit: int | None = None) -> list[TResponseInputItem]:
        """The latest ``limit`` items (None: ``session_settings.limit``, else all), in
        chronological order."""
        wanted = resolve_session_limit(limit, self.session_settings)
        if wanted is not None and wanted <= 0:
            return []
        stored = await self._memory.read(self.tenant_id, self.session_id, limit=wanted)
        return [self._item(s) for s in stored]

    async def add_items(self, items: list[TResponseInputItem]) -> None:
        """Append the items, in order, all or nothing."""
        if not items:
            return
        messages = [self._message(item) for item in items]
        async with self._lock:
            await self._memory.remember_fresh(messages)

    async def pop_item(self) -> TResponseInputItem | None:
        """Remove the most recent item (a redaction: forgotten in every store) and return
        it; None when the session is empty."""
        async with self._lock:
            last = await self._memory.read(self.tenant_id, self.session_id, limit=1)
            if not last:
                return None
            await self._memory.forget(
                self.tenant_id,
                self.session_id,
                message_id=last[0].message.id,
                reason="pop_item",
                wait_s=self.erase_wait_s,
            )
            return self._item(last[0])

    async def clear_session(self) -> None:
        """Erase the session: reads hide it at once, every store deletes it."""
        await self._memory.forget(
            self.tenant_id, self.session_id, reason="clear_session", wait_s=self.erase_wait_s
        )

    async def recall(
        self,
        query: str | None = None,
        *,
        budget_tokens: int = 2000,
        scope: ScopeName = "session",
    ) -> Context:
        """The session's context packed to ``budget_tokens``: the recent turns and those
        most relevant to ``query`` (default: the latest user turn), for a long session
        instead of its whole history (``docs/openai-agents.md``)."""
        return await self._memory.recall(
            self.tenant_id,
            self.session_id,
            query=query,
            budget_tokens=budget_tokens,
            scope=scope,
            user_id=self.user_id if scope == "user" else None,
        )

    def _message(self, item: TResponseInputItem) -> Message:
        if not isinstance(item, dict):
            raise ValidationError("item", f"must be a JSON object, got {type(item).__name__}")
        original = cast(dict[str, Any], item)
        content, metadata = pack(original, KIND, self._memory.settings.producer.limits)
        name = original.get("name") if original.get("type") in _NAMED else None
        return Message(
            tenant_id=self.tenant_id,
            session_id=self.session_id,
            role=_role(original),
            content=content,
            name=name if isinstance(name, str) and name else None,
            user_id=self.user_id,
            metadata=metadata,
        )

    def _item(self, stored: StoredMessage) -> TResponseInputItem:
        item = unpack(stored.message, KIND)
        return cast(TResponseInputItem, item if item is not None else _plain(stored.message))
