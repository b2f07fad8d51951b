"""``amem project rebuild``: empty a projection and replay it from the archive, then the stream.

The group goes back to the start of its stream first: that pins the trim point there (no
entry it has not acknowledged is ever trimmed), so what the stream holds stays, and the
archive holds everything before the stream's first entry. The command applies that
archived part itself, a page at a time; the workers replay the stream meanwhile. Stores
are idempotent and order-insensitive, so the two may overlap in time.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import cast

import redis.asyncio as aioredis

from projectors.enrichment.embedder import MODEL_NAME
from projectors.lag import group_states
from projectors.position import Position
from projectors.records import SOURCE_FIELD
from projectors.stores.archive import PostgresArchiveStore
from schemas.constants import ARCHIVE, group_name
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
        enriched = reads_enriched(name)
        for state in await group_states(redis, [name], settings.runtime.partitions, reads_enriched):
            # Back to the start; ENTRIESREAD 0 keeps the group's lag figure right.
            await redis.xgroup_setid(state.stream, group_name(name), "0", entries_read=0)
            first = await _first_position(redis, state.stream, enriched=enriched)
            async for page in archive.history(
                state.partition,
                before=first,
                model=MODEL_NAME if enriched else None,
                limits=settings.runtime.limits,
            ):
                await store.apply(page)
                applied += len(page)
                progress(len(page))
    finally:
        await archive.close()
        await store.close()
        await redis.aclose()
    return applied


async def _first_position(redis: aioredis.Redis, stream: str, *, enriched: bool) -> Position | None:
    """The log position of the stream's first entry (None: the stream is empty)."""
    first = cast(list[tuple[bytes, dict[bytes, bytes]]], await redis.xrange(stream, count=1))
    if not first:
        return None
    entry_id, fields = first[0]
    return Position.parse(fields[SOURCE_FIELD.encode()] if enriched else entry_id)
