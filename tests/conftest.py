"""Shared fixtures: the real embedded stack under a temporary AMEM_HOME, on free ports.

Nothing here touches a user's ``./.amem``; the stack is stopped when the session ends.
"""

from __future__ import annotations

import os
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
import redis.asyncio as aioredis

from logserver import connect
from producer import Producer, ProducerSettings
from stack.embedded import control
from stack.embedded.redis_cluster import EmbeddedRedisCluster
from stack.settings import Settings

REPO = Path(__file__).resolve().parents[1]
LOCOMO = REPO.parent / "shared" / "data" / "locomo-dev.json"


@pytest.fixture(scope="session")
def amem_home(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("amem-home")


@pytest.fixture(scope="session")
def stack_env(amem_home: Path) -> Iterator[dict[str, str]]:
    """Environment that finds the test stack through AMEM_HOME alone."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("AMEM_")}
    env["AMEM_HOME"] = str(amem_home)
    settings = Settings.from_env(env)
    control.up(settings)
    try:
        yield env
    finally:
        control.down(settings)


@pytest.fixture(scope="session")
def settings(stack_env: dict[str, str]) -> Settings:
    return Settings.from_env(stack_env)


@pytest.fixture(scope="session")
def cluster_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """An embedded Redis Cluster of 3 masters beside the stack's single server (the same
    Postgres and MongoDB serve both)."""
    cluster = EmbeddedRedisCluster(tmp_path_factory.mktemp("cluster"), masters=3)
    record = cluster.start(None)
    _cluster_pids[record.url] = [node.pid for node in record.nodes if node.pid is not None]
    try:
        yield record.url
    finally:
        cluster.stop(record)


_cluster_pids: dict[str, list[int]] = {}


def cluster_pids(url: str) -> list[int]:
    """The redis-server processes of the test cluster at ``url``."""
    return _cluster_pids[url]


DRAGONFLY_URL_VAR = "AMEM_TEST_DRAGONFLY_URL"
LOG_SERVERS = ["embedded-redis", "cluster", "dragonfly"]


@pytest.fixture(params=LOG_SERVERS)
def log_url(request: pytest.FixtureRequest, settings: Settings) -> str:
    """Each log server the producer must work on; Dragonfly only where one is reachable."""
    if request.param == "embedded-redis":
        return settings.require_redis()
    if request.param == "cluster":
        cluster: str = request.getfixturevalue("cluster_url")
        return cluster
    dragonfly = os.environ.get(DRAGONFLY_URL_VAR)
    if not dragonfly:
        pytest.skip(
            f"{DRAGONFLY_URL_VAR} is not set: Dragonfly cannot run here (compose.yaml has it)"
        )
    return dragonfly


@pytest.fixture
async def redis_client(log_url: str) -> AsyncIterator[aioredis.Redis]:
    """A client on a clean log: every test starts from an empty database."""
    client = connect(log_url)
    await client.flushdb()  # on a cluster: on every master
    try:
        yield client
    finally:
        await client.aclose()


@pytest.fixture
async def producer(log_url: str, redis_client: aioredis.Redis) -> AsyncIterator[Producer]:
    async with Producer.from_url(log_url, ProducerSettings()) as p:
        yield p
