"""A projector: one consumer group that turns a stream's entries into one store's state."""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Mapping, Sequence
from typing import ClassVar

import redis.asyncio as aioredis

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

    @abstractmethod
    async def start(self) -> None: ...

    @abstractmethod
    async def close(self) -> None: ...

    @abstractmethod
    async def apply(self, redis: aioredis.Redis, stream: str, batch: Sequence[Entry]) -> None:
        """Apply the batch, then acknowledge exactly its entries on ``stream``."""


class StoreProjector(Projector):
    """Projects into one :class:`~projectors.store.Projection`: apply the batch, then XACK."""

    def __init__(self, store: Projection, *, name: str | None = None) -> None:
        self.store = store
        self.name = name or store.store
        self.transient_errors = store.transient_errors

    @property
    def reads_enriched(self) -> bool:  # type: ignore[override]
        return self.store.needs_enrichment

    async def start(self) -> None:
        await self.store.start()

    async def close(self) -> None:
        await self.store.close()

    async def apply(self, redis: aioredis.Redis, stream: str, batch: Sequence[Entry]) -> None:
        await self.store.apply([record for _, record in batch])
        await redis.xack(stream, self.group, *(entry_id for entry_id, _ in batch))
