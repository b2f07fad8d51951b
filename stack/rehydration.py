"""A :class:`~rehydrator.rehydrate.Rehydrator` over the configured stores, opened and closed.

Every store the projectors write is read, except Qdrant in local mode (one process may open
it, and that is the worker): pgvector serves the dense reads in the embedded default. A store
that cannot be reached at start-up is left out, with a warning, and its tier reports
"skipped" until the next start: the rehydrator serves from the others.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
from collections.abc import AsyncIterator, Mapping
from contextlib import AsyncExitStack, asynccontextmanager
from typing import TypeVar

import redis.asyncio as aioredis
from threadpoolctl import threadpool_limits  # type: ignore[import-untyped]

from logserver import connect
from projectors.enrichment.embedder import MODEL_NAME
from projectors.generations import Registry, read_registry
from projectors.store import (
    GraphStore,
    HistoryStore,
    Projection,
    ProjectionStore,
    VectorSource,
    VectorStore,
)
from projectors.tasks import raise_if_cancelled
from rehydrator.fusion import FusionWeights
from rehydrator.hot_index import HotIndexes
from rehydrator.query_embedding import QueryEmbedder
from rehydrator.rehydrate import Rehydrator, Tiers
from rehydrator.tokens import TokenCounter
from schemas.constants import ARCHIVE, ENRICHER
from stack.projections import build_store, qdrant_is_local, reads_enriched, select
from stack.settings import Settings

P = TypeVar("P", bound=Projection)

START_TIMEOUT_S = 10
REFRESH_S = 0.1
"""How often the rehydrator reads the generations registry."""
REFRESH_TIMEOUT_S = 1.0
POOL_SIZE = 16
"""Postgres connections of the rehydrator: a call reads up to four tiers there at once."""

_log = logging.getLogger(__name__)


def tiers_of(
    stores: Mapping[str, Projection],
    models: Mapping[str, str],
    embedders: Mapping[str, QueryEmbedder],
) -> Tiers:
    """Which opened store serves which tier. Queries are embedded in the model of the
    vector source (else of the first vector store); vector stores in another model are left
    out until theirs is rebuilt in it too."""
    history = stores.get("postgres")
    graph = stores.get("graph")
    sessions = stores.get("mongo")
    vectors = {n: s for n, s in stores.items() if isinstance(s, VectorStore)}
    source = next((n for n, s in stores.items() if isinstance(s, VectorSource)), None)
    model = models[source] if source else next((models[n] for n in vectors), MODEL_NAME)
    chosen = {n: s for n, s in vectors.items() if models[n] == model}
    return Tiers(
        history=history if isinstance(history, HistoryStore) else None,
        vectors=tuple(chosen.values()),
        graph=graph if isinstance(graph, GraphStore) else None,
        sessions=sessions if isinstance(sessions, ProjectionStore) else None,
        source=next((s for s in chosen.values() if isinstance(s, VectorSource)), None),
        embedder=embedders.get(model),
    )


class LiveGenerations:
    """The rehydrator's :class:`~rehydrator.rehydrate.TierSwitch` over the generations
    registry, which a background task reads every ``REFRESH_S``: calls never wait for it,
    even with the log server hung, and take a switch from the first call after it is seen
    (well within the workers' grace before they drop the old generation).

    A generation a rebuild is building is opened in the background as soon as it is seen,
    so the switch finds it ready; the store it replaced is closed once the calls that may
    still read it are over (half the workers' grace).
    """

    def __init__(
        self,
        settings: Settings,
        redis: aioredis.Redis,
        registry: Registry,
        embedder: QueryEmbedder,
    ) -> None:
        self._settings = settings
        self._redis = redis
        self._stores: dict[str, Projection] = {}
        self._live: dict[str, int] = {}
        self._models: dict[str, str] = {}
        self._embedders: dict[str, QueryEmbedder] = {embedder.model_name: embedder}
        self._loading: dict[str, asyncio.Task[QueryEmbedder]] = {}
        self._registry = registry
        self._epoch = registry.epoch
        self._opening: dict[tuple[str, int], asyncio.Task[Projection | None]] = {}
        self._switched: Tiers | None = None
        self._stopping = asyncio.Event()
        self._refreshing: asyncio.Task[None] | None = None
        self._closing: dict[asyncio.Task[None], Projection] = {}

    async def open_live(self, name: str) -> None:
        """Open ``name``'s live generation, closed with the others by :meth:`aclose`; one
        that cannot be reached is left out, with a warning (its tier reports "skipped")."""
        generation = self._registry.live_of(name)
        store = build_store(self._settings, name, pool_size=POOL_SIZE, generation=generation)
        if await _started(store, "is unreachable, its tier is left out") is not None:
            self._stores[name], self._live[name] = store, generation
            self._models[name] = self._model(self._registry, name, generation)
            await self._embedder(self._models[name])

    @property
    def tiers(self) -> Tiers:
        return tiers_of(self._stores, self._models, self._embedders)

    @staticmethod
    def _model(registry: Registry, name: str, generation: int) -> str:
        return registry.model_of(name, generation) or MODEL_NAME

    def _embedder(self, model: str) -> asyncio.Task[QueryEmbedder] | asyncio.Future[QueryEmbedder]:
        """The query embedder of ``model``, loaded in the background the first time."""
        if model in self._embedders:
            ready: asyncio.Future[QueryEmbedder] = asyncio.get_running_loop().create_future()
            ready.set_result(self._embedders[model])
            return ready
        task = self._loading.get(model)
        if task is None or (task.done() and task.exception() is not None):
            task = asyncio.create_task(self._load(model))
            self._loading[model] = task
        return task

    async def _load(self, model: str) -> QueryEmbedder:
        embedder = await asyncio.to_thread(
            QueryEmbedder.load,
            self._settings.home / "models",
            threads=self._settings.rehydrate_threads,
            model=model,
        )
        self._embedders[model] = embedder
        return embedder

    def follow(self) -> None:
        """Start reading the registry in the background."""
        self._refreshing = asyncio.create_task(self._refresh_forever())

    async def changed(self) -> Tiers | None:
        switched, self._switched = self._switched, None
        return switched

    async def _refresh_forever(self) -> None:
        # Ends on the flag too: redis-py can turn a cancellation into a ConnectionError.
        while not self._stopping.is_set():
            try:
                async with asyncio.timeout(REFRESH_TIMEOUT_S):
                    registry = await read_registry(self._redis)
                if registry.epoch != self._epoch:
                    self._switched = await self._take(registry) or self._switched
            except (aioredis.RedisError, TimeoutError) as exc:
                raise_if_cancelled()  # else: the log tier reports the outage
                _log.debug("generations registry unread: %r", exc)
            except Exception:  # a new generation or model that would not open: try again
                raise_if_cancelled()
                _log.exception("could not follow the generations registry")
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stopping.wait(), REFRESH_S)

    async def _take(self, registry: Registry) -> Tiers | None:
        """Open what ``registry`` names; the tiers to read from now on if it switched any."""
        for name in self._stores:
            building = registry.building.get(name)
            if building is not None:
                self._open_soon(name, building)
                self._embedder(self._model(registry, name, building))
        switched = False
        missing = False
        for name, live in self._live.items():
            wanted = registry.live_of(name)
            if wanted == live:
                continue
            store = await self._open_soon(name, wanted)
            if store is None:
                missing = True  # asked again on the next call
                continue
            model = self._model(registry, name, wanted)
            await self._embedder(model)  # ready before any call reads the new vectors
            self._close_later(self._stores[name])
            self._stores[name], self._live[name], self._models[name] = store, wanted, model
            switched = True
        if not missing:
            self._epoch = registry.epoch
        return self.tiers if switched else None

    def _open_soon(self, name: str, generation: int) -> asyncio.Task[Projection | None]:
        key = (name, generation)
        task = self._opening.get(key)
        if task is None or (task.done() and task.result() is None):
            store = build_store(self._settings, name, pool_size=POOL_SIZE, generation=generation)
            task = asyncio.create_task(_started(store, "new generation is unreachable"))
            self._opening[key] = task
        return task

    def _close_later(self, store: Projection) -> None:
        async def close() -> None:
            await asyncio.sleep(self._settings.runtime.rebuild.grace_s / 2)
            await store.close()

        task = asyncio.create_task(close())
        self._closing[task] = store
        task.add_done_callback(lambda done: self._closing.pop(done, None))

    async def aclose(self) -> None:
        self._stopping.set()
        if self._refreshing is not None:
            self._refreshing.cancel()
            await asyncio.wait({self._refreshing}, timeout=REFRESH_TIMEOUT_S)
        retired = list(self._closing.items())
        for closing, _ in retired:
            closing.cancel()
        opened = list(self._opening.values())
        for opening in opened:
            opening.cancel()
        await asyncio.gather(*opened, *(task for task, _ in retired), return_exceptions=True)
        for task, old in retired:
            if task.cancelled():  # its grace was not over: close it now
                await old.close()
        live = {id(s) for s in self._stores.values()}
        for opening in opened:
            if opening.cancelled() or opening.exception() is not None:
                continue
            opened_store = opening.result()
            if opened_store is not None and id(opened_store) not in live:
                await opened_store.close()
        for store in self._stores.values():
            await store.close()
        for loading in self._loading.values():
            loading.cancel()
        await asyncio.gather(*self._loading.values(), return_exceptions=True)
        for model, embedder in self._embedders.items():
            if model in self._loading:  # the first one is the caller's
                embedder.close()


async def _started(store: P, unreachable: str) -> P | None:
    """``store`` started, or None (and closed) when that fails: the caller serves without
    it, and the warning says what that means (``unreachable``)."""
    try:
        await asyncio.wait_for(store.start(), START_TIMEOUT_S)
    except BaseException as exc:
        await store.close()
        if not isinstance(exc, Exception):
            raise  # cancelled: closed all the same
        _log.warning("%s %s: %r", store.store, unreachable, exc)
        return None
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
        redis = connect(settings.require_redis(), socket_connect_timeout=2, socket_timeout=5)
        stack.push_async_callback(redis.aclose)
        embedder = await asyncio.to_thread(
            QueryEmbedder.load, settings.home / "models", threads=settings.rehydrate_threads
        )
        stack.callback(embedder.close)
        switch = LiveGenerations(settings, redis, await read_registry(redis), embedder)
        stack.push_async_callback(switch.aclose)
        for name in names:
            if name == ENRICHER or (name == "qdrant" and qdrant_is_local(settings)):
                continue
            await switch.open_live(name)
        switch.follow()
        # Everything loaded so far lives as long as the process: keep it out of the garbage
        # collector's full passes, which otherwise stall a call now and then (100 ms seen).
        gc.freeze()
        # One BLAS thread: a call's matrix-vector product is small, and concurrent calls and
        # the query embedding already use the cores; more threads only fight them (p99 at
        # 50,000 turns was 69 ms with two, 20 ms with one).
        threadpool_limits(limits=1, user_api="blas")
        tiers = switch.tiers
        hot = None
        if tiers.history is not None and settings.rehydrate.hot_rows:
            hot = HotIndexes(tiers.history, tiers.source, max_rows=settings.rehydrate.hot_rows)
        yield Rehydrator(
            redis=redis,
            partitions=settings.producer.partitions,
            projectors=names,
            reads_enriched=reads_enriched,
            history=tiers.history,
            vectors=tiers.vectors,
            graph=tiers.graph,
            sessions=tiers.sessions,
            embedder=tiers.embedder or embedder,
            counter=TokenCounter.load(),
            hot=hot,
            settings=settings.rehydrate,
            weights=weights,
            switch=switch,
        )
