"""Trimming and purging on each log server (the embedded Redis 8.2, and Dragonfly when
``AMEM_TEST_DRAGONFLY_URL`` is set): the bounds, and what a purge takes and leaves.

Groups are driven by hand (``XREADGROUP``/``XACK``) and the enriched stream is written as
the enricher writes it, so each bound can be put exactly where a test wants it.
"""

from __future__ import annotations

from typing import cast

import numpy as np
import redis.asyncio as aioredis

from producer import Producer
from projectors.deadletter import Refused, dead_letter
from projectors.enricher import enriched_entry
from projectors.position import Position
from projectors.records import VECTOR_DTYPE
from projectors.retention import PartitionTrim, RetainWindow, trim
from rehydrator.erase import Erasure, purge, waiting_for
from schemas.constants import (
    ARCHIVE,
    ENRICHER,
    dedup_key,
    enriched_key,
    group_name,
    log_key,
)
from schemas.events import Message, SessionErased
from schemas.partitioning import partition_for

P = 8
Entries = list[tuple[bytes, dict[bytes, bytes]]]
VECTOR = np.zeros(384, dtype=VECTOR_DTYPE).tobytes()


async def append(
    producer: Producer, session: str, n: int, text: str = "hello", *, first: int = 0
) -> int:
    messages = [
        Message(tenant_id="t", session_id=session, id=f"{session}-{i}", role="user", content=text)
        for i in range(first, first + n)
    ]
    results = await producer.append_many(messages)
    return results[0].partition


async def enrich(
    redis: aioredis.Redis, partition: int, *, late: int | None = None
) -> dict[bytes, bytes]:
    """Forward every log entry to the enriched stream as the enricher does (it acks them
    all), the ``late``-th last (as an entry reclaimed from a killed worker); returns log id
    → enriched id."""
    await redis.xgroup_create(log_key(partition), group_name(ENRICHER), id="0", mkstream=True)
    entries = cast(Entries, await redis.xrange(log_key(partition)))
    ids: dict[bytes, bytes] = {}
    forwarded = list(entries)
    if late is not None:
        forwarded.append(forwarded.pop(late))
    for entry_id, fields in forwarded:
        raw = fields[b"event"]
        message = (VECTOR, 1, "hello", "m") if b"message.appended" in raw else None
        ids[entry_id] = cast(
            bytes, await redis.xadd(enriched_key(partition), enriched_entry(raw, entry_id, message))
        )
    await consume(redis, log_key(partition), ENRICHER, len(entries), ack=len(entries))
    return ids


async def consume(redis: aioredis.Redis, stream: str, projector: str, read: int, ack: int) -> None:
    """The group reads ``read`` entries and acknowledges the first ``ack`` of them."""
    group = group_name(projector)
    try:
        await redis.xgroup_create(stream, group, id="0", mkstream=True)
    except aioredis.ResponseError as exc:
        if "BUSYGROUP" not in str(exc):
            raise
    if read == 0:
        return
    reply = cast(
        list[tuple[bytes, Entries]], await redis.xreadgroup(group, "c", {stream: ">"}, count=read)
    )
    ids = [entry_id for _, entries in reply for entry_id, _ in entries]
    if ack:
        await redis.xack(stream, group, *ids[:ack])


async def trimmed(
    redis: aioredis.Redis, partition: int, window: RetainWindow, *, dry_run: bool = False
) -> PartitionTrim:
    (done,) = [p for p in await trim(redis, P, window, dry_run=dry_run) if p.partition == partition]
    return done


async def ids_of(redis: aioredis.Redis, stream: str) -> list[bytes]:
    return [i for i, _ in cast(Entries, await redis.xrange(stream))]


async def test_a_trim_keeps_what_a_group_or_the_archive_lacks_and_the_window(
    redis_client: aioredis.Redis, producer: Producer
) -> None:
    partition = await append(producer, "s", 100)
    log, enriched = log_key(partition), enriched_key(partition)
    await enrich(redis_client, partition)
    await consume(redis_client, log, "postgres", read=60, ack=50)  # 10 pending from the 51st
    await consume(redis_client, enriched, ARCHIVE, read=80, ack=80)  # 20 not archived
    logged, forwarded = await ids_of(redis_client, log), await ids_of(redis_client, enriched)

    window = RetainWindow(count=10)
    (dry,) = [
        p for p in await trim(redis_client, P, window, dry_run=True) if p.partition == partition
    ]
    assert await ids_of(redis_client, log) == logged  # a dry run deletes nothing
    (done,) = [p for p in await trim(redis_client, P, window) if p.partition == partition]
    for report in (dry, done):
        assert (report.log.held_by, report.log.trimmed, report.log.hot) == ("amem:postgres", 50, 50)
        assert (report.enriched.held_by, report.enriched.trimmed) == ("amem:archive", 80)
    assert await ids_of(redis_client, log) == logged[50:]
    assert await ids_of(redis_client, enriched) == forwarded[80:]

    # Everything acknowledged and archived: now the window holds.
    await consume(redis_client, log, "postgres", read=40, ack=0)
    pending = await redis_client.xpending_range(log, group_name("postgres"), "-", "+", 100)
    await redis_client.xack(log, group_name("postgres"), *(p["message_id"] for p in pending))
    await consume(redis_client, enriched, ARCHIVE, read=20, ack=20)
    done = await trimmed(redis_client, partition, window)
    assert (done.log.held_by, done.log.hot) == ("window", 10)
    assert (done.enriched.held_by, done.enriched.hot) == ("window", 10)
    assert await ids_of(redis_client, log) == logged[90:]


async def test_the_archive_bounds_the_log_by_what_it_has_not_stored(
    redis_client: aioredis.Redis, producer: Producer
) -> None:
    partition = await append(producer, "s", 30)
    await enrich(redis_client, partition)
    await consume(redis_client, enriched_key(partition), ARCHIVE, read=12, ack=12)
    logged = await ids_of(redis_client, log_key(partition))
    done = await trimmed(redis_client, partition, RetainWindow(count=0))
    assert done.log.held_by == "amem:archive"
    assert await ids_of(redis_client, log_key(partition)) == logged[12:]


async def test_an_entry_enriched_late_holds_the_log_until_archived(
    redis_client: aioredis.Redis, producer: Producer
) -> None:
    """The enriched stream is not in log order: the log entry of one enriched after the
    others stays until the archive has it (else a rebuild replaying meanwhile, from the
    stream and the archive, would miss it)."""
    partition = await append(producer, "s", 30)
    await enrich(redis_client, partition, late=5)
    await consume(redis_client, enriched_key(partition), ARCHIVE, read=12, ack=12)
    logged = await ids_of(redis_client, log_key(partition))
    done = await trimmed(redis_client, partition, RetainWindow(count=0))
    assert done.log.held_by == "amem:archive"
    assert await ids_of(redis_client, log_key(partition)) == logged[5:]
    await consume(redis_client, enriched_key(partition), ARCHIVE, read=18, ack=18)
    await trimmed(redis_client, partition, RetainWindow(count=0))
    assert await ids_of(redis_client, log_key(partition)) == []


async def test_without_the_archive_group_nothing_is_trimmed(
    redis_client: aioredis.Redis, producer: Producer
) -> None:
    partition = await append(producer, "s", 20)
    await enrich(redis_client, partition)
    done = await trimmed(redis_client, partition, RetainWindow(count=0))
    assert (done.log.bound, done.log.held_by) == (None, "no group amem:archive")
    assert (done.enriched.bound, done.enriched.held_by) == (None, "no group amem:archive")
    assert await redis_client.xlen(log_key(partition)) == 20


async def test_an_age_window_keeps_what_is_younger(
    redis_client: aioredis.Redis, producer: Producer
) -> None:
    partition = await append(producer, "s", 10)
    await enrich(redis_client, partition)
    await consume(redis_client, enriched_key(partition), ARCHIVE, read=10, ack=10)
    first = Position.parse((await ids_of(redis_client, log_key(partition)))[0])
    window = RetainWindow(age_s=60)
    kept = await trim(redis_client, P, window, now_ms=first.ms + 59_000)
    assert sum(p.log.trimmed + p.enriched.trimmed for p in kept) == 0
    gone = await trim(redis_client, P, window, now_ms=first.ms + 3_600_000)
    assert sum(p.log.trimmed for p in gone) == 10


async def test_a_purge_takes_the_erased_session_and_leaves_the_rest(
    redis_client: aioredis.Redis, producer: Producer
) -> None:
    text = "RUBY-LANTERN-7"
    # Two sessions of one partition: the erased one and one that stays.
    partition = partition_for("t", "gone", P)
    stays = next(f"o{i}" for i in range(1000) if partition_for("t", f"o{i}", P) == partition)
    await append(producer, "gone", 5, text)
    await append(producer, stays, 5)
    (erase,) = await producer.append_events([SessionErased(tenant_id="t", session_id="gone")])
    await append(producer, "gone", 2, "after the erase", first=5)  # its new life stays
    log, enriched = log_key(partition), enriched_key(partition)
    forwarded = await enrich(redis_client, partition)
    refused = cast(Entries, await redis_client.xrange(log, count=2))
    await dead_letter(redis_client, "postgres", log, [Refused(i, f, "refused") for i, f in refused])
    await consume(redis_client, enriched, ARCHIVE, read=0, ack=0)
    at = Position.parse(erase.stream_id)
    erasure = Erasure(
        tenant_id="t",
        session_id="gone",
        partition=partition,
        position=at,
        enriched_id=Position.parse(forwarded[erase.stream_id.encode()]),
    )
    assert await waiting_for(redis_client, erasure) == [f"amem:archive on {enriched}"]
    await consume(redis_client, enriched, ARCHIVE, read=100, ack=100)
    assert await waiting_for(redis_client, erasure) == []

    found = await purge(redis_client, erasure, delete=False)
    assert found.places == {"log": 5, "enriched stream": 5, "dead letters": 2, "dedup keys": 5}
    await purge(redis_client, erasure)
    assert (await purge(redis_client, erasure, delete=False)).total == 0
    for stream in (log, enriched):
        left = cast(Entries, await redis_client.xrange(stream))
        assert not any(text.encode() in v for _, f in left for v in f.values())
        assert len(left) == 5 + 1 + 2  # the other session, the erase, the session's new life
    assert await redis_client.xlen("amem:dlq:postgres") == 0
    assert await redis_client.exists(dedup_key(partition, "msg", "t", stays, f"{stays}-0"))
    assert not await redis_client.exists(dedup_key(partition, "msg", "t", "gone", "gone-0"))
    assert await redis_client.exists(dedup_key(partition, "msg", "t", "gone", "gone-5"))


async def test_a_purge_of_a_redaction_takes_that_message_and_leaves_the_rest(
    redis_client: aioredis.Redis, producer: Producer
) -> None:
    secret = "OPAL-HARBOUR-3"
    partition = await append(producer, "kept", 4)
    await producer.append_many(
        [Message(tenant_id="t", session_id="kept", id="told", role="user", content=secret)]
    )
    redacted = await producer.redact("t", "kept", "told")
    await append(producer, "kept", 2, first=4)
    log, enriched = log_key(partition), enriched_key(partition)
    forwarded = await enrich(redis_client, partition)
    told = [
        (i, f)
        for i, f in cast(Entries, await redis_client.xrange(log))
        if secret.encode() in f[b"event"]
    ]
    await dead_letter(redis_client, "postgres", log, [Refused(*told[0], "refused")])
    await consume(redis_client, enriched, ARCHIVE, read=100, ack=100)
    erasure = Erasure(
        tenant_id="t",
        session_id="kept",
        partition=partition,
        position=Position.parse(redacted.stream_id),
        enriched_id=Position.parse(forwarded[redacted.stream_id.encode()]),
        message_id="told",
    )
    assert await waiting_for(redis_client, erasure) == []
    await purge(redis_client, erasure)
    for stream in (log, enriched):
        left = cast(Entries, await redis_client.xrange(stream))
        assert not any(secret.encode() in v for _, f in left for v in f.values())
        assert len(left) == 4 + 1 + 2  # the rest of the session and the redaction itself
    assert await redis_client.xlen("amem:dlq:postgres") == 0
    assert not await redis_client.exists(dedup_key(partition, "msg", "t", "kept", "told"))
    assert await redis_client.exists(dedup_key(partition, "msg", "t", "kept", "kept-0"))
