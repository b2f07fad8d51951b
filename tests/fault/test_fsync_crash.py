"""``fsync`` durability: acknowledged appends survive SIGKILL of redis-server."""

from __future__ import annotations

import asyncio
import os
import signal
from pathlib import Path

import pytest
import redis.asyncio as aioredis

from producer import Producer, ProducerSettings
from schemas.constants import log_key
from schemas.events import Message
from stack.embedded.redis_server import EmbeddedRedis

pytestmark = pytest.mark.fault


async def _count(url: str, partitions: int) -> int:
    client = aioredis.Redis.from_url(url)
    try:
        return sum([await client.xlen(log_key(n)) for n in range(partitions)])
    finally:
        await client.aclose()


@pytest.mark.parametrize("batched", [False, True], ids=["single", "batched"])
async def test_acknowledged_fsync_appends_survive_sigkill(tmp_path: Path, batched: bool) -> None:
    server = EmbeddedRedis(tmp_path, appendfsync="always")
    record = server.start(None)
    settings = ProducerSettings(durability="fsync")
    acknowledged = 0
    try:
        async with Producer.from_url(record.url, settings) as producer:
            messages = [
                Message(tenant_id="t", session_id=f"s{i % 5}", id=f"m{i}", role="user", content="x")
                for i in range(600)
            ]
            if batched:
                for start in range(0, len(messages), 50):
                    acknowledged += len(await producer.append_many(messages[start : start + 50]))
            else:
                for message in messages[:300]:
                    await producer.append(message)
                    acknowledged += 1
            # Kill at once, right after the last acknowledgement: no chance of a clean flush.
            assert record.pid is not None
            os.kill(record.pid, signal.SIGKILL)
        await asyncio.sleep(0.1)
        assert not server.is_running(record)
        record = server.start(record)
        assert await _count(record.url, settings.partitions) == acknowledged
    finally:
        server.stop(record)


async def test_a_producer_reconnects_after_the_log_server_restarts(tmp_path: Path) -> None:
    server = EmbeddedRedis(tmp_path)
    record = server.start(None)
    try:
        async with Producer.from_url(record.url) as producer:
            first = await producer.append(
                Message(tenant_id="t", session_id="s", role="user", content="a")
            )
            assert record.pid is not None
            os.kill(record.pid, signal.SIGKILL)
            await asyncio.sleep(0.1)
            record = server.start(record)  # same port; empty script cache after the restart
            second = await producer.append(
                Message(tenant_id="t", session_id="s", role="user", content="b")
            )
        assert (first.duplicate, second.duplicate) == (False, False)
        assert second.stream_id > first.stream_id
        assert await _count(record.url, ProducerSettings().partitions) == 2
    finally:
        server.stop(record)
