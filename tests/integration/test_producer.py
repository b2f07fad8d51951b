"""The append path against the real embedded Redis."""

from __future__ import annotations

import asyncio
import os
import random

import pytest
import redis.asyncio as aioredis
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from logserver import connect
from logserver.nodes import on_every_node
from producer import (
    DurabilityError,
    PartitionMismatchError,
    Producer,
    ProducerSettings,
)
from schemas.codec import decode
from schemas.constants import ENTRY_FIELD, log_key
from schemas.errors import ValidationError
from schemas.events import Message, MessageAppended, SessionErased
from schemas.partitioning import partition_for
from stack.settings import Settings
from tests.conftest import DRAGONFLY_URL_VAR
from tests.strategies import messages

P = ProducerSettings().partitions


async def log_entries(client: aioredis.Redis, partitions: int = P) -> list[MessageAppended]:
    events = []
    for n in range(partitions):
        for _stream_id, fields in await client.xrange(log_key(n)) or []:
            assert fields is not None
            event = decode(fields[ENTRY_FIELD.encode()])
            assert isinstance(event, MessageAppended)
            events.append(event)
    return events


def _msg(i: int, session: str = "s") -> Message:
    return Message(tenant_id="t", session_id=session, id=f"m{i}", role="user", content=f"n{i}")


async def test_append_then_retry_is_one_entry(
    producer: Producer, redis_client: aioredis.Redis
) -> None:
    first = await producer.append(_msg(1))
    again = await producer.append(_msg(1))
    assert not first.duplicate
    assert again.duplicate
    assert again.stream_id == first.stream_id
    assert first.partition == partition_for("t", "s", P)
    assert len(await log_entries(redis_client)) == 1


async def test_same_message_id_in_other_session_or_tenant_is_distinct(
    producer: Producer, redis_client: aioredis.Redis
) -> None:
    base = _msg(1)
    other_session = Message(tenant_id="t", session_id="s2", id="m1", role="user", content="x")
    other_tenant = Message(tenant_id="t2", session_id="s", id="m1", role="user", content="x")
    results = await producer.append_many([base, other_session, other_tenant])
    assert [r.duplicate for r in results] == [False, False, False]
    assert len(await log_entries(redis_client)) == 3


async def test_append_many_keeps_input_order_and_session_order(
    producer: Producer, redis_client: aioredis.Redis
) -> None:
    batch = [_msg(i, session=f"s{i % 7}") for i in range(1000)]
    results = await producer.append_many(batch)
    assert [r.partition for r in results] == [partition_for("t", m.session_id, P) for m in batch]
    by_session: dict[str, list[str]] = {}
    for event in await log_entries(redis_client):
        by_session.setdefault(event.session_id, []).append(event.message.id)
    for session, ids in by_session.items():
        assert ids == [m.id for m in batch if m.session_id == session]


async def test_invalid_message_in_a_batch_appends_nothing(
    producer: Producer, redis_client: aioredis.Redis
) -> None:
    bad = Message(tenant_id="t", session_id="s", id="bad", role="wizard", content="x")
    with pytest.raises(ValidationError) as caught:
        await producer.append_many([_msg(1), bad])
    assert caught.value.field == "role"
    assert await log_entries(redis_client) == []


async def test_sixteen_racing_producers_with_retries_append_each_message_once(
    log_url: str, redis_client: aioredis.Redis
) -> None:
    batch = [_msg(i, session=f"s{i % 37}") for i in range(2000)]

    async def worker(seed: int) -> None:
        rng = random.Random(seed)
        async with Producer.from_url(log_url) as producer:
            order = batch[:]
            rng.shuffle(order)
            for start in range(0, len(order), 50):
                chunk = order[start : start + 50]
                for _attempt in range(rng.randint(1, 3)):  # a retry re-sends the same chunk
                    await producer.append_many(chunk)

    await asyncio.gather(*(worker(seed) for seed in range(16)))
    entries = await log_entries(redis_client)
    assert len(entries) == 2000
    assert {e.message.id for e in entries} == {m.id for m in batch}


async def test_partition_count_is_fixed_at_first_use(log_url: str, producer: Producer) -> None:
    await producer.append(_msg(1))
    other = Producer.from_url(log_url, ProducerSettings(partitions=P + 1))
    with pytest.raises(PartitionMismatchError, match=f"has {P} partitions"):
        async with other:
            pass
    await other.close()


async def test_fsync_on_a_server_without_confirmation_is_an_error(
    producer: Producer, redis_client: aioredis.Redis, log_url: str
) -> None:
    if log_url == os.environ.get(DRAGONFLY_URL_VAR):
        # Dragonfly has no AOF at all: any fsync append must be refused there.
        with pytest.raises(DurabilityError, match="cannot confirm fsync"):
            await producer.append(_msg(1), durability="fsync")
        return
    await on_every_node(redis_client, lambda node: node.config_set("appendonly", "no"))
    try:
        with pytest.raises(DurabilityError, match="cannot confirm fsync"):
            await producer.append(_msg(1), durability="fsync")
    finally:
        await on_every_node(redis_client, lambda node: node.config_set("appendonly", "yes"))


async def test_script_is_reloaded_after_a_script_flush(
    producer: Producer, redis_client: aioredis.Redis
) -> None:
    await producer.append(_msg(1))
    await redis_client.script_flush()
    assert not (await producer.append(_msg(2))).duplicate


@settings(
    max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    st.lists(
        messages, min_size=1, max_size=8, unique_by=lambda m: (m.tenant_id, m.session_id, m.id)
    )
)
def test_what_is_read_back_from_redis_is_what_was_appended(
    settings: Settings, batch: list[Message]
) -> None:
    async def run() -> list[MessageAppended]:
        client = connect(settings.require_redis())
        try:
            await client.flushdb()
            async with Producer.from_url(settings.require_redis()) as producer:
                await producer.append_many(batch)
            return await log_entries(client)
        finally:
            await client.aclose()

    read_back = asyncio.run(run())
    key = lambda m: (m.tenant_id, m.session_id, m.id)  # noqa: E731
    assert sorted((e.message for e in read_back), key=key) == sorted(batch, key=key)


async def test_session_erased_is_appended_once_per_event(
    producer: Producer, redis_client: aioredis.Redis
) -> None:
    erase = SessionErased(tenant_id="t", session_id="s", reason="user request")
    first, again = await producer.append_events([erase]), await producer.append_events([erase])
    assert (first[0].duplicate, again[0].duplicate) == (False, True)
    entries = await redis_client.xrange(log_key(first[0].partition)) or []
    assert [decode(fields[ENTRY_FIELD.encode()]) for _, fields in entries if fields] == [erase]
