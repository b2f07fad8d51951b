"""A vector store's generation kept in another model than the enricher's: the model swap.

:class:`ReembeddingProjection` wraps the store of such a generation. Each message of a batch
that arrives with another model's vector gets the generation's model's instead: from the
archive (``amem_enrichments``, keyed by model) when it is there, otherwise embedded now and
archived, so that each message is embedded once with the new model whichever store, replay
or worker asks first. Erasures and redactions pass through unchanged.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace
from typing import ClassVar

import redis.asyncio as aioredis

from projectors.enrichment.models import OnnxEmbedder
from projectors.errors import StoreUnavailableError
from projectors.position import Position
from projectors.records import Digest, Enrichment, Record
from projectors.store import Projection
from projectors.stores.archive import PostgresArchiveStore
from schemas.constants import model_embedded_key
from schemas.events import MessageAppended


class ReembeddingProjection(Projection):
    """``store`` fed with ``embedder``'s vectors, whatever model the records carry.

    The wrapped store's and the archive's "store is down" errors come out as
    :class:`StoreUnavailableError`, which the worker retries in place.
    """

    store: ClassVar[str] = "reembedding"
    needs_enrichment: ClassVar[bool] = True
    transient_errors: ClassVar[tuple[type[BaseException], ...]] = (StoreUnavailableError,)

    def __init__(
        self,
        store: Projection,
        *,
        embedder: OnnxEmbedder,
        archive: PostgresArchiveStore,
        redis: aioredis.Redis,
    ) -> None:
        self.wrapped = store
        self._embedder = embedder
        self._archive = archive
        self._redis = redis

    @property
    def model(self) -> str:
        return self._embedder.model_name

    async def start(self) -> None:
        await self._archive.start()
        await self.wrapped.start()

    async def close(self) -> None:
        await self.wrapped.close()
        await self._archive.close()
        await self._redis.aclose()

    async def apply(self, records: Sequence[Record]) -> None:
        down = (*self.wrapped.transient_errors, *self._archive.transient_errors)
        try:
            await self.wrapped.apply(await self._in_model(records))
        except down as exc:
            raise StoreUnavailableError(self.wrapped.store, exc) from exc

    async def _in_model(self, records: Sequence[Record]) -> list[Record]:
        model = self.model
        stale = {
            i: _key(r)
            for i, r in enumerate(records)
            if isinstance(r.event, MessageAppended)
            and (r.enrichment is None or r.enrichment.model != model)
        }
        if not stale:
            return list(records)
        found = await self._archive.model_vectors(list(stale.values()), model)
        missing = [i for i, key in stale.items() if key not in found]
        if missing:
            texts = [records[i].message.message.content for i in missing]
            vectors = await self._embedder.embed_async(texts)
            chosen = [records[i] for i in missing]
            added = await self._archive.add_model_vectors(chosen, vectors, model)
            # Counted when archived: a message two workers embedded at once counts once.
            await self._redis.incrby(model_embedded_key(model), added)
            for i, vector in zip(missing, vectors, strict=True):
                found[stale[i]] = vector
        out = list(records)
        for i, key in stale.items():
            old = records[i].enrichment
            out[i] = replace(
                records[i],
                enrichment=Enrichment(
                    model=model,
                    vector=found[key].tolist(),
                    tokens=old.tokens if old else 0,
                    entities=old.entities if old else (),
                ),
            )
        return out

    async def digest(self, tenant_id: str | None = None) -> Digest:
        return await self.wrapped.digest(tenant_id)

    async def count(self) -> int:
        return await self.wrapped.count()

    async def reset(self) -> None:
        await self.wrapped.reset()

    async def drop(self) -> None:
        await self.wrapped.drop()

    async def positions(self) -> dict[int, Position]:
        return await self.wrapped.positions()


def _key(record: Record) -> tuple[str, str, str]:
    return (record.event.tenant_id, record.event.session_id, record.message.message.id)
