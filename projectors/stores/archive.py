"""The archive: the cold log in Postgres, every valid event and its enrichment.

The ``archive`` projector reads the enriched stream, which carries each valid log entry
verbatim (with the id it has in the log) and, for a message, its vector, token count and
entities. One transaction stores the events of a batch in ``amem_events`` (keyed by
partition and log position), the enrichments in ``amem_enrichments`` (keyed by message id
and model) and the archive's position per partition. The streams are trimmed only below
what the archive holds (:mod:`projectors.retention`), so the archive followed by the
stream is the whole log; readers that start from the beginning read :meth:`records` up to
the stream's first entry, then the stream.

Erasures and redactions are kept and erase what they cover, as in every projection: an
erased or redacted message leaves the archive with its enrichments, and the event that
erased it stays (a redaction names only the message's id).
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence
from typing import Any

import numpy as np
import numpy.typing as npt
import orjson

from projectors.errors import ArchiveError
from projectors.position import Position
from projectors.records import VECTOR_DTYPE, Digest, Enrichment, Record
from projectors.stores.postgres import NOT_ERASED, Connection, PostgresProjection, lock_sessions
from schemas.codec import decode
from schemas.constants import ARCHIVE
from schemas.events import MessageAppended
from schemas.limits import DEFAULT_LIMITS, Limits

SCHEMA = """
-- Before the archive had a projector of its own, the postgres projection kept amem_archive;
-- nothing was trimmed then, so the stream still holds all of it and this projector, new,
-- replays it from the start.
DROP TABLE IF EXISTS amem_archive;
-- Keyed by the log entry; tenant and session are part of the key so that store tests,
-- whose sessions reuse positions, keep one row per event as the log does.
CREATE TABLE IF NOT EXISTS amem_events (
    partition int NOT NULL, pos_ms bigint NOT NULL, pos_seq bigint NOT NULL,
    tenant_id text NOT NULL, session_id text NOT NULL, event_type text NOT NULL,
    event text NOT NULL, message_id text, content_hash text,
    PRIMARY KEY (partition, pos_ms, pos_seq, tenant_id, session_id));
CREATE INDEX IF NOT EXISTS amem_events_session ON amem_events (tenant_id, session_id);
CREATE TABLE IF NOT EXISTS amem_enrichments (
    tenant_id text NOT NULL, session_id text NOT NULL, message_id text NOT NULL,
    model text NOT NULL, pos_ms bigint NOT NULL, pos_seq bigint NOT NULL,
    tokens int NOT NULL, entities jsonb NOT NULL, vector bytea NOT NULL,
    PRIMARY KEY (tenant_id, session_id, message_id, model));
"""

PAGE = 2_000
"""Archived events read per query."""

_EVENT_COLUMNS = (
    "partition, pos_ms, pos_seq, tenant_id, session_id, event_type, event, message_id, content_hash"
)
_ENRICHMENT_COLUMNS = (
    "tenant_id, session_id, message_id, model, pos_ms, pos_seq, tokens, entities, vector"
)

INSERT_ENRICHMENTS = f"""INSERT INTO amem_enrichments ({_ENRICHMENT_COLUMNS})
    SELECT * FROM unnest($2::text[], $3::text[], $4::text[], $5::text[], $6::bigint[],
                         $7::bigint[], $8::int[], $9::jsonb[], $10::bytea[])
         AS m({_ENRICHMENT_COLUMNS})
    WHERE {NOT_ERASED}
    ON CONFLICT DO NOTHING"""
"""Enrichment rows (``$1`` the projector, then one array per column) unless archived or
erased."""


def event_columns(records: Sequence[Record]) -> list[list[Any]]:
    """Partition, position, tenant, session, type and envelope of each event, as columns."""
    return [
        [r.partition for r in records],
        [r.position.ms for r in records],
        [r.position.seq for r in records],
        [r.event.tenant_id for r in records],
        [r.event.session_id for r in records],
        [r.event.TYPE for r in records],
        [r.raw.decode() for r in records],
    ]


class PostgresArchiveStore(PostgresProjection):
    """Every valid event and every enrichment, in Postgres: the log below the hot window."""

    store = ARCHIVE
    needs_enrichment = True
    tables = ("amem_events", "amem_enrichments")
    schema = SCHEMA

    async def _insert(
        self, conn: Connection, messages: Sequence[Record], erasures: Sequence[Record]
    ) -> None:
        records = [*messages, *erasures]
        is_message = [isinstance(r.event, MessageAppended) for r in records]
        await conn.execute(
            f"""INSERT INTO amem_events ({_EVENT_COLUMNS})
            SELECT * FROM unnest($2::int[], $3::bigint[], $4::bigint[], $5::text[], $6::text[],
                                 $7::text[], $8::text[], $9::text[], $10::text[])
                 AS m({_EVENT_COLUMNS})
            WHERE m.event_type = 'message.appended' AND {NOT_ERASED}
               OR m.event_type <> 'message.appended'
            ON CONFLICT (partition, pos_ms, pos_seq, tenant_id, session_id) DO NOTHING""",
            self.projector,
            *event_columns(records),
            [r.message.message.id if m else None for r, m in zip(records, is_message, strict=True)],
            [r.content_hash if m else None for r, m in zip(records, is_message, strict=True)],
        )
        enriched = [(r, r.enrichment) for r in messages if r.enrichment is not None]
        if len(enriched) != len(messages):
            raise ArchiveError("the archive applies enriched records only")
        if not enriched:
            return
        await conn.execute(
            INSERT_ENRICHMENTS,
            self.projector,
            [r.event.tenant_id for r, _ in enriched],
            [r.event.session_id for r, _ in enriched],
            [r.message.message.id for r, _ in enriched],
            [e.model for _, e in enriched],
            [r.position.ms for r, _ in enriched],
            [r.position.seq for r, _ in enriched],
            [e.tokens for _, e in enriched],
            [orjson.dumps(list(e.entities)).decode() for _, e in enriched],
            [np.asarray(e.vector, dtype=VECTOR_DTYPE).tobytes() for _, e in enriched],
        )

    async def digest(self, tenant_id: str | None = None) -> Digest:
        # The earliest occurrence of each message id, as the log's replay keeps it.
        query = """SELECT DISTINCT ON (tenant_id, session_id, message_id)
                       tenant_id, session_id, message_id, content_hash
                   FROM amem_events
                   WHERE event_type = 'message.appended' {tenant}
                   ORDER BY tenant_id, session_id, message_id, pos_ms, pos_seq"""
        if tenant_id is None:
            rows = await self._pool.fetch(query.format(tenant=""))
        else:
            rows = await self._pool.fetch(query.format(tenant="AND tenant_id = $1"), tenant_id)
        digest: Digest = {}
        for r in rows:
            digest.setdefault((r[0], r[1]), {})[r[2]] = r[3]
        return digest

    async def count(self) -> int:
        value = await self._pool.fetchval(
            "SELECT count(*) FROM amem_events WHERE event_type = 'message.appended'"
        )
        return int(value)

    async def model_vectors(
        self, keys: Sequence[tuple[str, str, str]], model: str
    ) -> dict[tuple[str, str, str], npt.NDArray[np.float32]]:
        """The archived vectors by ``model`` of the given messages (tenant, session, id)."""
        rows = await self._pool.fetch(
            """SELECT e.tenant_id, e.session_id, e.message_id, e.vector
               FROM amem_enrichments e
               JOIN unnest($1::text[], $2::text[], $3::text[]) AS k(t, s, m)
                 ON e.tenant_id = k.t AND e.session_id = k.s AND e.message_id = k.m
               WHERE e.model = $4""",
            [k[0] for k in keys],
            [k[1] for k in keys],
            [k[2] for k in keys],
            model,
        )
        return {(r[0], r[1], r[2]): np.frombuffer(r[3], dtype=VECTOR_DTYPE) for r in rows}

    async def add_model_vectors(
        self, messages: Sequence[Record], vectors: npt.NDArray[np.float32], model: str
    ) -> int:
        """Archive ``model``'s vectors of ``messages`` (row ``i`` is message ``i``'s) unless
        archived already or erased; how many rows were added. Under the sessions' locks,
        so an erase cannot slip between the tombstone check and the insert."""
        async with self._pool.acquire() as conn, conn.transaction():
            await lock_sessions(conn, {r.session for r in messages})
            status = await conn.execute(
                INSERT_ENRICHMENTS,
                self.projector,
                [r.event.tenant_id for r in messages],
                [r.event.session_id for r in messages],
                [r.message.message.id for r in messages],
                [model] * len(messages),
                [r.position.ms for r in messages],
                [r.position.seq for r in messages],
                [r.enrichment.tokens if r.enrichment else 0 for r in messages],
                [
                    orjson.dumps(list(r.enrichment.entities) if r.enrichment else []).decode()
                    for r in messages
                ],
                [np.asarray(v, dtype=VECTOR_DTYPE).tobytes() for v in vectors],
            )
        return int(status.split()[-1])

    async def records(
        self,
        partition: int,
        *,
        after: Position | None,
        before: Position | None,
        model: str | None = None,
        limit: int = PAGE,
        limits: Limits = DEFAULT_LIMITS,
    ) -> list[Record]:
        """Up to ``limit`` archived events of ``partition`` strictly between ``after`` and
        ``before`` (None: unbounded), in log order.

        With ``model``, each message carries its enrichment by that model, and a message
        the archive holds no such enrichment of raises :class:`ArchiveError`: a reader
        that needs vectors must not embed again behind the caller's back.
        """
        args: list[Any] = [partition, limit]
        terms = ["a.partition = $1"]
        if after is not None:
            args += [after.ms, after.seq]
            terms.append(f"(a.pos_ms, a.pos_seq) > (${len(args) - 1}, ${len(args)})")
        if before is not None:
            args += [before.ms, before.seq]
            terms.append(f"(a.pos_ms, a.pos_seq) < (${len(args) - 1}, ${len(args)})")
        join = "LEFT JOIN amem_enrichments e ON FALSE"
        if model is not None:
            args.append(model)
            join = f"""LEFT JOIN amem_enrichments e ON e.tenant_id = a.tenant_id
                AND e.session_id = a.session_id AND e.message_id = a.message_id
                AND e.model = ${len(args)}"""
        rows = await self._pool.fetch(
            f"""SELECT a.pos_ms, a.pos_seq, a.event, e.model, e.tokens, e.entities, e.vector
                FROM amem_events a {join}
                WHERE {" AND ".join(terms)}
                ORDER BY a.pos_ms, a.pos_seq LIMIT $2""",
            *args,
        )
        out = []
        for row in rows:
            raw = row["event"].encode()
            event = decode(raw, limits)
            enrichment = None
            if model is not None and isinstance(event, MessageAppended):
                if row["model"] is None:
                    raise ArchiveError(
                        f"message {event.message.id!r} of session {event.session_id!r} has no"
                        f" archived enrichment by {model!r}"
                    )
                enrichment = Enrichment(
                    model=row["model"],
                    vector=np.frombuffer(row["vector"], dtype=VECTOR_DTYPE).tolist(),
                    tokens=row["tokens"],
                    entities=orjson.loads(row["entities"]),
                )
            position = Position(row["pos_ms"], row["pos_seq"])
            out.append(
                Record(
                    partition=partition,
                    position=position,
                    event=event,
                    raw=raw,
                    enrichment=enrichment,
                )
            )
        return out

    async def history(
        self,
        partition: int,
        *,
        before: Position | None,
        model: str | None = None,
        limits: Limits = DEFAULT_LIMITS,
    ) -> AsyncIterator[list[Record]]:
        """Every archived event of ``partition`` before ``before`` (None: all), in log order,
        a page at a time: what a reader needs ahead of a stream's first entry."""
        after = None
        while True:
            page = await self.records(
                partition, after=after, before=before, model=model, limits=limits
            )
            if page:
                yield page
            if len(page) < PAGE:
                return
            after = page[-1].position

    async def sessions(self, tenant_id: str) -> list[str]:
        """Every session of the tenant with an archived event."""
        rows = await self._pool.fetch(
            "SELECT DISTINCT session_id FROM amem_events WHERE tenant_id = $1", tenant_id
        )
        return [r[0] for r in rows]

    async def erasures(
        self, tenant_id: str | None = None
    ) -> list[tuple[str, str, str | None, int, Position]]:
        """Each session's latest archived erase and each message's latest archived redaction:
        tenant, session, the redacted message's id (None for an erase), partition, position."""
        query = """SELECT DISTINCT ON (tenant_id, session_id, message)
                       tenant_id, session_id, message, partition, pos_ms, pos_seq
                   FROM (SELECT *, CASE WHEN event_type = 'message.redacted'
                                   THEN event::jsonb #>> '{{payload,message_id}}' END AS message
                         FROM amem_events
                         WHERE event_type IN ('session.erased', 'message.redacted') {tenant}) x
                   ORDER BY tenant_id, session_id, message, pos_ms DESC, pos_seq DESC"""
        if tenant_id is None:
            rows = await self._pool.fetch(query.format(tenant=""))
        else:
            rows = await self._pool.fetch(query.format(tenant="AND tenant_id = $1"), tenant_id)
        return [(r[0], r[1], r[2], r[3], Position(r[4], r[5])) for r in rows]
