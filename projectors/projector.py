"""A projector: one consumer group that turns a stream's entries into one store's state."""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Mapping, Sequence
from typing import ClassVar

import redis.asyncio as aioredis

from projectors.generations import Generations, OpenGeneration
from projectors.records import Record, record_from_enriched, record_from_log
from projectors.store import Projection
from schemas.constants import enriched_key, group_name, log_key
from schemas.limits import Limits

Entry = tuple[bytes, Record]
"""A decoded entry and its id in the stream it was read from."""


class Projector(ABC):
    name: str
    reads_enriched: ClassVar[bool] = False
    """True: consumes the enriched stream (log entries with vectors, tokens, entities)."""
    transient_errors: tuple[type[BaseException], ...] = (OSError,)

    @property
    def group(self) -> str:
        return group_name(self.name)

    def source_key(self, partition: int) -> str:
        return enriched_key(partition) if self.reads_enriched else log_key(partition)

    def decode(
        self, partition: int, entry_id: bytes, fields: Mapping[bytes, bytes], limits: Limits
    ) -> Record:
        """Raises :class:`schemas.errors.ValidationError` for an entry to dead-letter."""
        if self.reads_enriched:
            return record_from_enriched(partition, fields, limits)
        return record_from_log(partition, entry_id, fields, limits)

    async def attach(self, redis: aioredis.Redis, consumer: str) -> None:  # noqa: B027
        """Before :meth:`start`: the log server and this worker's consumer name (most
        projectors need neither)."""

    @abstractmethod
    async def start(self) -> None: ...

    @abstractmethod
    async def close(self) -> None: ...

    @abstractmethod
    async def apply(self, redis: aioredis.Redis, stream: str, batch: Sequence[Entry]) -> None:
        """Apply the batch, then acknowledge exactly its entries on ``stream``."""


class StoreProjector(Projector):
    """Projects into one :class:`~projectors.store.Projection`: apply the batch, then XACK.

    With ``open_generation`` it follows the projection's generations
    (:mod:`projectors.generations`): ``store`` is the first generation's store, replaced by
    the live one's at :meth:`attach`, and each batch goes to every active generation.
    """

    def __init__(
        self,
        store: Projection,
        *,
        name: str | None = None,
        open_generation: OpenGeneration | None = None,
    ) -> None:
        self._store = store
        self.name = name or store.store
        self.transient_errors = store.transient_errors
        self.generations = (
            Generations(self.name, open_generation, store) if open_generation else None
        )

    @property
    def store(self) -> Projection:
        """The live generation's store."""
        return self.generations.store if self.generations is not None else self._store

    @property
    def reads_enriched(self) -> bool:  # type: ignore[override]
        return self.store.needs_enrichment

    async def live_store(self, redis: aioredis.Redis) -> Projection:
        """The live generation's store as the registry has it now (a rebuild may have
        switched it since the last batch)."""
        if self.generations is None:
            return self._store
        return (await self.generations.follow(redis))[0]

    async def attach(self, redis: aioredis.Redis, consumer: str) -> None:
        if self.generations is not None:
            await self.generations.attach(redis, consumer)

    async def start(self) -> None:
        if self.generations is not None:
            await self.generations.start()
        else:
            await self._store.start()

    async def close(self) -> None:
        if self.generations is not None:
            await self.generations.close()
        else:
            await self._store.close()

    async def apply(self, redis: aioredis.Redis, stream: str, batch: Sequence[Entry]) -> None:
        records = [record for _, record in batch]
        if self.generations is None:
            await self._store.apply(records)
        else:
            async with self.generations.batch(redis) as stores:
                for store in stores:
                    await store.apply(records)
        await redis.xack(stream, self.group, *(entry_id for entry_id, _ in batch))
