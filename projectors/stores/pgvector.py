"""pgvector: the embeddings beside the history, searched exactly within a tenant.

A separate projection from :mod:`projectors.stores.postgres` because it reads the enriched
stream: the history must not wait for embeddings. Search is an exact scan of the tenant's
(or the session's) rows through the btree key, so the tenant filter can never make an
approximate index drop results; add an HNSW index when one tenant holds millions of rows.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from projectors.records import Digest, Record
from projectors.store import Hit, VectorStore
from projectors.stores.postgres import NOT_ERASED, Connection, PostgresProjection


def _vector_literal(vector: Sequence[float]) -> str:
    return "[" + ",".join(f"{x:.7g}" for x in vector) + "]"


class PgvectorVectorStore(PostgresProjection, VectorStore):
    store = "pgvector"
    tables = ("amem_vectors",)

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
            [r.position.ms for r in messages],
            [r.position.seq for r in messages],
            [r.content_hash for r in messages],
            [e.model for e in enrichments if e is not None],
            [e.tokens for e in enrichments if e is not None],
            [_vector_literal(e.vector) for e in enrichments if e is not None],
        ]
        names = (
            "tenant_id, session_id, message_id, pos_ms, pos_seq, content_hash, model, tokens,"
            " embedding"
        )
        await conn.execute(
            f"""INSERT INTO amem_vectors AS x ({names})
            SELECT tenant_id, session_id, message_id, pos_ms, pos_seq, content_hash, model,
                   tokens, embedding::vector
            FROM unnest($2::text[], $3::text[], $4::text[], $5::bigint[], $6::bigint[],
                        $7::text[], $8::text[], $9::int[], $10::text[]) AS m({names})
            WHERE {NOT_ERASED}
            ON CONFLICT (tenant_id, session_id, message_id) DO UPDATE
            SET pos_ms = excluded.pos_ms, pos_seq = excluded.pos_seq,
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
        session_id: str | None = None,
    ) -> list[Hit]:
        query = """SELECT session_id, message_id, 1 - (embedding <=> $1::vector) AS score
                   FROM amem_vectors WHERE tenant_id = $2"""
        args: list[Any] = [_vector_literal(vector), tenant_id]
        if session_id is not None:
            query += " AND session_id = $3"
            args.append(session_id)
        query += f" ORDER BY embedding <=> $1::vector LIMIT {int(limit)}"
        rows = await self._pool.fetch(query, *args)
        return [Hit(session_id=r[0], message_id=r[1], score=float(r[2])) for r in rows]
