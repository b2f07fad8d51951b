"""``verify``: prove each projection equals the function of the log it claims to be.

The log side replays every partition: per session, each valid message (the first position
of its id wins), minus everything at or before the session's last erase and each message
at or before its last redaction. Entries that fail
validation are not messages; they are in the dead-letter streams. Each projection's digest
(message id → content hash per session) must equal that exactly.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field

import redis.asyncio as aioredis

from projectors.position import Position
from projectors.records import (
    Digest,
    MessageAddress,
    Record,
    SessionKey,
    record_from_enriched,
    record_from_log,
)
from projectors.stores.archive import PostgresArchiveStore
from projectors.streams import pages
from schemas.constants import enriched_key, log_key
from schemas.digest import content_hash
from schemas.errors import ValidationError
from schemas.events import MessageAppended, MessageRedacted
from schemas.limits import DEFAULT_LIMITS, Limits

CHUNK = 2_000
StreamEntries = list[tuple[bytes, dict[bytes, bytes]]]


@dataclass(frozen=True, kw_only=True, slots=True)
class Difference:
    tenant_id: str
    session_id: str
    kind: str
    """``missing``, ``unexpected`` or ``altered``."""
    message_ids: tuple[str, ...]

    def __str__(self) -> str:
        ids = ", ".join(self.message_ids[:5])
        more = f" and {len(self.message_ids) - 5} more" if len(self.message_ids) > 5 else ""
        return (
            f"{self.tenant_id}/{self.session_id}: {len(self.message_ids)} {self.kind} ({ids}{more})"
        )


@dataclass(kw_only=True, slots=True)
class Verdict:
    projection: str
    sessions: int = 0
    messages: int = 0
    differences: list[Difference] = field(default_factory=list)
    error: str | None = None

    @property
    def ok(self) -> bool:
        return self.error is None and not self.differences

    def as_json(self) -> dict[str, object]:
        return {
            "projection": self.projection,
            "ok": self.ok,
            "sessions": self.sessions,
            "messages": self.messages,
            "error": self.error,
            "differences": [
                {
                    "tenant_id": d.tenant_id,
                    "session_id": d.session_id,
                    "kind": d.kind,
                    "message_ids": list(d.message_ids),
                }
                for d in self.differences
            ],
        }


class _Replay:
    """Folds records into the expected per-session state, in any order."""

    def __init__(self, tenant_id: str | None) -> None:
        self.tenant_id = tenant_id
        self.first: dict[SessionKey, dict[str, tuple[Position, str]]] = {}
        self.erased: dict[SessionKey, Position] = {}
        self.redacted: dict[MessageAddress, Position] = {}

    def add(self, record: Record) -> None:
        if self.tenant_id is not None and record.event.tenant_id != self.tenant_id:
            return
        if isinstance(record.event, MessageAppended):
            messages = self.first.setdefault(record.session, {})
            ident = record.event.message.id
            if ident not in messages or record.position < messages[ident][0]:
                messages[ident] = (record.position, content_hash(record.event.message.content))
        elif isinstance(record.event, MessageRedacted):
            if record.position > self.redacted.get(record.address, Position(-1, -1)):
                self.redacted[record.address] = record.position
        elif record.position > self.erased.get(record.session, Position(-1, -1)):
            self.erased[record.session] = record.position

    def digest(self) -> Digest:
        out: Digest = {}
        never = Position(-1, -1)
        for session, messages in self.first.items():
            erased = self.erased.get(session, never)
            kept = {
                i: h
                for i, (pos, h) in messages.items()
                if pos > erased and pos > self.redacted.get((*session, i), never)
            }
            if kept:
                out[session] = kept
        return out


async def _scan(redis: aioredis.Redis, key: str) -> StreamEntries:
    return [entry async for page in pages(redis, key, size=CHUNK) for entry in page]


async def log_digest(
    redis: aioredis.Redis,
    partitions: int,
    *,
    tenant_id: str | None = None,
    limits: Limits = DEFAULT_LIMITS,
    archive: PostgresArchiveStore | None = None,
) -> tuple[Digest, int]:
    """The expected state, and how many log entries are invalid (dead-letter material).

    With ``archive``, what it holds before each stream's first entry counts too: the
    whole log, trimmed or not.
    """
    replay, invalid = _Replay(tenant_id), 0
    for n in range(partitions):
        entries = await _scan(redis, log_key(n))
        for entry_id, fields in entries:
            try:
                replay.add(record_from_log(n, entry_id, fields, limits))
            except ValidationError:
                invalid += 1
        first = Position.parse(entries[0][0]) if entries else None
        await _add_archived(replay, archive, n, first, limits)
    return replay.digest(), invalid


async def _add_archived(
    replay: _Replay,
    archive: PostgresArchiveStore | None,
    partition: int,
    first: Position | None,
    limits: Limits,
) -> None:
    """Fold in what the archive holds before the stream's first entry, read after the
    stream: whatever was trimmed meanwhile was archived first, and folding is idempotent."""
    if archive is None:
        return
    async for page in archive.history(partition, before=first, limits=limits):
        for record in page:
            replay.add(record)


async def enriched_digest(
    redis: aioredis.Redis,
    partitions: int,
    *,
    tenant_id: str | None = None,
    limits: Limits = DEFAULT_LIMITS,
    archive: PostgresArchiveStore | None = None,
) -> Digest:
    """What the enricher has produced, folded like the log (with ``archive``, including what
    was trimmed from the enriched stream)."""
    replay = _Replay(tenant_id)
    for n in range(partitions):
        entries = await _scan(redis, enriched_key(n))
        for _, fields in entries:
            replay.add(record_from_enriched(n, fields, limits))
        # The enriched stream is in the order the enricher got to entries, not log order
        # (a reclaimed entry comes later): no position splits archive from stream, so
        # the whole archive is folded in (folding twice changes nothing).
        await _add_archived(replay, archive, n, None, limits)
    return replay.digest()


def compare(name: str, expected: Digest, actual: Digest) -> Verdict:
    verdict = Verdict(
        projection=name,
        sessions=len(actual),
        messages=sum(len(m) for m in actual.values()),
    )
    for session in sorted(expected.keys() | actual.keys()):
        want, have = expected.get(session, {}), actual.get(session, {})
        for kind, ids in (
            ("missing", want.keys() - have.keys()),
            ("unexpected", have.keys() - want.keys()),
            ("altered", {i for i in want.keys() & have.keys() if want[i] != have[i]}),
        ):
            if ids:
                verdict.differences.append(
                    Difference(
                        tenant_id=session[0],
                        session_id=session[1],
                        kind=kind,
                        message_ids=tuple(sorted(ids)),
                    )
                )
    return verdict


DigestSource = Callable[[str | None], Awaitable[Digest]]


async def verify(
    expected: Digest,
    sources: Mapping[str, DigestSource],
    *,
    tenant_id: str | None = None,
) -> list[Verdict]:
    """Compare each projection's digest with the expected one; a failing read is reported."""
    verdicts = []
    for name, source in sources.items():
        try:
            actual = await source(tenant_id)
        except Exception as exc:  # one unreachable store must not hide the others' verdicts
            verdicts.append(Verdict(projection=name, error=f"{type(exc).__name__}: {exc}"))
            continue
        verdicts.append(compare(name, expected, actual))
    return verdicts
