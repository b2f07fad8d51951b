"""The log's side of a rehydration: each projector's watermark, and what lies past it.

A projector's watermark on a partition is the position up to which it has applied every
entry: just before its oldest pending entry, else its group's last delivered entry. It
comes from the consumer group, so it is exact for every store, with or without a position
table. For projectors of the enriched stream it is mapped back to the log position of the
enriched entry there.

Read-your-writes: a scope's messages past the history store's watermark are read from the
log itself, so an append acknowledged before ``rehydrate`` is in the context even when
every projector is stopped. A session scope reads its session's partition; a user scope
reads every partition (its sessions may be in any), the first page of each in one round
trip.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, cast

import redis.asyncio as aioredis

from projectors.position import Position
from projectors.records import SOURCE_FIELD, record_from_log
from projectors.store import MessageKey, Scope, StoredMessage
from schemas.constants import ENTRY_FIELD, enriched_key, group_name, log_key
from schemas.errors import AmemError
from schemas.events import MessageAppended, MessageRedacted, SessionErased

PAGE = 512
_MAX_SEQ = 2**64 - 1

Entries = list[tuple[bytes, dict[bytes, bytes]]]


async def _page(redis: aioredis.Redis, key: str, start: str, end: str, *, reverse: bool) -> Entries:
    """One page of entries (redis-py types its stream replies loosely)."""
    client: Any = redis
    if reverse:
        return cast(Entries, await client.xrevrange(key, start, end, count=PAGE))
    return cast(Entries, await client.xrange(key, start, end, count=PAGE))


@dataclass(slots=True)
class ScopeLog:
    """A scope's entries found by one scan of its partitions."""

    messages: list[StoredMessage] = field(default_factory=list)
    """Log order within each partition; none at or before its session's erase or its own
    redaction."""
    erased: dict[str, Position] = field(default_factory=dict)
    """Session → its latest erase in the scanned range: anything at or before it is gone."""
    redacted: dict[MessageKey, Position] = field(default_factory=dict)
    """Message → its latest redaction in the scanned range: its copies at or before it are
    gone."""
    truncated: bool = False
    """The scan stopped at its entry limit before the end of the range."""

    def erased_at(self, session_id: str) -> Position | None:
        return self.erased.get(session_id)

    def hides(self, key: MessageKey, position: Position) -> bool:
        """Whether an erase or redaction in the scanned range covers this message at
        ``position``."""
        erased = self.erased.get(key[0])
        redacted = self.redacted.get(key)
        return (erased is not None and position <= erased) or (
            redacted is not None and position <= redacted
        )

    def hides_hit(self, key: MessageKey) -> bool:
        """Whether a store's hit (which carries no position) is erased or redacted here:
        whatever a store projected of it before the log tail is at or before the event."""
        return key[0] in self.erased or key in self.redacted


Marks = dict[str, Position | None]
"""Projector → log position up to which it has applied one partition (None: nothing)."""


@dataclass(frozen=True, slots=True)
class LogView:
    """Every projector's watermark on the scope's partitions and the scope's entries past
    the history store's."""

    watermarks: dict[int, Marks]
    """Partition → projector → watermark."""
    tail: ScopeLog


def _before(position: Position) -> Position:
    """The greatest stream id below ``position``."""
    if position.seq > 0:
        return Position(position.ms, position.seq - 1)
    return Position(position.ms - 1, _MAX_SEQ)


def _groups(reply: object) -> dict[str, dict[str, Any]]:
    if isinstance(reply, Exception) or not isinstance(reply, list):
        return {}  # no stream yet: nothing applied
    return {(g["name"].decode() if isinstance(g["name"], bytes) else g["name"]): g for g in reply}


async def watermarks(
    redis: aioredis.Redis,
    partitions: Sequence[int],
    projectors: Sequence[str],
    reads_enriched: Callable[[str], bool],
) -> dict[int, Marks]:
    """Partition → projector → log position up to which it has applied that partition.

    At most three pipelined round trips whatever the number of partitions and projectors:
    the groups of every stream, the oldest pending entry of groups that have some, and for
    enriched-stream groups the log position their entry came from.
    """
    pipe: Any = redis.pipeline(transaction=False)
    for partition in partitions:
        pipe.xinfo_groups(log_key(partition))
        pipe.xinfo_groups(enriched_key(partition))
    replies = await pipe.execute(raise_on_error=False)

    def stream(partition: int, name: str) -> str:
        return enriched_key(partition) if reads_enriched(name) else log_key(partition)

    marks: dict[int, Marks] = {}
    pending: list[tuple[int, str]] = []
    for i, partition in enumerate(partitions):
        groups = {False: _groups(replies[2 * i]), True: _groups(replies[2 * i + 1])}
        found: Marks = {}
        for name in projectors:
            g = groups[reads_enriched(name)].get(group_name(name))
            if g is None:
                found[name] = None
                continue
            last = g.get("last-delivered-id")
            position = Position.parse(last) if last else None
            found[name] = None if position == Position(0, 0) else position
            if int(g.get("pending", 0)):
                pending.append((partition, name))
        marks[partition] = found
    if pending:
        pipe = redis.pipeline(transaction=False)
        for partition, name in pending:
            pipe.xpending(stream(partition, name), group_name(name))
        for (partition, name), summary in zip(pending, await pipe.execute(), strict=True):
            if summary.get("min"):
                marks[partition][name] = _before(Position.parse(summary["min"]))
    # Enriched-stream positions back to log positions: one read per distinct position
    # (projectors that have caught up share theirs).
    wanted = {
        (partition, mark)
        for partition in partitions
        for name in projectors
        if reads_enriched(name) and (mark := marks[partition][name]) is not None
    }
    if wanted:
        asked = sorted(wanted, key=lambda pm: (pm[0], pm[1].ms, pm[1].seq))
        pipe = redis.pipeline(transaction=False)
        for partition, mark in asked:
            pipe.xrevrange(enriched_key(partition), str(mark), "-", count=1)
        source_of: dict[tuple[int, Position], Position | None] = {}
        for key, rows in zip(asked, await pipe.execute(), strict=True):
            source = rows[0][1].get(SOURCE_FIELD.encode()) if rows else None
            source_of[key] = Position.parse(source) if source else None
        for partition in partitions:
            for name in projectors:
                mark = marks[partition][name]
                if reads_enriched(name) and mark is not None:
                    marks[partition][name] = source_of[(partition, mark)]
    return marks


class _Scan:
    """Filters a partition's entries down to a scope's (cheap byte test first).

    Keeps the scope's messages and every erase and redaction of the tenant: those events
    name no user, and a user scope must see them for any of its sessions.
    """

    def __init__(self, tenant_id: str, scope: Scope, found: ScopeLog) -> None:
        self.tenant_id = tenant_id
        self.scope = scope
        # Valid ids never need JSON escaping except "/" (which a writer may send as "\/"):
        # only then is the byte pre-test unsafe.
        self._needle = None if "/" in tenant_id else tenant_id.encode()
        self.found = found

    def offer(self, partition: int, entry_id: bytes, fields: dict[bytes, bytes]) -> None:
        raw = fields.get(ENTRY_FIELD.encode(), b"")
        if self._needle is not None and self._needle not in raw:
            return
        try:
            record = record_from_log(partition, entry_id, fields)
        except AmemError:
            return  # a poison entry: the projectors dead-letter it, context skips it
        event = record.event
        if event.tenant_id != self.tenant_id:
            return
        if isinstance(event, SessionErased):
            erased = self.found.erased.get(event.session_id)
            if erased is None or record.position > erased:
                self.found.erased[event.session_id] = record.position
        elif isinstance(event, MessageRedacted):
            key = (event.session_id, event.message_id)
            redacted = self.found.redacted.get(key)
            if redacted is None or record.position > redacted:
                self.found.redacted[key] = record.position
        elif isinstance(event, MessageAppended):
            message = event.message
            if self.scope.holds(message.session_id, message.user_id):
                self.found.messages.append(
                    StoredMessage(message=message, partition=partition, position=record.position)
                )

    def done(self) -> ScopeLog:
        found = self.found
        found.messages = [
            m
            for m in found.messages
            if not found.hides((m.message.session_id, m.message.id), m.position)
        ]
        return found


async def tail(
    redis: aioredis.Redis,
    tenant_id: str,
    scope: Scope,
    after: Mapping[int, Position | None],
    *,
    max_entries: int,
) -> ScopeLog:
    """The scope's entries of each partition of ``after`` past its position (None: from the
    start). The first page of every partition comes in one pipelined round trip."""
    scan = _Scan(tenant_id, scope, ScopeLog())
    starts = {p: ("-" if a is None else f"({a}") for p, a in after.items()}
    seen = 0
    while starts and seen < max_entries:
        pipe: Any = redis.pipeline(transaction=False)
        for partition, start in starts.items():
            pipe.xrange(log_key(partition), start, "+", count=PAGE)
        pages = cast(list[Entries], await pipe.execute())
        following = {}
        for (partition, _), rows in zip(starts.items(), pages, strict=True):
            for entry_id, fields in rows:
                scan.offer(partition, entry_id, fields)
            seen += len(rows)
            if len(rows) == PAGE:
                following[partition] = f"({rows[-1][0].decode()}"
        starts = following
    scan.found.truncated = bool(starts)
    return scan.done()


async def latest(
    redis: aioredis.Redis,
    tenant_id: str,
    session_id: str,
    partition: int,
    *,
    limit: int,
    max_entries: int,
) -> ScopeLog:
    """The session's last ``limit`` messages read backwards from the log's end (log order).

    The recent window when the history store cannot answer; stops at the session's erase.
    """
    scan = _Scan(tenant_id, Scope(session_id=session_id), ScopeLog())

    def enough() -> bool:
        return session_id in scan.found.erased or len(scan.found.messages) >= limit

    end = "+"
    seen = 0
    while seen < max_entries and not enough():
        rows = await _page(redis, log_key(partition), end, "-", reverse=True)
        for entry_id, fields in rows:
            scan.offer(partition, entry_id, fields)
            if enough():
                break
        seen += len(rows)
        if enough() or len(rows) < PAGE:
            break
        end = f"({rows[-1][0].decode()}"
    found = scan.done()
    found.truncated = seen >= max_entries and len(found.messages) < limit
    found.messages.reverse()
    return found
