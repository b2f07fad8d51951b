"""Reading a stream a page at a time: the one loop every full scan of a stream uses."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import cast

import redis.asyncio as aioredis

Entries = list[tuple[bytes, dict[bytes, bytes]]]
PAGE = 1_000


async def pages(
    redis: aioredis.Redis, key: str, *, first: str = "-", last: str = "+", size: int = PAGE
) -> AsyncIterator[Entries]:
    """The entries of ``key`` from ``first`` to ``last`` (inclusive), ``size`` at a time."""
    start = first
    while True:
        page = cast(Entries, await redis.xrange(key, min=start, max=last, count=size))
        if page:
            yield page
        if len(page) < size:
            return
        start = "(" + page[-1][0].decode()
