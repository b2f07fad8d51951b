"""Ports: what every store adapter promises, whatever the store.

:class:`Projection` is the write side every adapter implements (idempotent, order-insensitive
``apply``; a ``digest`` for ``verify``). The three read ports add what the rehydrator asks of
each kind of store. Adapters live in ``projectors/stores/<store>.py``, named ``<Store><Port>``.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import ClassVar

import numpy as np
import numpy.typing as npt

from projectors.position import Position
from projectors.records import (
    Digest,
    MessageAddress,
    Record,
    SessionKey,
    latest_erasures,
    latest_redactions,
    split,
)
from schemas.events import Message


class Projection(ABC):
    """A store the log is projected into.

    ``apply`` must leave the same state whatever the batch boundaries, however often a
    record is applied, and in whatever order a session's records arrive: the state is a
    function of the log positions applied, never of arrival order.
    """

    store: ClassVar[str]
    """Short store name, used in metrics and errors."""
    needs_enrichment: ClassVar[bool] = False
    """True: reads the enriched stream (vectors, tokens, entities) instead of the log."""
    transient_errors: ClassVar[tuple[type[BaseException], ...]] = (OSError,)
    """Errors meaning "the store is down": the batch is retried in place, never dead-lettered."""

    @abstractmethod
    async def start(self) -> None:
        """Connect and create what is missing (tables, collections, indexes); idempotent."""

    @abstractmethod
    async def close(self) -> None:
        """Release connections."""

    @abstractmethod
    async def apply(self, records: Sequence[Record]) -> None:
        """Apply one batch (messages, erasures, redactions; log order) in as few round trips
        as possible."""

    @abstractmethod
    async def digest(self, tenant_id: str | None = None) -> Digest:
        """Per session, message id → content hash of what the store holds."""

    @abstractmethod
    async def count(self) -> int:
        """Messages held, all tenants."""

    @abstractmethod
    async def reset(self) -> None:
        """Drop everything this projection holds (before a rebuild from the log)."""

    @abstractmethod
    async def drop(self) -> None:
        """Remove this projection's tables, collections or graph and what they hold (a
        generation a rebuild replaced); :meth:`start` makes them anew."""

    async def positions(self) -> dict[int, Position]:
        """Applied position per partition, where the store keeps it with the data."""
        return {}


class TombstoneProjection(Projection):
    """``apply`` for stores without multi-statement transactions, from seven primitives.

    An erase writes its tombstone (the session's erase position) before deleting; a message
    write re-reads the tombstones after writing. Whichever of two concurrent workers runs
    second therefore sees the other's write, so a message at or before an erase never
    survives it, and messages appended after the erase do. A redaction does the same with
    a tombstone of its own message (its position): the message's copies at or before it go,
    the rest of the session stays.
    """

    async def apply(self, records: Sequence[Record]) -> None:
        messages, erasures, redactions = split(records)
        if erasures:
            latest = latest_erasures(erasures)
            await self._write_tombstones(latest)
            await self._delete_upto(latest)
        if redactions:
            redacted = latest_redactions(redactions)
            await self._write_redactions(redacted)
            await self._delete_redacted(redacted)
        if messages:
            await self._upsert(messages)
            tombstones = await self._tombstones({m.session for m in messages})
            covered = {
                m.session: tombstones[m.session]
                for m in messages
                if m.session in tombstones and m.position <= tombstones[m.session]
            }
            if covered:
                await self._delete_upto(covered)
            redacted = await self._redactions({m.address for m in messages})
            gone = {
                m.address: redacted[m.address]
                for m in messages
                if m.address in redacted and m.position <= redacted[m.address]
            }
            if gone:
                await self._delete_redacted(gone)

    @abstractmethod
    async def _upsert(self, messages: Sequence[Record]) -> None:
        """Write messages keyed by deterministic ids (a repeat overwrites with the same)."""

    @abstractmethod
    async def _write_tombstones(self, erased: dict[SessionKey, Position]) -> None:
        """Record each session's erase position, keeping the furthest."""

    @abstractmethod
    async def _tombstones(self, sessions: Iterable[SessionKey]) -> dict[SessionKey, Position]:
        """Erase positions of the sessions that have one."""

    @abstractmethod
    async def _delete_upto(self, erased: dict[SessionKey, Position]) -> None:
        """Delete each session's data at or before its position."""

    @abstractmethod
    async def _write_redactions(self, redacted: dict[MessageAddress, Position]) -> None:
        """Record each message's redaction position, keeping the furthest."""

    @abstractmethod
    async def _redactions(
        self, messages: Iterable[MessageAddress]
    ) -> dict[MessageAddress, Position]:
        """Redaction positions of the messages that have one."""

    @abstractmethod
    async def _delete_redacted(self, redacted: dict[MessageAddress, Position]) -> None:
        """Delete each message where it sits at or before its position (and what only it
        brought: a graph's entities)."""


def participant(role: str, name: str | None) -> str:
    """How a :class:`SessionSummary` names who spoke: ``role`` or ``role:name``."""
    return role if name is None else f"{role}:{name}"


@dataclass(frozen=True, kw_only=True, slots=True)
class SessionSummary:
    """What a store knows of one session as a whole."""

    tenant_id: str
    session_id: str
    message_count: int
    participants: frozenset[str]
    """``role`` or ``role:name`` of everyone who spoke."""
    first_at: datetime
    last_at: datetime
    last_position: Position


class ProjectionStore(Projection):
    """Port: the session-level view (Postgres rows, Mongo session documents)."""

    @abstractmethod
    async def session(self, tenant_id: str, session_id: str) -> SessionSummary | None:
        """The session's summary, or None when the store holds nothing of it."""

    @abstractmethod
    async def sessions(self, tenant_id: str, *, limit: int) -> list[SessionSummary]:
        """The tenant's sessions with a message, the latest active (``last_at``) first, at
        most ``limit`` of them."""


MessageKey = tuple[str, str]
"""``(session_id, message_id)``: a message within its tenant."""


@dataclass(frozen=True, kw_only=True, slots=True)
class Scope:
    """Which of a tenant's messages a read covers.

    ``session_id``: that session's messages; ``user_id``: that user's messages in any
    session; both: the union (a session resumed with everything its user said before);
    neither: the whole tenant. Adapters put this filter, and the tenant's, inside the
    store query itself.
    """

    session_id: str | None = None
    user_id: str | None = None

    def holds(self, session_id: str, user_id: str | None) -> bool:
        """Whether a message of ``session_id`` about ``user_id`` is in the scope."""
        if self.session_id is None and self.user_id is None:
            return True
        return session_id == self.session_id or (
            self.user_id is not None and user_id == self.user_id
        )


WHOLE_TENANT = Scope()


@dataclass(frozen=True, kw_only=True, slots=True)
class Hit:
    session_id: str
    message_id: str
    score: float

    @property
    def key(self) -> MessageKey:
        return (self.session_id, self.message_id)


@dataclass(frozen=True, kw_only=True, slots=True)
class StoredMessage:
    """A message as a store holds it, with its place in the log."""

    message: Message
    partition: int
    position: Position


@dataclass(frozen=True, kw_only=True, slots=True)
class Turn:
    """Where a message sits in its session, without its text."""

    session_id: str
    message_id: str
    role: str
    name: str | None
    position: Position
    created_at: datetime

    @property
    def key(self) -> MessageKey:
        return (self.session_id, self.message_id)


@dataclass(frozen=True, kw_only=True, slots=True)
class IndexedTurn:
    """A stored message with its words as the history store's full text sees them
    (term → count in the message)."""

    stored: StoredMessage
    terms: Mapping[str, int]

    @property
    def turn(self) -> Turn:
        m = self.stored.message
        return Turn(
            session_id=m.session_id,
            message_id=m.id,
            role=m.role,
            name=m.name,
            position=self.stored.position,
            created_at=m.created_at,
        )


class HistoryStore(Projection):
    """Port: the messages themselves, in log order, and searched by their words."""

    bm25_k1: ClassVar[float] = 1.2
    bm25_b: ClassVar[float] = 0.75
    """Okapi BM25's parameters of :meth:`lexical` (what an in-memory copy must use too)."""

    @abstractmethod
    async def recent(self, tenant_id: str, session_id: str, *, limit: int) -> list[StoredMessage]:
        """The session's last ``limit`` messages, in log order."""

    @abstractmethod
    async def messages(self, tenant_id: str, keys: Sequence[MessageKey]) -> list[StoredMessage]:
        """The given messages the store holds, in log order, then by session (unknown keys
        are left out)."""

    @abstractmethod
    async def around(
        self, tenant_id: str, keys: Sequence[MessageKey], *, radius: int
    ) -> dict[MessageKey, list[Turn]]:
        """Each given turn's window: up to ``radius`` turns of its session before it, the
        turn, up to ``radius`` after it, in log order (unknown keys are left out)."""

    @abstractmethod
    async def lexical(self, tenant_id: str, query: str, *, limit: int, scope: Scope) -> list[Hit]:
        """Best first by Okapi BM25 of the query's words over each message's speaker, text
        and image caption; term statistics are the scope's."""

    @abstractmethod
    async def analyse(self, query: str) -> list[str]:
        """The query's distinct terms, as :meth:`scan` gives a message's."""

    @abstractmethod
    async def scan(
        self, tenant_id: str, *, scope: Scope, after: Position | None = None
    ) -> list[IndexedTurn]:
        """Every turn of the scope (past ``after`` only, when given), in no set order: what
        an in-memory index of the scope is built from."""

    @abstractmethod
    async def erased_since(self, tenant_id: str, after: Position | None) -> dict[str, Position]:
        """Session → erase position, for the tenant's erases past ``after`` the store applied."""

    @abstractmethod
    async def redacted_since(
        self, tenant_id: str, after: Position | None
    ) -> dict[MessageKey, Position]:
        """Message → redaction position, for the tenant's redactions past ``after`` the store
        applied."""


class VectorStore(Projection):
    """Port: nearest messages by embedding, the tenant and scope filter inside the store query."""

    needs_enrichment = True

    @abstractmethod
    async def nearest(
        self,
        tenant_id: str,
        vector: Sequence[float],
        *,
        limit: int = 10,
        scope: Scope = WHOLE_TENANT,
    ) -> list[Hit]:
        """Best first; score is cosine similarity."""


@dataclass(frozen=True, kw_only=True, slots=True)
class StoredVectors:
    """Vectors of a scope: row ``i`` of ``vectors`` is message ``keys[i]`` at ``positions[i]``."""

    keys: list[MessageKey]
    positions: list[Position]
    vectors: npt.NDArray[np.float32]
    """Unit rows (cosine = dot product)."""


class VectorSource(ABC):
    """Port: a vector store's rows in bulk, for an in-memory copy of a scope's vectors."""

    store: ClassVar[str]

    @abstractmethod
    async def vectors(
        self, tenant_id: str, *, scope: Scope, after: Position | None = None
    ) -> StoredVectors:
        """Every vector of the scope (past ``after`` only, when given)."""

    @abstractmethod
    async def erased_since(self, tenant_id: str, after: Position | None) -> dict[str, Position]:
        """Session → erase position, for the tenant's erases past ``after`` the store applied."""

    @abstractmethod
    async def redacted_since(
        self, tenant_id: str, after: Position | None
    ) -> dict[MessageKey, Position]:
        """Message → redaction position, for the tenant's redactions past ``after`` the store
        applied."""


class GraphStore(Projection):
    """Port: the message and entity graph of a tenant's sessions."""

    needs_enrichment = True

    @abstractmethod
    async def neighbours(
        self, tenant_id: str, seeds: Sequence[MessageKey], *, scope: Scope, limit: int = 50
    ) -> list[Hit]:
        """Messages of the scope next to, replying to or replied by, or sharing an entity
        with the given ones, best first: the ``limit`` most connected by each kind of path
        (turns and replies; shared entities).

        The given messages are not in the result; score counts the paths that lead to a hit
        (of a kind where the hit is among that kind's ``limit`` best).
        """

    @abstractmethod
    async def entities(self, tenant_id: str, session_id: str) -> dict[str, int]:
        """Entity → number of the session's messages that mention it."""
