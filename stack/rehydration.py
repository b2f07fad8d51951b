"""A :class:`~rehydrator.rehydrate.Rehydrator` over the configured stores, opened and closed.

Every store the projectors write is read, except Qdrant in local mode (one process may open
it, and that is the worker): pgvector serves the dense reads in the embedded default. A store
that cannot be reached at start-up is left out, with a warning, and its tier reports
"skipped" until the next start: the rehydrator serves from the others.
"""

from __future__ import annotations

import asyncio
import gc
import logging
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager
from typing import TypeVar

import redis.asyncio as aioredis
from threadpoolctl import threadpool_limits  # type: ignore[import-untyped]

from projectors.store import (
    GraphStore,
    HistoryStore,
    Projection,
    ProjectionStore,
    VectorSource,
    VectorStore,
)
from rehydrator.fusion import FusionWeights
from rehydrator.hot_index import HotIndexes
from rehydrator.query_embedding import QueryEmbedder
from rehydrator.rehydrate import Rehydrator
from rehydrator.tokens import TokenCounter
from schemas.constants import ARCHIVE, ENRICHER
from stack.projections import build_store, qdrant_is_local, reads_enriched, select
from stack.settings import Settings

P = TypeVar("P", bound=Projection)

START_TIMEOUT_S = 10
POOL_SIZE = 16
"""Postgres connections of the rehydrator: a call reads up to four tiers there at once."""

_log = logging.getLogger(__name__)


async def _opened(stack: AsyncExitStack, store: P) -> P | None:
    try:
        await asyncio.wait_for(store.start(), START_TIMEOUT_S)
    except Exception as exc:  # any failure leaves the tier out, loudly
        _log.warning("%s is unreachable, its tier is left out: %r", store.store, exc)
        await store.close()
        return None
    stack.push_async_callback(store.close)
    return store


@asynccontextmanager
async def open_rehydrator(
    settings: Settings, *, weights: FusionWeights | None = None
) -> AsyncIterator[Rehydrator]:
    """The rehydrator over every configured store; ``weights`` replaces the measured fusion
    weights (for ablations: ``bench/recall.py --weights``)."""
    # The archive is no tier: context comes from the projections, the archive feeds replays.
    names = tuple(n for n in select(settings) if n != ARCHIVE)
    async with AsyncExitStack() as stack:
        stores: dict[str, Projection] = {}
        for name in names:
            if name == ENRICHER or (name == "qdrant" and qdrant_is_local(settings)):
                continue
            opened = await _opened(stack, build_store(settings, name, pool_size=POOL_SIZE))
            if opened is not None:
                stores[name] = opened
        redis = aioredis.Redis.from_url(
            settings.require_redis(), socket_connect_timeout=2, socket_timeout=5
        )
        stack.push_async_callback(redis.aclose)
        embedder = await asyncio.to_thread(
            QueryEmbedder.load, settings.home / "models", threads=settings.rehydrate_threads
        )
        stack.callback(embedder.close)
        # Everything loaded so far lives as long as the process: keep it out of the garbage
        # collector's full passes, which otherwise stall a call now and then (100 ms seen).
        gc.freeze()
        # One BLAS thread: a call's matrix-vector product is small, and concurrent calls and
        # the query embedding already use the cores; more threads only fight them (p99 at
        # 50,000 turns was 69 ms with two, 20 ms with one).
        threadpool_limits(limits=1, user_api="blas")
        history = stores.get("postgres")
        graph = stores.get("graph")
        sessions = stores.get("mongo")
        source = next((s for s in stores.values() if isinstance(s, VectorSource)), None)
        hot = None
        if isinstance(history, HistoryStore) and settings.rehydrate.hot_rows:
            hot = HotIndexes(history, source, max_rows=settings.rehydrate.hot_rows)
        yield Rehydrator(
            redis=redis,
            partitions=settings.producer.partitions,
            projectors=names,
            reads_enriched=reads_enriched,
            history=history if isinstance(history, HistoryStore) else None,
            vectors=[s for s in stores.values() if isinstance(s, VectorStore)],
            graph=graph if isinstance(graph, GraphStore) else None,
            sessions=sessions if isinstance(sessions, ProjectionStore) else None,
            embedder=embedder,
            counter=TokenCounter.load(),
            hot=hot,
            settings=settings.rehydrate,
            weights=weights,
        )
