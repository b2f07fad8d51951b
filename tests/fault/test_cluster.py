"""The log on an embedded Redis Cluster of 3 masters with a replica each, under live traffic
from concurrent producers, while a master or worker processes are SIGKILLed.

Every append is made with the ``fsync`` durability (AOF fsync on the master, and a replica
holds it); the producers retry what fails. At the end the log holds each message exactly
once, every acknowledged append among them, and ``verify`` proves every projection equal
to the log.
"""

from __future__ import annotations

import asyncio
import os
import random
import signal
import time
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path

import pytest

from logserver import connect
from logserver.nodes import topology
from producer import DurabilityError, LogUnavailableError, Producer, ProducerSettings
from projectors.streams import pages
from schemas.codec import decode
from schemas.constants import ENTRY_FIELD, log_key
from schemas.events import Message, MessageAppended
from stack.embedded.redis_cluster import EmbeddedRedisCluster
from stack.embedded.state import ServiceRecord
from stack.emptying import reset_everything
from stack.settings import Settings
from tests.fault.harness import Workers, bounded, env_for, finish, traffic

pytestmark = [pytest.mark.fault, pytest.mark.timeout(900)]

MESSAGES = 20_000
PRODUCERS = 8
CHUNK = 100
"""An fsync append waits for the next AOF fsync (every second): many at once keep the rate."""
PER_SECOND = 400
"""Total append rate: the flow lasts ~50 s, long enough to break things in the middle."""
NODE_TIMEOUT_MS = 2000
FLOWING_S = 600


@dataclass
class Cluster:
    server: EmbeddedRedisCluster
    record: ServiceRecord


@dataclass
class Acknowledged:
    ids: set[str] = field(default_factory=set)
    retries: int = 0
    """Appends that failed and were sent again."""
    longest_s: float = 0.0
    """The longest wait for one append (a failover's, when a master dies)."""


@pytest.fixture
async def cluster(tmp_path: Path) -> AsyncIterator[Cluster]:
    server = EmbeddedRedisCluster(
        tmp_path / "home", masters=3, replicas=1, node_timeout_ms=NODE_TIMEOUT_MS
    )
    record = server.start(None)
    held = Cluster(server, record)
    try:
        yield held
    finally:
        server.stop(held.record)


@pytest.fixture
async def workers(
    cluster: Cluster, stack_env: dict[str, str], tmp_path: Path
) -> AsyncIterator[Workers]:
    env = {**env_for(stack_env), "AMEM_REDIS_URL": cluster.record.url}
    await reset_everything(Settings.from_env(env))
    pool = Workers(env, tmp_path)
    try:
        yield pool
    finally:
        pool.stop_all()


async def produce(url: str, messages: Sequence[Message], acked: Acknowledged) -> None:
    """Append in chunks at this producer's share of the rate, each with fsync, retrying
    a chunk until it is acknowledged (a retry appends nothing twice)."""
    settings = ProducerSettings(durability="fsync", failover_wait_s=5)
    per_second = PER_SECOND / PRODUCERS
    async with Producer.from_url(url, settings) as producer:
        for start in range(0, len(messages), CHUNK):
            chunk = messages[start : start + CHUNK]
            while True:
                began = time.monotonic()
                try:
                    await producer.append_many(chunk)
                    break
                except (LogUnavailableError, DurabilityError):
                    acked.retries += 1
                    await asyncio.sleep(0.2)
                finally:
                    acked.longest_s = max(acked.longest_s, time.monotonic() - began)
            acked.ids.update(m.id for m in chunk)
            await asyncio.sleep(len(chunk) / per_second)


def flowing(url: str, acked: Acknowledged) -> asyncio.Task[list[None]]:
    messages = traffic(MESSAGES)
    shares = [messages[i::PRODUCERS] for i in range(PRODUCERS)]
    return asyncio.ensure_future(asyncio.gather(*(produce(url, s, acked) for s in shares)))


async def log_message_ids(url: str, partitions: int) -> list[str]:
    client = connect(url)
    try:
        ids = []
        for n in range(partitions):
            async for page in pages(client, log_key(n)):
                for _, fields in page:
                    event = decode(fields[ENTRY_FIELD.encode()])
                    assert isinstance(event, MessageAppended)
                    ids.append(event.message.id)
        return ids
    finally:
        await client.aclose()


async def assert_log_exact(workers: Workers, acked: Acknowledged) -> None:
    settings = workers.settings
    ids = await log_message_ids(settings.require_redis(), settings.producer.partitions)
    assert len(ids) == len(set(ids)) == MESSAGES, (len(ids), len(set(ids)))
    assert acked.ids <= set(ids)


async def test_a_master_sigkilled_mid_flow_fails_over_and_loses_nothing_acknowledged(
    cluster: Cluster, workers: Workers
) -> None:
    url = cluster.record.url
    workers.start_all()
    await workers.all_running()
    acked = Acknowledged()
    producing = flowing(url, acked)
    async with bounded("flowing through a failover", FLOWING_S, workers):
        while len(acked.ids) < MESSAGES // 3:  # noqa: ASYNC110 (the producers set no event)
            await asyncio.sleep(0.1)
        victim = next(n for n in cluster.record.nodes[:3] if n.pid is not None)
        os.kill(victim.pid, signal.SIGKILL)  # type: ignore[arg-type]
        before = len(acked.ids)
        await until_replica_promoted(url, f"127.0.0.1:{victim.port}")
        # The killed node comes back from its AOF and rejoins as a replica of its
        # successor, as an operator would bring it back.
        nodes = cluster.record.nodes
        dead = tuple(replace(n, pid=None) if n.port == victim.port else n for n in nodes)
        cluster.record = cluster.server.start(replace(cluster.record, nodes=dead))
        await producing
    assert before < MESSAGES, "the master died after the flow, not during it"
    # Appends to the dead master's partitions waited for its replica to take over (inside
    # the producer, which resends after a failover, or by the caller's retry).
    assert acked.longest_s > NODE_TIMEOUT_MS / 1000, acked.longest_s
    await finish(workers, expected_messages=MESSAGES)
    await assert_log_exact(workers, acked)


async def until_replica_promoted(url: str, dead: str) -> None:
    client = connect(url)
    try:
        while True:
            try:
                nodes = await topology(client)
                masters = [n for n in nodes if n.role == "master" and n.up and n.slots != "-"]
                if len(masters) == 3 and all(n.address != dead for n in masters):
                    return
            except Exception:  # the node asked may be the dead one: ask again
                pass
            await asyncio.sleep(0.2)
    finally:
        await client.aclose()


async def test_workers_sigkilled_at_random_instants_on_a_cluster_lose_nothing(
    cluster: Cluster, workers: Workers
) -> None:
    url = cluster.record.url
    workers.start_all()
    acked = Acknowledged()
    producing = flowing(url, acked)
    rng = random.Random(13)
    async with bounded("killing workers under traffic", FLOWING_S, workers):
        while workers.kills < 10 or not producing.done():
            victim = rng.randrange(len(workers.procs))
            await workers.running(victim)
            await asyncio.sleep(rng.uniform(0.2, 3.0))
            workers.kill(victim)
            workers.start(victim)
        await producing
    await finish(workers, expected_messages=MESSAGES)
    await assert_log_exact(workers, acked)
