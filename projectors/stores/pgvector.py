"""pgvector: the embeddings beside the history, searched exactly within a tenant.

A separate projection from :mod:`projectors.stores.postgres` because it reads the enriched
stream: the history must not wait for embeddings. Search is an exact scan of the scope's
rows through a btree key, so the tenant and scope filter can never make an approximate
index drop results. It is also the :class:`VectorSource` the rehydrator copies a scope's
vectors from (binary, about 1.5 KB a row) to search them in memory.
"""

from __future__ import annotations

import struct
from collections.abc import Sequence
from typing import Any

import numpy as np

from projectors.position import Position
from projectors.records import Digest, Record
from projectors.store import WHOLE_TENANT, Hit, Scope, StoredVectors, VectorSource, VectorStore
from projectors.stores.postgres import (
    NOT_ERASED,
    Connection,
    PostgresProjection,
    after_sql,
    scope_sql,
)

_HEADER = struct.Struct(">HH")
"""pgvector's binary form: dimension and an unused word, then big-endian float32s."""


def _vector_literal(vector: Sequence[float]) -> str:
    return "[" + ",".join(f"{x:.7g}" for x in vector) + "]"


def _encode(vector: Sequence[float]) -> bytes:
    values = np.asarray(vector, dtype=">f4")
    return _HEADER.pack(len(values), 0) + values.tobytes()


def _decode(data: bytes) -> bytes:
    # Kept as bytes: a scope's rows are turned into one array at once (see ``vectors``).
    return data


class PgvectorVectorStore(PostgresProjection, VectorStore, VectorSource):
    store = "pgvector"
    tables = ("amem_vectors",)

    async def _init_connection(self, conn: Connection) -> None:
        await conn.set_type_codec(
            "vector", schema="public", encoder=_encode, decoder=_decode, format="binary"
        )

    async def _insert(
        self, conn: Connection, messages: Sequence[Record], erasures: Sequence[Record]
    ) -> None:
        if not messages:
            return
        enrichments = [r.enrichment for r in messages]
        if any(e is None for e in enrichments):
            raise ValueError("pgvector applies enriched records only")
        columns: list[list[Any]] = [
            [r.event.tenant_id for r in messages],
            [r.event.session_id for r in messages],
            [r.message.message.id for r in messages],
            [r.message.message.user_id for r in messages],
            [r.position.ms for r in messages],
            [r.position.seq for r in messages],
            [r.content_hash for r in messages],
            [e.model for e in enrichments if e is not None],
            [e.tokens for e in enrichments if e is not None],
            [_vector_literal(e.vector) for e in enrichments if e is not None],
        ]
        names = (
            "tenant_id, session_id, message_id, user_id, pos_ms, pos_seq, content_hash, model,"
            " tokens, embedding"
        )
        await conn.execute(
            f"""INSERT INTO amem_vectors AS x ({names})
            SELECT tenant_id, session_id, message_id, user_id, pos_ms, pos_seq, content_hash,
                   model, tokens, embedding::vector
            FROM unnest($2::text[], $3::text[], $4::text[], $5::text[], $6::bigint[],
                        $7::bigint[], $8::text[], $9::text[], $10::int[], $11::text[])
                 AS m({names})
            WHERE {NOT_ERASED}
            ON CONFLICT (tenant_id, session_id, message_id) DO UPDATE
            SET user_id = excluded.user_id, pos_ms = excluded.pos_ms, pos_seq = excluded.pos_seq,
                content_hash = excluded.content_hash, model = excluded.model,
                tokens = excluded.tokens, embedding = excluded.embedding
            WHERE (excluded.pos_ms, excluded.pos_seq) < (x.pos_ms, x.pos_seq)""",
            self.projector,
            *columns,
        )

    async def digest(self, tenant_id: str | None = None) -> Digest:
        return await self._digest("content_hash", tenant_id)

    async def nearest(
        self,
        tenant_id: str,
        vector: Sequence[float],
        *,
        limit: int = 10,
        scope: Scope = WHOLE_TENANT,
    ) -> list[Hit]:
        where, args = scope_sql(scope, [vector, tenant_id])
        rows = await self._pool.fetch(
            f"""SELECT session_id, message_id, 1 - (embedding <=> $1) AS score
                FROM amem_vectors WHERE tenant_id = $2 AND {where}
                ORDER BY embedding <=> $1 LIMIT {int(limit)}""",
            *args,
        )
        return [Hit(session_id=r[0], message_id=r[1], score=float(r[2])) for r in rows]

    async def vectors(
        self, tenant_id: str, *, scope: Scope, after: Position | None = None
    ) -> StoredVectors:
        where, args = scope_sql(scope, [tenant_id])
        since, args = after_sql(after, args)
        rows = await self._pool.fetch(
            f"""SELECT session_id, message_id, pos_ms, pos_seq, embedding FROM amem_vectors
                WHERE tenant_id = $1 AND {where} AND {since}""",
            *args,
        )
        if not rows:
            return StoredVectors(keys=[], positions=[], vectors=np.zeros((0, 0), np.float32))
        width = (len(rows[0][4]) - _HEADER.size) // 4
        raw = np.frombuffer(b"".join(r[4] for r in rows), dtype=np.uint8)
        # Each row: a 4-byte header, then big-endian float32s; drop headers in one reshape.
        grid = raw.reshape(len(rows), _HEADER.size + 4 * width)[:, _HEADER.size :]
        matrix = np.ascontiguousarray(grid).view(">f4").astype(np.float32)
        return StoredVectors(
            keys=[(r[0], r[1]) for r in rows],
            positions=[Position(r[2], r[3]) for r in rows],
            vectors=matrix,
        )
