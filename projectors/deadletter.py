"""Dead-letter streams: ``amem:dlq:<projector>`` holds each refused entry, verbatim, and why.

A dead letter keeps the source stream, the entry id and every original field (prefixed
``entry.``), so ``retry`` can put back exactly what was refused.

Dead-lettering is at least once: an entry reclaimed while its first consumer is still
handling it (a stalled worker) can be written twice. Reading collapses copies of one
``(stream, entry id)``, so operators see, and retry, each refused entry once.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import cast

import redis.asyncio as aioredis
from redis.typing import EncodableT, FieldT

from schemas.constants import dlq_key, errors_key, group_name

ENTRY_PREFIX = b"entry."
StreamEntries = list[tuple[bytes, dict[bytes, bytes]]]


@dataclass(frozen=True, slots=True)
class Refused:
    entry_id: bytes
    fields: Mapping[bytes, bytes]
    reason: str


@dataclass(frozen=True, kw_only=True, slots=True)
class DeadLetter:
    id: str
    projector: str
    stream: str
    entry_id: str
    reason: str
    deliveries: int
    failed_at: str
    fields: dict[bytes, bytes]


def error_field(stream: str, entry_id: bytes) -> str:
    return f"{stream}|{entry_id.decode()}"


async def dead_letter(
    redis: aioredis.Redis,
    projector: str,
    stream: str,
    refused: Sequence[Refused],
    *,
    deliveries: int = 1,
) -> None:
    """Copy the entries to the projector's DLQ, then acknowledge them.

    Not one transaction: the DLQ key and the stream may live in different cluster slots. A
    crash in between leaves the entry pending, so it is dead-lettered again: a duplicate
    dead letter, never a lost entry.
    """
    now = datetime.now(UTC).isoformat()
    async with redis.pipeline(transaction=False) as pipe:
        for item in refused:
            letter: dict[FieldT, EncodableT] = {
                "projector": projector,
                "stream": stream,
                "entry_id": item.entry_id,
                "reason": item.reason,
                "deliveries": deliveries,
                "failed_at": now,
            }
            letter.update({ENTRY_PREFIX + k: v for k, v in item.fields.items()})
            pipe.xadd(dlq_key(projector), letter)
        pipe.xack(stream, group_name(projector), *(item.entry_id for item in refused))
        pipe.hdel(errors_key(projector), *(error_field(stream, r.entry_id) for r in refused))
        await pipe.execute()


async def list_dead_letters(
    redis: aioredis.Redis, projector: str, *, count: int = 100
) -> list[DeadLetter]:
    letters: dict[tuple[str, str], DeadLetter] = {}
    start = "-"
    while len(letters) < count:
        chunk = cast(StreamEntries, await redis.xrange(dlq_key(projector), start, count=count))
        for entry_id, fields in chunk:
            letter = _letter(projector, entry_id, fields)
            letters.setdefault((letter.stream, letter.entry_id), letter)
        if len(chunk) < count:
            break
        start = "(" + chunk[-1][0].decode()
    return list(letters.values())[:count]


def _letter(projector: str, entry_id: bytes, fields: Mapping[bytes, bytes]) -> DeadLetter:
    def text(name: str) -> str:
        return fields.get(name.encode(), b"").decode(errors="replace")

    return DeadLetter(
        id=entry_id.decode(),
        projector=projector,
        stream=text("stream"),
        entry_id=text("entry_id"),
        reason=text("reason"),
        deliveries=int(text("deliveries") or 1),
        failed_at=text("failed_at"),
        fields={k[len(ENTRY_PREFIX) :]: v for k, v in fields.items() if k.startswith(ENTRY_PREFIX)},
    )


async def retry_dead_letters(
    redis: aioredis.Redis, projector: str, ids: Sequence[str] | None = None
) -> int:
    """Append each dead letter's original entry to the tail of its stream, then drop it.

    Every consumer group of that stream sees the entry again; the projections are
    idempotent, so only the one that refused it changes.
    """
    entries = cast(StreamEntries, await redis.xrange(dlq_key(projector)))
    letters = [_letter(projector, entry_id, fields) for entry_id, fields in entries]
    if ids is not None:
        wanted = {(x.stream, x.entry_id) for x in letters if x.id in set(ids)}
        letters = [x for x in letters if (x.stream, x.entry_id) in wanted]
    copies: dict[tuple[str, str], list[DeadLetter]] = {}
    for letter in letters:
        copies.setdefault((letter.stream, letter.entry_id), []).append(letter)
    for same in copies.values():
        async with redis.pipeline(transaction=False) as pipe:
            pipe.xadd(same[0].stream, cast(dict[FieldT, EncodableT], same[0].fields))
            pipe.xdel(dlq_key(projector), *(x.id for x in same))
            await pipe.execute()
    return len(copies)
