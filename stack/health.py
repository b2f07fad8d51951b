"""Health of the log server and the stores, whether embedded or external."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import asdict, dataclass
from typing import Any

import asyncpg
from pymongo import AsyncMongoClient

from logserver import connect, is_cluster
from logserver.nodes import NodeState, topology
from projectors.enricher import embedded_total
from projectors.generations import Registry, read_registry
from projectors.lag import GroupState, dlq_size, group_states
from projectors.position import Position
from projectors.retention import LogState, log_state
from schemas.constants import ARCHIVE, META_KEY, META_PARTITIONS_FIELD
from stack.projections import build_store, reads_enriched
from stack.settings import Settings

TIMEOUT_S = 3.0


@dataclass(frozen=True, slots=True)
class Health:
    name: str
    url: str | None
    ok: bool
    detail: str
    latency_ms: float | None = None

    def as_json(self) -> dict[str, Any]:
        return asdict(self)


async def _redis(url: str) -> str:
    client = connect(url, socket_timeout=TIMEOUT_S)
    try:
        if not is_cluster(client):
            info = await client.info("server")
            return f"redis {info['redis_version']}"
        nodes = await topology(client)
        masters = [n for n in nodes if n.role == "master" and n.up]
        down = [n.address for n in nodes if not n.up]
        detail = f"cluster: {len(masters)} masters, {len(nodes) - len(masters)} other nodes"
        if down:
            detail += f"; down: {', '.join(down)}"
        if any(n.slots == "-" for n in masters) or not masters:
            raise ConnectionError(detail + "; not every master serves slots")
        return detail
    finally:
        await client.aclose()


async def _postgres(url: str) -> str:
    conn = await asyncpg.connect(url, timeout=TIMEOUT_S)
    try:
        version: str = await conn.fetchval("SHOW server_version")
        return f"postgres {version}"
    finally:
        await conn.close()


async def _mongo(url: str) -> str:
    client: AsyncMongoClient[dict[str, Any]] = AsyncMongoClient(
        url, serverSelectionTimeoutMS=int(TIMEOUT_S * 1000)
    )
    try:
        hello = await client.admin.command("hello")
        return f"mongodb wire v{hello.get('maxWireVersion', '?')}"
    finally:
        await client.close()


_CHECKS: dict[str, Callable[[str], Awaitable[str]]] = {
    "redis": _redis,
    "postgres": _postgres,
    "mongo": _mongo,
}


async def _check(name: str, url: str | None) -> Health:
    if url is None:
        return Health(name, None, False, "not configured (run `amem up` or set its AMEM_*_URL)")
    started = time.perf_counter()
    try:
        detail = await asyncio.wait_for(_CHECKS[name](url), TIMEOUT_S + 1)
    except Exception as exc:  # any failure is the answer: the service is not healthy
        return Health(name, url, False, f"{type(exc).__name__}: {exc}".strip())
    return Health(name, url, True, detail, round((time.perf_counter() - started) * 1e3, 2))


async def check_all(settings: Settings) -> list[Health]:
    urls = {
        "redis": settings.redis_url,
        "postgres": settings.postgres_url,
        "mongo": settings.mongo_url,
    }
    return list(await asyncio.gather(*(_check(name, url) for name, url in urls.items())))


@dataclass(frozen=True, slots=True)
class LogStatus:
    partitions: int | None
    """As recorded in the log server; ``None`` before the first append."""
    state: LogState
    """Per partition, the streams' hot entries and oldest ids and the archive's position."""
    nodes: list[NodeState]
    """The log server's nodes: one for a single server, each of a cluster's."""


async def log_status(settings: Settings, url: str) -> LogStatus:
    client = connect(url, socket_timeout=TIMEOUT_S)
    try:
        recorded = await client.hget(META_KEY, META_PARTITIONS_FIELD)
        partitions = int(recorded) if recorded is not None else None
        state = await log_state(
            client, partitions or settings.producer.partitions, await _archived(settings)
        )
        return LogStatus(partitions, state, await topology(client))
    finally:
        await client.aclose()


async def _archived(settings: Settings) -> dict[int, Position] | None:
    """The archive's position per partition; None when Postgres cannot say (its health row
    says why)."""
    if settings.postgres_url is None:
        return None
    archive = build_store(settings, ARCHIVE, pool_size=1)
    try:
        await asyncio.wait_for(archive.start(), TIMEOUT_S)
        return await archive.positions()
    except (OSError, TimeoutError, asyncpg.PostgresError):
        return None
    finally:
        await archive.close()


@dataclass(frozen=True, slots=True)
class ProjectorStatus:
    groups: list[GroupState]
    dead_letters: dict[str, int]
    embedded: int
    """Messages the enricher has embedded, ever (a rebuild leaves it unchanged)."""
    generations: Registry
    """Which generation of each projection is live, being built, being dropped."""

    def generation(self, name: str) -> str:
        """``g<live>``, with the rebuild under way if any (``g1, building g2``)."""
        text = f"g{self.generations.live_of(name)}"
        if (building := self.generations.building.get(name)) is not None:
            text += f", building g{building}"
        if (retired := self.generations.retired.get(name)) is not None:
            text += f", dropping g{retired.generation}"
        return text


async def projector_status(url: str, names: Sequence[str], partitions: int) -> ProjectorStatus:
    client = connect(url, socket_timeout=TIMEOUT_S)
    try:
        groups = await group_states(client, names, partitions, reads_enriched)
        dead = {name: await dlq_size(client, name) for name in names}
        embedded = await embedded_total(client, partitions)
        return ProjectorStatus(groups, dead, embedded, await read_registry(client))
    finally:
        await client.aclose()
