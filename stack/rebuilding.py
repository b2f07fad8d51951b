"""Filling a projection from the archive and the streams: rebuilds, and new groups.

``amem project rebuild NAME`` announces the projection's next generation
(:mod:`projectors.generations`); a worker running the projection fills it with
:func:`fill_generation` (each stream, then the archive before it) while every batch also
goes to it, then switches it live and drops the old one. Neo4j, which holds one generation,
is rebuilt in place instead (:func:`rebuild_in_place`): emptied, its group moved back to
the start of each stream, which pins the trim point there, and the archived part replayed.

Stores are idempotent and order-insensitive, so replays may overlap the live batches.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import cast

import redis.asyncio as aioredis

from logserver import connect
from projectors.enrichment.embedder import MODEL_NAME
from projectors.errors import StoreUnavailableError
from projectors.generations import announce, read_registry
from projectors.lag import group_states
from projectors.position import Position
from projectors.projector import StoreProjector
from projectors.store import Projection
from projectors.stores.archive import PostgresArchiveStore
from projectors.streams import pages
from schemas.constants import ARCHIVE, generation_progress_key, group_name, log_key
from schemas.errors import ConfigurationError, ValidationError
from stack.projections import build_store, reads_enriched
from stack.settings import Settings

Progress = Callable[[int], Awaitable[None]]
"""Told how many events were just applied."""

POLL_S = 0.25


async def fill_generation(
    settings: Settings,
    projector: StoreProjector,
    redis: aioredis.Redis,
    store: Projection,
    progress: Progress,
) -> int:
    """What a worker replays into a new generation of ``projector``: per partition, its
    stream up to its last entry now, then what the archive holds before the stream's first
    entry (for the enriched stream, not in log order, the whole archive).

    The stream goes first: an entry trimmed while it is read is in the archive, read after.
    """
    archive = build_store(settings, ARCHIVE, pool_size=1)
    assert isinstance(archive, PostgresArchiveStore)
    limits = settings.runtime.limits
    applied = 0
    try:
        await archive.start()
        for partition in range(settings.runtime.partitions):
            stream = projector.source_key(partition)
            last = cast(
                list[tuple[bytes, dict[bytes, bytes]]], await redis.xrevrange(stream, count=1)
            )
            if last:
                async for page in pages(redis, stream, last=last[0][0].decode()):
                    records = []
                    for entry_id, fields in page:
                        try:
                            records.append(projector.decode(partition, entry_id, fields, limits))
                        except ValidationError:
                            continue  # dead-lettered by the live group, never applied
                    await store.apply(records)
                    applied += len(records)
                    await progress(len(records))
            applied += await replay_archived(
                archive, store, redis, partition, settings, progress=progress
            )
    except archive.transient_errors as exc:
        raise StoreUnavailableError(ARCHIVE, exc) from exc
    finally:
        await archive.close()
    return applied


@dataclass(frozen=True, kw_only=True, slots=True)
class RebuildState:
    """Where a blue/green rebuild of one projection stands."""

    live: int
    building: int | None
    retiring: int | None
    applied: int
    """Events the replay into the newest generation has applied to it (so far)."""

    @property
    def done(self) -> bool:
        return self.building is None and self.retiring is None


async def start_rebuild(redis: aioredis.Redis, name: str, model: str | None = None) -> int:
    """Announce ``name``'s next generation, in ``model`` (None: the live one's), or join the
    build under way; its number.

    Waits while the generation the last rebuild replaced is still being dropped.
    """
    while True:
        generation = await announce(redis, name, model)
        if generation < 0:
            raise ConfigurationError(
                f"a rebuild of {name} in another model is under way: let it finish first"
            )
        if generation:
            return generation
        await asyncio.sleep(POLL_S)


async def rebuild_state(redis: aioredis.Redis, name: str) -> RebuildState:
    registry = await read_registry(redis)
    progress = await redis.hmget(generation_progress_key(name), ["generation", "applied"])
    building = registry.building.get(name)
    retired = registry.retired.get(name)
    applied = 0
    if progress[0] is not None and int(progress[0]) in (building, registry.live_of(name)):
        applied = int(progress[1] or 0)
    return RebuildState(
        live=registry.live_of(name),
        building=building,
        retiring=retired.generation if retired else None,
        applied=applied,
    )


async def rebuild_in_place(settings: Settings, name: str, progress: Progress) -> int:
    """Empty ``name``, replay its archived history; returns the archived events applied."""
    store = build_store(settings, name)
    archive = build_store(settings, ARCHIVE)
    assert isinstance(archive, PostgresArchiveStore)
    redis = connect(settings.require_redis())
    applied = 0
    try:
        await store.start()
        await archive.start()
        await store.reset()
        for state in await group_states(redis, [name], settings.runtime.partitions, reads_enriched):
            # Back to the start; ENTRIESREAD 0 keeps the group's lag figure right.
            await redis.xgroup_setid(state.stream, group_name(name), "0", entries_read=0)
            applied += await replay_archived(
                archive, store, redis, state.partition, settings, progress=progress
            )
    finally:
        await archive.close()
        await store.close()
        await redis.aclose()
    return applied


async def backfill(
    settings: Settings, projector: StoreProjector, partition: int, redis: aioredis.Redis
) -> int:
    """What a worker runs for a new group on a trimmed stream: its archived history.

    The archive's connection errors come out as :class:`StoreUnavailableError`, which the
    worker retries.
    """
    archive = build_store(settings, ARCHIVE, pool_size=1)
    assert isinstance(archive, PostgresArchiveStore)
    try:
        await archive.start()
        return await replay_archived(archive, projector.store, redis, partition, settings)
    except archive.transient_errors as exc:
        raise StoreUnavailableError(ARCHIVE, exc) from exc
    finally:
        await archive.close()


async def replay_archived(
    archive: PostgresArchiveStore,
    store: Projection,
    redis: aioredis.Redis,
    partition: int,
    settings: Settings,
    *,
    progress: Progress | None = None,
) -> int:
    """Apply to ``store`` what the archive holds of ``partition`` that its stream may lack.

    The log is in log order: the archive up to its first entry. The enriched stream is in
    the order the enricher got to entries (a reclaimed entry comes later), so its first
    entry does not split the archive from it: the whole archive goes, and what both hold
    is applied twice (stores are idempotent).
    """
    enriched = store.needs_enrichment
    first = None if enriched else await _first_position(redis, log_key(partition))
    applied = 0
    async for page in archive.history(
        partition,
        before=first,
        model=MODEL_NAME if enriched else None,
        limits=settings.runtime.limits,
    ):
        await store.apply(page)
        applied += len(page)
        if progress is not None:
            await progress(len(page))
    return applied


async def _first_position(redis: aioredis.Redis, stream: str) -> Position | None:
    """The position of the log partition's first entry (None: the stream is empty)."""
    first = cast(list[tuple[bytes, dict[bytes, bytes]]], await redis.xrange(stream, count=1))
    return Position.parse(first[0][0]) if first else None
