"""Replays from the archive: ``amem project rebuild``, and a new group on a trimmed stream.

The group goes back to the start of its stream first: that pins the trim point there (no
entry it has not acknowledged is ever trimmed), so what the stream holds stays, and the
archive holds everything trimmed. The command applies that archived part itself, a page at
a time (for the enriched stream, not in log order, the whole archive); the workers replay
the stream meanwhile. Stores are idempotent and order-insensitive, so the two may overlap.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import cast

import redis.asyncio as aioredis

from projectors.enrichment.embedder import MODEL_NAME
from projectors.errors import StoreUnavailableError
from projectors.lag import group_states
from projectors.position import Position
from projectors.projector import StoreProjector
from projectors.store import Projection
from projectors.stores.archive import PostgresArchiveStore
from schemas.constants import ARCHIVE, group_name, log_key
from stack.projections import build_store, reads_enriched
from stack.settings import Settings

Progress = Callable[[int], None]
"""Told how many archived events were just applied."""


async def rebuild(settings: Settings, name: str, progress: Progress) -> int:
    """Empty ``name``, replay its archived history; returns the archived events applied."""
    store = build_store(settings, name)
    archive = build_store(settings, ARCHIVE)
    assert isinstance(archive, PostgresArchiveStore)
    redis = aioredis.Redis.from_url(settings.require_redis())
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
            progress(len(page))
    return applied


async def _first_position(redis: aioredis.Redis, stream: str) -> Position | None:
    """The position of the log partition's first entry (None: the stream is empty)."""
    first = cast(list[tuple[bytes, dict[bytes, bytes]]], await redis.xrange(stream, count=1))
    return Position.parse(first[0][0]) if first else None
