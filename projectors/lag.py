"""How far each projector is behind, per partition, from the stream's consumer-group state."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import redis.asyncio as aioredis
from redis.exceptions import ResponseError

from schemas.constants import dlq_key, enriched_key, group_name, log_key


@dataclass(frozen=True, kw_only=True, slots=True)
class GroupState:
    projector: str
    partition: int
    stream: str
    lag: int | None
    """Entries not yet delivered to the group (None: the server could not tell)."""
    pending: int
    last_delivered: str | None
    """Last entry handed to the group; with ``pending`` 0 it is also the last applied."""


async def group_state(
    redis: aioredis.Redis, projector: str, partition: int, *, enriched: bool
) -> GroupState:
    stream = enriched_key(partition) if enriched else log_key(partition)
    group = group_name(projector).encode()
    try:
        groups = await redis.xinfo_groups(stream)
    except ResponseError:  # no such stream yet
        groups = []
    for g in groups:
        if g["name"] == group:
            last = g.get("last-delivered-id")
            return GroupState(
                projector=projector,
                partition=partition,
                stream=stream,
                lag=g.get("lag"),
                pending=int(g.get("pending", 0)),
                last_delivered=last.decode() if isinstance(last, bytes) else last,
            )
    length = await redis.xlen(stream)
    return GroupState(
        projector=projector,
        partition=partition,
        stream=stream,
        lag=length,
        pending=0,
        last_delivered=None,
    )


WORKER_GONE_S = 30.0
"""A projector none of whose consumers tried a read this long has no worker running."""


async def has_running_worker(
    redis: aioredis.Redis,
    projector: str,
    partitions: int,
    *,
    enriched: bool,
    within_s: float = WORKER_GONE_S,
) -> bool:
    """Whether some consumer of ``projector`` tried a read in the last ``within_s``.

    However its workers were started (``amem project start``/``run``, ``faststream run``,
    another host), a running worker tries a read of every partition every
    ``AMEM_MAX_WAIT_MS``, which resets its consumer's ``idle``.
    """
    group = group_name(projector)
    for n in range(partitions):
        stream = enriched_key(n) if enriched else log_key(n)
        try:
            consumers = await redis.xinfo_consumers(stream, group)
        except ResponseError:  # no stream or no group yet: no worker ever started
            continue
        if any(c["idle"] < within_s * 1000 for c in consumers):
            return True
    return False


async def dlq_size(redis: aioredis.Redis, projector: str) -> int:
    return int(await redis.xlen(dlq_key(projector)))


async def group_states(
    redis: aioredis.Redis,
    projectors: Sequence[str],
    partitions: int,
    reads_enriched: Callable[[str], bool],
) -> list[GroupState]:
    """Every projector's group on every partition of its stream."""
    return [
        await group_state(redis, name, n, enriched=reads_enriched(name))
        for name in projectors
        for n in range(partitions)
    ]
