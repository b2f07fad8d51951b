"""The worker runtime against the embedded redis-server and Postgres, in this process.

Stores that refuse or fail are the real Postgres adapter with a fault wrapped around it.
"""

from __future__ import annotations

import asyncio
import urllib.request
from collections.abc import Awaitable, Callable, Sequence

import pytest
import redis.asyncio as aioredis

from producer import Producer
from projectors.deadletter import list_dead_letters, retry_dead_letters
from projectors.errors import ApplyError
from projectors.lag import group_state
from projectors.metrics import PrometheusMiddleware
from projectors.projector import StoreProjector
from projectors.records import Record
from projectors.runtime import Worker
from projectors.settings import RuntimeSettings
from projectors.stores.postgres import PostgresProjectionStore
from rehydrator.verify import compare, log_digest
from schemas.constants import group_name, log_key
from schemas.events import Message
from stack.embedded.process import free_port
from stack.settings import Settings

FAST = RuntimeSettings(
    partitions=8,
    batch_size=64,
    max_wait_ms=50,
    reclaim_idle_ms=1500,
    reclaim_poll_ms=100,
    retry_initial_s=0.05,
    retry_max_s=0.2,
    graceful_timeout_s=5,
    lag_interval_s=0.2,
)


class FlakyPostgres(PostgresProjectionStore):
    """Refuses some message ids for good, and is unreachable for its first ``down`` batches."""

    def __init__(self, *, url: str, refuse: Sequence[str] = (), down: int = 0) -> None:
        super().__init__(url=url)
        self.refuse, self.down = set(refuse), down

    async def apply(self, records: Sequence[Record]) -> None:
        if self.down > 0:
            self.down -= 1
            raise ConnectionRefusedError("store down (test)")
        for r in records:
            if r.event.TYPE == "message.appended" and r.message.message.id in self.refuse:
                raise ApplyError(f"refusing {r.message.message.id} (test)")
        await super().apply(records)


@pytest.fixture
def log(redis_client: aioredis.Redis) -> aioredis.Redis:
    """The emptied log server: embedded redis, or Dragonfly with AMEM_TEST_DRAGONFLY_URL."""
    return redis_client


@pytest.fixture
async def clean_postgres(settings: Settings) -> None:
    store = PostgresProjectionStore(url=settings.require_postgres())
    await store.start()
    await store.reset()
    await store.close()


def messages(n: int, *, tenant: str = "t") -> list[Message]:
    return [
        Message(
            tenant_id=tenant, session_id=f"s{i % 7}", id=f"m{i}", role="user", content=f"hi {i}"
        )
        for i in range(n)
    ]


async def until(check: Callable[[], Awaitable[bool]]) -> None:
    """Poll: the condition lives in another process's writes, nothing here can signal it."""
    async with asyncio.timeout(90):
        while not await check():  # noqa: ASYNC110
            await asyncio.sleep(0.05)


async def caught_up(log: aioredis.Redis, projector: str) -> bool:
    states = [await group_state(log, projector, n, enriched=False) for n in range(8)]
    return all((s.lag or 0) == 0 and s.pending == 0 for s in states)


async def assert_equal_to_log(log: aioredis.Redis, store: PostgresProjectionStore) -> None:
    expected, _ = await log_digest(log, 8)
    verdict = compare("postgres", expected, await store.digest())
    assert verdict.ok, [str(d) for d in verdict.differences]


async def test_poison_entries_are_dead_lettered_with_their_reason(
    settings: Settings, log_url: str, log: aioredis.Redis, clean_postgres: None
) -> None:
    async with Producer.from_url(log_url) as producer:
        await producer.append_many(messages(50))
    poison = {
        b"not json": "event: is not valid JSON",
        b'{"type": "message.appended", "v": 9}': "v: 9 is not supported",
        b'{"type": "cosmic.ray", "v": 1}': "type: is unknown",
        b'{"type": "session.erased", "v": 1, "event_id": "e"}': "produced_at: is missing",
    }
    for raw in poison:
        await log.xadd(log_key(3), {"event": raw})
    await log.xadd(log_key(3), {"other": b"no event field"})
    store = PostgresProjectionStore(url=settings.require_postgres())
    worker = Worker(redis_url=log_url, projectors=[StoreProjector(store)], settings=FAST)
    async with worker.app:
        await until(lambda: caught_up(log, "postgres"))
        letters = await list_dead_letters(log, "postgres")
        await assert_equal_to_log(log, store)
    reasons = sorted(x.reason for x in letters)
    assert len(reasons) == 5
    for expected in poison.values():
        assert any(expected in r for r in reasons), (expected, reasons)
    assert any("event: is missing" in r for r in reasons)
    assert {x.fields.get(b"event") for x in letters} >= set(poison)


async def test_entries_of_a_dead_consumer_are_reclaimed(
    settings: Settings, log_url: str, log: aioredis.Redis, clean_postgres: None
) -> None:
    async with Producer.from_url(log_url) as producer:
        await producer.append_many(messages(40))
    group = group_name("postgres")
    for n in range(8):  # a consumer reads everything, then dies without acknowledging
        await log.xgroup_create(log_key(n), group, id="0", mkstream=True)
        await log.xreadgroup(group, "dead-consumer", {log_key(n): ">"})
    store = PostgresProjectionStore(url=settings.require_postgres())
    worker = Worker(redis_url=log_url, projectors=[StoreProjector(store)], settings=FAST)
    async with worker.app:
        await until(lambda: caught_up(log, "postgres"))
        await assert_equal_to_log(log, store)


async def test_a_refused_entry_is_dead_lettered_after_max_deliveries_and_the_rest_applied(
    settings: Settings, log_url: str, log: aioredis.Redis, clean_postgres: None
) -> None:
    async with Producer.from_url(log_url) as producer:
        await producer.append_many(messages(60))
    store = FlakyPostgres(url=settings.require_postgres(), refuse=["m13"])
    worker = Worker(redis_url=log_url, projectors=[StoreProjector(store)], settings=FAST)
    async with worker.app:
        await until(lambda: caught_up(log, "postgres"))
        digest = await store.digest()
    (letter,) = await list_dead_letters(log, "postgres")
    assert letter.deliveries == FAST.max_deliveries
    assert "refusing m13 (test)" in letter.reason
    held = {i for ids in digest.values() for i in ids}
    assert held == {f"m{i}" for i in range(60)} - {"m13"}

    # Fixed store: retry puts it back on the log and it is applied.
    assert await retry_dead_letters(log, "postgres") == 1
    fixed = PostgresProjectionStore(url=settings.require_postgres())
    worker = Worker(redis_url=log_url, projectors=[StoreProjector(fixed)], settings=FAST)
    async with worker.app:
        await until(lambda: caught_up(log, "postgres"))
        await assert_equal_to_log(log, fixed)
    assert await list_dead_letters(log, "postgres") == []


async def test_an_unavailable_store_is_waited_for_not_dead_lettered(
    settings: Settings, log_url: str, log: aioredis.Redis, clean_postgres: None
) -> None:
    async with Producer.from_url(log_url) as producer:
        await producer.append_many(messages(30))
    store = FlakyPostgres(url=settings.require_postgres(), down=12)
    worker = Worker(redis_url=log_url, projectors=[StoreProjector(store)], settings=FAST)
    async with worker.app:
        await until(lambda: caught_up(log, "postgres"))
        await assert_equal_to_log(log, store)
    assert store.down == 0
    assert await list_dead_letters(log, "postgres") == []


async def test_workers_serve_prometheus_metrics(
    settings: Settings, log_url: str, log: aioredis.Redis, clean_postgres: None
) -> None:
    async with Producer.from_url(log_url) as producer:
        await producer.append_many(messages(20))
    await log.xadd(log_key(0), {"event": b"poison"})
    port = free_port()
    metrics = PrometheusMiddleware(port=port)
    store = PostgresProjectionStore(url=settings.require_postgres())
    worker = Worker(
        redis_url=log_url,
        projectors=[StoreProjector(store)],
        settings=FAST,
        middleware=[metrics],
    )
    async with worker.app:
        await until(lambda: caught_up(log, "postgres"))
        await asyncio.sleep(2 * FAST.lag_interval_s)
        text = await asyncio.to_thread(_get, f"http://127.0.0.1:{port}/metrics")
    assert 'amem_applied_total{projector="postgres"} 20.0' in text
    assert 'amem_dead_lettered_total{projector="postgres"} 1.0' in text
    assert 'amem_batch_seconds_count{projector="postgres"}' in text
    assert 'amem_lag{partition="0",projector="postgres"} 0.0' in text


def _get(url: str) -> str:
    with urllib.request.urlopen(url, timeout=5) as response:
        body: bytes = response.read()
    return body.decode()
