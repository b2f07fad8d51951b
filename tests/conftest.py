"""Shared fixtures: the real embedded stack under a temporary AMEM_HOME, on free ports.

Nothing here touches a user's ``./.amem``; the stack is stopped when the session ends.
"""

from __future__ import annotations

import os
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
import redis.asyncio as aioredis

from producer import Producer, ProducerSettings
from stack.embedded import control
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


DRAGONFLY_URL_VAR = "AMEM_TEST_DRAGONFLY_URL"


@pytest.fixture(params=["embedded-redis", "dragonfly"])
def log_url(request: pytest.FixtureRequest, settings: Settings) -> str:
    """Each log server the producer must work on; Dragonfly only where one is reachable."""
    if request.param == "embedded-redis":
        return settings.require_redis()
    url = os.environ.get(DRAGONFLY_URL_VAR)
    if not url:
        pytest.skip(
            f"{DRAGONFLY_URL_VAR} is not set: Dragonfly cannot run here (compose.yaml has it)"
        )
    return url


@pytest.fixture
async def redis_client(log_url: str) -> AsyncIterator[aioredis.Redis]:
    """A client on a clean log: every test starts from an empty database."""
    client = aioredis.Redis.from_url(log_url)
    await client.flushdb()
    try:
        yield client
    finally:
        await client.aclose()


@pytest.fixture
async def producer(log_url: str, redis_client: aioredis.Redis) -> AsyncIterator[Producer]:
    async with Producer.from_url(log_url, ProducerSettings()) as p:
        yield p
