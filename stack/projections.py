"""Which projectors exist, and each one's store built from :class:`~stack.settings.Settings`.

Adapter modules are imported only when their store is used: the Weaviate and Neo4j clients
cost start-up time a worker that does not use them should not pay.
"""

from __future__ import annotations

from collections.abc import Sequence
from functools import partial
from typing import TYPE_CHECKING

import redis.asyncio as aioredis

from logserver import LogServerUrl, connect
from projectors.enricher import Enricher
from projectors.enrichment.embedder import MODEL_NAME
from projectors.generations import FIRST, read_registry
from projectors.hooks import Middleware
from projectors.projector import Projector, StoreProjector
from projectors.store import Projection
from schemas.constants import ARCHIVE, ENRICHER
from schemas.errors import ConfigurationError
from stack.settings import Settings

if TYPE_CHECKING:
    from projectors.enrichment.models import OnnxEmbedder

STORES = (ARCHIVE, "postgres", "mongo", "pgvector", "qdrant", "graph", "weaviate")
"""Projection names, in the order status and verify list them."""
PROJECTORS = (ENRICHER, *STORES)
NOT_REBUILT = (ENRICHER, ARCHIVE)
"""Projectors without generations: they hold what rebuilds of the others replay."""
READ_ENRICHED = frozenset({ARCHIVE, "pgvector", "qdrant", "graph", "weaviate"})
"""Projections fed by the enriched stream (their stores' ``needs_enrichment``; a test checks)."""


def configured(settings: Settings) -> tuple[str, ...]:
    """Every projector whose store is configured (Weaviate only with AMEM_WEAVIATE_URL)."""
    return tuple(p for p in PROJECTORS if p != "weaviate" or settings.weaviate_url)


def select(settings: Settings, names: Sequence[str] | None = None) -> tuple[str, ...]:
    chosen = tuple(names or settings.projectors or configured(settings))
    for name in chosen:
        if name not in PROJECTORS:
            raise ConfigurationError(
                f"unknown projector {name!r}; expected one of {', '.join(PROJECTORS)}"
            )
        if name not in configured(settings):
            raise ConfigurationError(f"projector {name!r} needs AMEM_WEAVIATE_URL")
    return chosen


def reads_enriched(name: str) -> bool:
    return name in READ_ENRICHED


def qdrant_is_local(settings: Settings) -> bool:
    return settings.qdrant_url is None


def rebuilt_in_place(settings: Settings, name: str) -> bool:
    """Whether ``amem project rebuild`` empties the store instead of building beside it:
    Neo4j, whose Community edition holds one database (the nodes carry no generation)."""
    return name == "graph" and settings.neo4j_url is not None


def build_store(
    settings: Settings, name: str, *, pool_size: int | None = None, generation: int = FIRST
) -> Projection:
    """``pool_size``: connections of the Postgres-backed stores (None: the adapter's default).
    ``generation``: which generation of the projection (:mod:`projectors.generations`): the
    first under the store's first names, each later one beside it with ``_g<n>`` added."""
    suffix = "" if generation == FIRST else f"_g{generation}"
    if name == ARCHIVE:
        from projectors.stores.archive import PostgresArchiveStore
        from projectors.stores.postgres import DEFAULT_POOL_SIZE

        return PostgresArchiveStore(
            url=settings.require_postgres(), pool_size=pool_size or DEFAULT_POOL_SIZE
        )
    if name in ("postgres", "pgvector"):
        from projectors.stores.pgvector import PgvectorVectorStore
        from projectors.stores.postgres import DEFAULT_POOL_SIZE, PostgresProjectionStore

        kind = PostgresProjectionStore if name == "postgres" else PgvectorVectorStore
        return kind(
            url=settings.require_postgres(),
            pool_size=pool_size or DEFAULT_POOL_SIZE,
            schema=f"amem_{name}{suffix}" if suffix else "public",
        )
    if name == "mongo":
        from projectors.stores.mongo import MongoProjectionStore

        return MongoProjectionStore(url=settings.require_mongo(), database=f"amem{suffix}")
    if name == "qdrant":
        from projectors.stores.qdrant import QdrantVectorStore

        collection = f"amem_messages{suffix}"
        if settings.qdrant_url is not None:
            return QdrantVectorStore(url=settings.qdrant_url, collection=collection)
        settings.qdrant_path.mkdir(parents=True, exist_ok=True)
        return QdrantVectorStore(path=str(settings.qdrant_path), collection=collection)
    if name == "graph":
        if settings.neo4j_url is not None:
            from projectors.stores.neo4j import Neo4jGraphStore

            if suffix:
                raise ConfigurationError("Neo4j holds one generation: it is rebuilt in place")
            return Neo4jGraphStore(
                url=settings.neo4j_url,
                user=settings.neo4j_user,
                password=settings.neo4j_password,
            )
        from projectors.stores.falkordb import FalkorDBGraphStore

        # Inside the log server; on a cluster the graph's key lives on one node.
        node_url = LogServerUrl.parse(settings.require_redis()).node_url
        return FalkorDBGraphStore(url=node_url, graph=f"amem{suffix}")
    if name == "weaviate":
        from projectors.stores.weaviate import WeaviateVectorStore

        if settings.weaviate_url is None:
            raise ConfigurationError("projector 'weaviate' needs AMEM_WEAVIATE_URL")
        return WeaviateVectorStore(
            url=settings.weaviate_url,
            api_key=settings.weaviate_api_key,
            collection=f"AmemMessage{suffix.replace('_g', 'G')}",
        )
    raise ConfigurationError(f"unknown store {name!r}; expected one of {', '.join(STORES)}")


async def build_live_store(
    settings: Settings, name: str, redis: aioredis.Redis, *, pool_size: int | None = None
) -> Projection:
    """The store of ``name``'s live generation, as the registry on the log server has it."""
    registry = await read_registry(redis)
    return build_store(settings, name, pool_size=pool_size, generation=registry.live_of(name))


def build_projector(settings: Settings, name: str, hooks: Middleware) -> Projector:
    if name == ENRICHER:
        return Enricher(threads=settings.embed_threads, hooks=hooks)
    store = build_store(settings, name)
    if name == ARCHIVE or rebuilt_in_place(settings, name):
        return StoreProjector(store, name=name)
    return StoreProjector(
        store, name=name, open_generation=partial(open_generation, settings, name)
    )


VECTOR_STORES = frozenset({"pgvector", "qdrant", "weaviate"})
"""Projections whose generations may be kept in another embedding model."""


def open_generation(
    settings: Settings, name: str, generation: int, model: str | None
) -> Projection:
    """The store of one generation of ``name``, re-embedding in ``model`` when that is not
    the enricher's (:mod:`projectors.enrichment.reembedding`)."""
    store = build_store(settings, name, generation=generation)
    if model is None or model == MODEL_NAME:
        return store
    from projectors.enrichment.models import OnnxEmbedder
    from projectors.enrichment.reembedding import ReembeddingProjection
    from projectors.stores.archive import PostgresArchiveStore

    archive = build_store(settings, ARCHIVE, pool_size=1)
    assert isinstance(archive, PostgresArchiveStore)
    embedder = _embedders.get(model)
    if embedder is None:
        threads = settings.embed_threads or 1
        embedder = _embedders[model] = OnnxEmbedder.load(
            model, settings.home / "models", threads=threads
        )
    return ReembeddingProjection(
        store,
        embedder=embedder,
        archive=archive,
        redis=connect(settings.require_redis()),
    )


_embedders: dict[str, OnnxEmbedder] = {}
"""One embedder per model and process, shared by the generations kept in it."""
