"""The enricher: embedding, token count and entities, once per message, into a derived stream.

Enrichment lives in ``amem:enriched:{N}``, one entry per log entry of partition ``N`` in log
order, carrying the log entry verbatim plus its vector, token count and entities. Every
projector that needs enrichment reads that stream through its own consumer group, so a
message is embedded once however many stores hold vectors, and rebuilding a vector store
replays the stream: it embeds nothing. Erasures and redactions are forwarded so downstream
stores see them in order.
"""

from __future__ import annotations

import time
from collections.abc import Sequence

import numpy as np
import orjson
import redis.asyncio as aioredis
from redis.typing import EncodableT, FieldT

from projectors.enrichment.embedder import Embedder
from projectors.enrichment.entities import extract_entities
from projectors.hooks import Middleware
from projectors.projector import Entry, Projector
from projectors.records import (
    ENTITIES_FIELD,
    MODEL_FIELD,
    SOURCE_FIELD,
    TOKENS_FIELD,
    VECTOR_DTYPE,
    VECTOR_FIELD,
)
from schemas.constants import (
    ENRICHER,
    ENTRY_FIELD,
    embedded_counter_key,
    enriched_key,
    erasures_key,
)
from schemas.events import MessageAppended, MessageRedacted, SessionErased

# XACK first: only the consumer whose XACK removes the entry from the pending list appends
# it, so an entry claimed by two consumers at once is still enriched exactly once. An erase
# or redaction is also recorded for the purge (schemas.constants.erasures_key), with its
# enriched id. KEYS: log stream, enriched stream, counter, erasures. ARGV: group, entries,
# then per entry: id, kind (m: message, e: erase or redaction), field count, field, value,
# ... (the envelope first).
ENRICH_LUA = """
local i = 3
local added = 0
local embedded = 0
for _ = 1, tonumber(ARGV[2]) do
  local id, kind, n = ARGV[i], ARGV[i + 1], tonumber(ARGV[i + 2])
  i = i + 3
  if redis.call('XACK', KEYS[1], ARGV[1], id) == 1 then
    local args = {KEYS[2], '*'}
    for f = i, i + 2 * n - 1 do args[#args + 1] = ARGV[f] end
    local enriched = redis.call('XADD', unpack(args))
    added = added + 1
    if kind == 'm' then embedded = embedded + 1 end
    if kind == 'e' then redis.call('HSET', KEYS[4], id, enriched .. ' ' .. ARGV[i + 1]) end
  end
  i = i + 2 * n
end
if embedded > 0 then redis.call('INCRBY', KEYS[3], embedded) end
return added
"""


class Enricher(Projector):
    name = ENRICHER

    def __init__(
        self,
        embedder: Embedder | None = None,
        *,
        threads: int | None = None,
        hooks: Middleware | None = None,
    ) -> None:
        self._embedder = embedder
        self._owns_embedder = embedder is None
        self._threads = threads
        self._hooks = hooks or Middleware()
        self._script: aioredis.client.AsyncScript | None = None  # type: ignore[name-defined]

    async def start(self) -> None:
        if self._embedder is None:
            self._embedder = Embedder.load(threads=self._threads)

    async def close(self) -> None:
        if self._owns_embedder and self._embedder is not None:
            self._embedder.close()
            self._embedder = None

    async def apply(self, redis: aioredis.Redis, stream: str, batch: Sequence[Entry]) -> None:
        assert self._embedder is not None, "the enricher has not started"
        messages = [r.event for _, r in batch if isinstance(r.event, MessageAppended)]
        texts = [m.message.content for m in messages]
        started = time.perf_counter()
        vectors = await self._embedder.embed_async(texts) if texts else []
        self._hooks.after_embed(len(texts), time.perf_counter() - started)
        tokens = self._embedder.count_tokens(texts) if texts else []
        model = self._embedder.model_name
        args: list[EncodableT] = [self.group, len(batch)]
        k = 0
        for entry_id, record in batch:
            is_message = isinstance(record.event, MessageAppended)
            if is_message:
                vector = np.asarray(vectors[k], dtype=VECTOR_DTYPE).tobytes()
                entry = enriched_entry(record.raw, entry_id, (vector, tokens[k], texts[k], model))
                k += 1
            else:
                entry = enriched_entry(record.raw, entry_id)
            fields = [x for pair in entry.items() for x in pair]
            erases = isinstance(record.event, SessionErased | MessageRedacted)
            kind = "m" if is_message else "e" if erases else ""
            args += [entry_id, kind, len(entry), *fields]
        partition = batch[0][1].partition
        keys = [
            stream,
            enriched_key(partition),
            embedded_counter_key(partition),
            erasures_key(partition),
        ]
        if self._script is None:
            self._script = redis.register_script(ENRICH_LUA)  # EVALSHA, reloaded on NOSCRIPT
        await self._script(keys=keys, args=args, client=redis)


def enriched_entry(
    raw: bytes, source: bytes | str, message: tuple[bytes, int, str, str] | None = None
) -> dict[FieldT, EncodableT]:
    """The fields of one enriched-stream entry: the log entry verbatim and its id, and for
    a message ``(vector as VECTOR_DTYPE bytes, token count, text, model)`` its vector, token
    count, entities and model."""
    entry: dict[FieldT, EncodableT] = {ENTRY_FIELD: raw, SOURCE_FIELD: source}
    if message is not None:
        vector, tokens, text, model = message
        entry |= {
            VECTOR_FIELD: vector,
            TOKENS_FIELD: tokens,
            ENTITIES_FIELD: orjson.dumps(extract_entities(text)),
            MODEL_FIELD: model,
        }
    return entry


async def embedded_total(redis: aioredis.Redis, partitions: int) -> int:
    """Messages embedded and stored by the enricher, all partitions."""
    # One GET per partition in a pipeline, not MGET: on a cluster the counters live in the
    # partitions' slots.
    async with redis.pipeline(transaction=False) as pipe:
        for n in range(partitions):
            pipe.get(embedded_counter_key(n))
        values = await pipe.execute()
    return sum(int(v) for v in values if v is not None)
