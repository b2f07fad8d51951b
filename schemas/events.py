"""Event types of the log. Version ``v`` is per type; decoding rejects versions it does not know."""

from __future__ import annotations

import itertools
import os
import uuid
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import ClassVar, Final

JSONValue = None | bool | int | float | str | list["JSONValue"] | dict[str, "JSONValue"]

ROLES: Final = frozenset({"system", "user", "assistant", "tool"})


def utc_now() -> datetime:
    return datetime.now(UTC)


class _IdSource:
    """Unique ids at a counter's cost: a random 64-bit prefix per process, then a counter.

    ``uuid4`` costs a system call per id, a visible share of a batched append; the prefix is
    drawn again in a forked child so parent and child never share a sequence.
    """

    def __init__(self) -> None:
        self.reset()
        os.register_at_fork(after_in_child=self.reset)

    def reset(self) -> None:
        self._prefix = uuid.uuid4().hex[:16]
        self._counter = itertools.count(1)

    def __call__(self) -> str:
        return f"{self._prefix}.{next(self._counter):x}"


new_id = _IdSource()


@dataclass(frozen=True, kw_only=True, slots=True)
class Message:
    """One conversation message, addressed by ``(tenant_id, session_id, id)``.

    ``id`` is the idempotency key: appending the same id twice in a session appends once.
    ``user_id`` names the person the memory is about: ``rehydrate(..., scope="user")``
    reaches every session of that user in the tenant.
    """

    tenant_id: str
    session_id: str
    role: str
    content: str
    id: str = field(default_factory=new_id)
    parent_id: str | None = None
    agent_id: str | None = None
    name: str | None = None
    user_id: str | None = None
    created_at: datetime = field(default_factory=utc_now)
    metadata: Mapping[str, JSONValue] = field(default_factory=dict)


@dataclass(frozen=True, kw_only=True, slots=True)
class MessageAppended:
    TYPE: ClassVar[str] = "message.appended"
    VERSIONS: ClassVar[tuple[int, ...]] = (1, 2)
    """v2 added ``payload.user_id``. A message without one is written as v1, byte for byte
    what a v1 reader expects; a v1 reader refuses a v2 entry (dead-letters it) rather than
    silently dropping the user."""

    message: Message
    event_id: str = field(default_factory=new_id)
    produced_at: datetime = field(default_factory=utc_now)

    @property
    def version(self) -> int:
        """The lowest version that carries this message (see :attr:`VERSIONS`)."""
        return 1 if self.message.user_id is None else 2

    @property
    def tenant_id(self) -> str:
        return self.message.tenant_id

    @property
    def session_id(self) -> str:
        return self.message.session_id


@dataclass(frozen=True, kw_only=True, slots=True)
class SessionErased:
    """Forget a session: every message of it at or before this event's log position."""

    TYPE: ClassVar[str] = "session.erased"
    VERSIONS: ClassVar[tuple[int, ...]] = (1,)

    tenant_id: str
    session_id: str
    reason: str | None = None
    event_id: str = field(default_factory=new_id)
    produced_at: datetime = field(default_factory=utc_now)

    @property
    def version(self) -> int:
        return 1


@dataclass(frozen=True, kw_only=True, slots=True)
class MessageRedacted:
    """Forget one message of a session, keep the rest: its copies at or before this event's
    log position. The event names only the message's id, so the log may keep it."""

    TYPE: ClassVar[str] = "message.redacted"
    VERSIONS: ClassVar[tuple[int, ...]] = (1,)

    tenant_id: str
    session_id: str
    message_id: str
    reason: str | None = None
    event_id: str = field(default_factory=new_id)
    produced_at: datetime = field(default_factory=utc_now)

    @property
    def version(self) -> int:
        return 1


Event = MessageAppended | SessionErased | MessageRedacted
