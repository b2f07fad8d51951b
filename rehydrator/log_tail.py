"""The log's side of a rehydration: each projector's watermark, and what lies past it.

A projector's watermark on a partition is the position up to which it has applied every
entry: just before its oldest pending entry, else its group's last delivered entry. It
comes from the consumer group, so it is exact for every store, with or without a position
table. For projectors of the enriched stream it is mapped back to the log position of the
enriched entry there.

Read-your-writes: a session's messages past the history store's watermark are read from
the log itself, so an append acknowledged before ``rehydrate`` is in the context even when
every projector is stopped.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, cast

import redis.asyncio as aioredis

from projectors.position import Position
from projectors.records import SOURCE_FIELD, record_from_log
from projectors.store import StoredMessage
from schemas.constants import ENTRY_FIELD, enriched_key, group_name, log_key
from schemas.errors import AmemError
from schemas.events import MessageAppended, SessionErased

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
class SessionLog:
    """A session's entries found by one scan of its partition."""

    messages: list[StoredMessage] = field(default_factory=list)
    """Log order."""
    erased_at: Position | None = None
    """The session's latest erase in the scanned range: anything at or before it is gone."""
    truncated: bool = False
    """The scan stopped at its entry limit before the end of the range."""


@dataclass(frozen=True, slots=True)
class LogView:
    """Every projector's watermark and the session's entries past the history store's."""

    watermarks: dict[str, Position | None]
    tail: SessionLog


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
    partition: int,
    projectors: Sequence[str],
    reads_enriched: Callable[[str], bool],
) -> dict[str, Position | None]:
    """Projector → log position up to which it has applied ``partition`` (None: nothing).

    At most three pipelined round trips whatever the number of projectors: the groups of
    both streams, the oldest pending entry of groups that have some, and for enriched-stream
    groups the log position their entry came from.
    """
    streams = {False: log_key(partition), True: enriched_key(partition)}
    pipe: Any = redis.pipeline(transaction=False)
    pipe.xinfo_groups(streams[False])
    pipe.xinfo_groups(streams[True])
    replies = await pipe.execute(raise_on_error=False)
    groups = {False: _groups(replies[0]), True: _groups(replies[1])}

    marks: dict[str, Position | None] = {}
    pending: list[str] = []
    for name in projectors:
        g = groups[reads_enriched(name)].get(group_name(name))
        if g is None:
            marks[name] = None
            continue
        last = g.get("last-delivered-id")
        position = Position.parse(last) if last else None
        marks[name] = None if position == Position(0, 0) else position
        if int(g.get("pending", 0)):
            pending.append(name)
    if pending:
        pipe = redis.pipeline(transaction=False)
        for name in pending:
            pipe.xpending(streams[reads_enriched(name)], group_name(name))
        for name, summary in zip(pending, await pipe.execute(), strict=True):
            if summary.get("min"):
                marks[name] = _before(Position.parse(summary["min"]))
    enriched = [n for n in projectors if reads_enriched(n) and marks[n] is not None]
    if enriched:
        pipe = redis.pipeline(transaction=False)
        for name in enriched:
            pipe.xrevrange(streams[True], str(marks[name]), "-", count=1)
        for name, rows in zip(enriched, await pipe.execute(), strict=True):
            source = rows[0][1].get(SOURCE_FIELD.encode()) if rows else None
            marks[name] = Position.parse(source) if source else None
    return marks


class _Scan:
    """Filters a partition's entries down to one session's (cheap byte test first)."""

    def __init__(self, tenant_id: str, session_id: str, partition: int) -> None:
        self.tenant_id = tenant_id
        self.session_id = session_id
        self.partition = partition
        # Valid ids never need JSON escaping except "/" (which a writer may send as "\/"):
        # only then is the byte pre-test unsafe.
        self._needle = None if "/" in session_id else session_id.encode()
        self.found = SessionLog()

    def offer(self, entry_id: bytes, fields: dict[bytes, bytes]) -> MessageAppended | None:
        raw = fields.get(ENTRY_FIELD.encode(), b"")
        if self._needle is not None and self._needle not in raw:
            return None
        try:
            record = record_from_log(self.partition, entry_id, fields)
        except AmemError:
            return None  # a poison entry: the projectors dead-letter it, context skips it
        event = record.event
        if event.tenant_id != self.tenant_id or event.session_id != self.session_id:
            return None
        if isinstance(event, SessionErased):
            if self.found.erased_at is None or record.position > self.found.erased_at:
                self.found.erased_at = record.position
            return None
        if isinstance(event, MessageAppended):
            stored = StoredMessage(
                message=event.message, partition=self.partition, position=record.position
            )
            self.found.messages.append(stored)
            return event
        return None


async def tail(
    redis: aioredis.Redis,
    tenant_id: str,
    session_id: str,
    partition: int,
    after: Position | None,
    *,
    max_entries: int,
) -> SessionLog:
    """The session's entries of ``partition`` after ``after`` (None: from the start)."""
    scan = _Scan(tenant_id, session_id, partition)
    start = "-" if after is None else f"({after}"
    seen = 0
    while seen < max_entries:
        rows = await _page(redis, log_key(partition), start, "+", reverse=False)
        for entry_id, fields in rows:
            scan.offer(entry_id, fields)
        seen += len(rows)
        if len(rows) < PAGE:
            break
        start = f"({rows[-1][0].decode()}"
    else:
        scan.found.truncated = True
    found = scan.found
    if found.erased_at is not None:
        erased = found.erased_at
        found.messages = [m for m in found.messages if m.position > erased]
    return found


async def latest(
    redis: aioredis.Redis,
    tenant_id: str,
    session_id: str,
    partition: int,
    *,
    limit: int,
    max_entries: int,
) -> SessionLog:
    """The session's last ``limit`` messages read backwards from the log's end (log order).

    The recent window when the history store cannot answer; stops at the session's erase.
    """
    scan = _Scan(tenant_id, session_id, partition)
    end = "+"
    seen = 0
    while seen < max_entries and len(scan.found.messages) < limit:
        rows = await _page(redis, log_key(partition), end, "-", reverse=True)
        for entry_id, fields in rows:
            scan.offer(entry_id, fields)
            if scan.found.erased_at is not None or len(scan.found.messages) >= limit:
                break
        seen += len(rows)
        if scan.found.erased_at is not None or len(rows) < PAGE:
            break
        end = f"({rows[-1][0].decode()}"
    found = scan.found
    found.truncated = seen >= max_entries and len(found.messages) < limit
    found.messages.reverse()
    return found
