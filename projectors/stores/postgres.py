"""Postgres (asyncpg): ordered history with full text.

Each batch is one transaction holding the rows and the applied position per partition, so
a crash at any instant leaves the store at a batch boundary.
Transactions also take an advisory lock per session, which serialises a session's erase
(or a redaction of one of its messages) against concurrent writers of that session without
the tombstone re-check of stores that lack transactions.
"""

from __future__ import annotations

import asyncio
import logging
import re
from abc import abstractmethod
from collections.abc import Sequence
from typing import Any, ClassVar

import asyncpg
import orjson

from projectors.position import Position
from projectors.records import (
    Digest,
    MessageAddress,
    Record,
    SessionKey,
    latest_erasures,
    latest_redactions,
    split,
)
from projectors.store import (
    HistoryStore,
    Hit,
    IndexedTurn,
    MessageKey,
    Projection,
    ProjectionStore,
    Scope,
    SessionSummary,
    StoredMessage,
    Turn,
)
from schemas.events import Message

Connection = Any  # asyncpg ships no type information

DEFAULT_POOL_SIZE = 4
"""Connections per projection in a worker (the rehydrator, reading tiers at once, asks more)."""

SEARCHABLE = (
    "to_tsvector('english', coalesce(name, role) || ': ' || content"
    " || coalesce(' [image: ' || (metadata->>'blip_caption') || ']', ''))"
)
"""What full text indexes: the message as rendered into context (speaker, text, caption)."""

SCHEMA = f"""
CREATE EXTENSION IF NOT EXISTS vector SCHEMA public;
CREATE TABLE IF NOT EXISTS amem_positions (
    projector text NOT NULL, partition int NOT NULL,
    pos_ms bigint NOT NULL, pos_seq bigint NOT NULL,
    PRIMARY KEY (projector, partition));
CREATE TABLE IF NOT EXISTS amem_erasures (
    projector text NOT NULL, tenant_id text NOT NULL, session_id text NOT NULL,
    pos_ms bigint NOT NULL, pos_seq bigint NOT NULL,
    PRIMARY KEY (projector, tenant_id, session_id));
CREATE TABLE IF NOT EXISTS amem_redactions (
    projector text NOT NULL, tenant_id text NOT NULL, session_id text NOT NULL,
    message_id text NOT NULL, pos_ms bigint NOT NULL, pos_seq bigint NOT NULL,
    PRIMARY KEY (projector, tenant_id, session_id, message_id));
CREATE TABLE IF NOT EXISTS amem_messages (
    tenant_id text NOT NULL, session_id text NOT NULL, message_id text NOT NULL,
    partition int NOT NULL, pos_ms bigint NOT NULL, pos_seq bigint NOT NULL,
    role text NOT NULL, name text, parent_id text, agent_id text,
    content text NOT NULL, created_at timestamptz NOT NULL, metadata jsonb NOT NULL,
    tsv tsvector GENERATED ALWAYS AS ({SEARCHABLE}) STORED,
    PRIMARY KEY (tenant_id, session_id, message_id));
-- Tables made before messages could name their user: add the column.
ALTER TABLE amem_messages ADD COLUMN IF NOT EXISTS user_id text;
-- Tables made before the full text covered speaker and caption: regenerate the column.
DO $$ BEGIN
    IF NOT EXISTS (
        SELECT 1 FROM pg_attrdef d
        JOIN pg_attribute a ON a.attrelid = d.adrelid AND a.attnum = d.adnum
        WHERE d.adrelid = 'amem_messages'::regclass AND a.attname = 'tsv'
          AND pg_get_expr(d.adbin, d.adrelid) LIKE '%blip_caption%') THEN
        ALTER TABLE amem_messages DROP COLUMN tsv;
        ALTER TABLE amem_messages ADD COLUMN tsv tsvector GENERATED ALWAYS AS ({SEARCHABLE}) STORED;
    END IF;
END $$;
CREATE INDEX IF NOT EXISTS amem_messages_log_order
    ON amem_messages (tenant_id, session_id, pos_ms, pos_seq);
CREATE INDEX IF NOT EXISTS amem_messages_tsv ON amem_messages USING gin (tsv);
CREATE INDEX IF NOT EXISTS amem_messages_user_order
    ON amem_messages (tenant_id, user_id, pos_ms, pos_seq) WHERE user_id IS NOT NULL;
CREATE TABLE IF NOT EXISTS amem_vectors (
    tenant_id text NOT NULL, session_id text NOT NULL, message_id text NOT NULL,
    pos_ms bigint NOT NULL, pos_seq bigint NOT NULL, content_hash text NOT NULL,
    model text NOT NULL, tokens int NOT NULL, embedding vector NOT NULL,
    PRIMARY KEY (tenant_id, session_id, message_id));
ALTER TABLE amem_vectors ADD COLUMN IF NOT EXISTS user_id text;
CREATE INDEX IF NOT EXISTS amem_vectors_log_order
    ON amem_vectors (tenant_id, session_id, pos_ms, pos_seq);
CREATE INDEX IF NOT EXISTS amem_vectors_user_order
    ON amem_vectors (tenant_id, user_id, pos_ms, pos_seq) WHERE user_id IS NOT NULL;
"""

NOT_ERASED = """NOT EXISTS (
    SELECT 1 FROM amem_erasures e
    WHERE e.projector = $1 AND e.tenant_id = m.tenant_id AND e.session_id = m.session_id
      AND (m.pos_ms, m.pos_seq) <= (e.pos_ms, e.pos_seq))
    AND NOT EXISTS (
    SELECT 1 FROM amem_redactions r
    WHERE r.projector = $1 AND r.tenant_id = m.tenant_id AND r.session_id = m.session_id
      AND r.message_id = m.message_id AND (m.pos_ms, m.pos_seq) <= (r.pos_ms, r.pos_seq))"""
"""SQL condition: row ``m`` is covered neither by its session's tombstone nor by its
message's (``$1`` = projector)."""

ERASED_SESSION = """EXISTS (
    SELECT 1 FROM amem_erasures e
    WHERE e.projector = $1 AND e.tenant_id = t.tenant_id AND e.session_id = t.session_id
      AND (e.tenant_id, e.session_id) IN (SELECT * FROM unnest($2::text[], $3::text[]))
      AND (t.pos_ms, t.pos_seq) <= (e.pos_ms, e.pos_seq))"""
"""SQL condition: row ``t`` is covered by one of the tombstones just written."""

REDACTED_MESSAGE = """EXISTS (
    SELECT 1 FROM amem_redactions r
    WHERE r.projector = $1 AND r.tenant_id = t.tenant_id AND r.session_id = t.session_id
      AND r.message_id = t.message_id
      AND (r.tenant_id, r.session_id, r.message_id) IN
          (SELECT * FROM unnest($2::text[], $3::text[], $4::text[]))
      AND (t.pos_ms, t.pos_seq) <= (r.pos_ms, r.pos_seq))"""
"""SQL condition: row ``t`` is a message copy covered by one of the redactions just written
(a row without a message id, such as the redaction event in the archive, never is)."""


def scope_sql(scope: Scope, args: list[Any]) -> tuple[str, list[Any]]:
    """The scope as an SQL condition on ``session_id`` and ``user_id``, its values appended
    to ``args`` as further parameters."""
    args = list(args)
    terms = []
    if scope.session_id is not None:
        args.append(scope.session_id)
        terms.append(f"session_id = ${len(args)}")
    if scope.user_id is not None:
        args.append(scope.user_id)
        terms.append(f"user_id = ${len(args)}")
    return (f"({' OR '.join(terms)})" if terms else "TRUE"), args


def after_sql(after: Position | None, args: list[Any]) -> tuple[str, list[Any]]:
    """``(pos_ms, pos_seq) > after`` as an SQL condition (TRUE when ``after`` is None)."""
    if after is None:
        return "TRUE", list(args)
    args = [*args, after.ms, after.seq]
    return f"(pos_ms, pos_seq) > (${len(args) - 1}, ${len(args)})", args


class PostgresProjection(Projection):
    """Transactional apply shared by the Postgres-backed projections."""

    transient_errors: ClassVar[tuple[type[BaseException], ...]] = (
        OSError,
        asyncio.TimeoutError,
        asyncpg.exceptions.PostgresConnectionError,
        asyncpg.exceptions.InterfaceError,
        asyncpg.exceptions.CannotConnectNowError,
        asyncpg.exceptions.AdminShutdownError,
        asyncpg.exceptions.CrashShutdownError,
        # A worker's start-up DDL can deadlock with another worker's batch; the loser retries.
        asyncpg.exceptions.DeadlockDetectedError,
    )
    tables: ClassVar[tuple[str, ...]]
    """Tables this projection owns (its rows, not the shared bookkeeping)."""
    schema: ClassVar[str] = ""
    """DDL of this projection's own tables, run at start after the shared schema."""

    def __init__(
        self,
        *,
        url: str,
        projector: str | None = None,
        pool_size: int = DEFAULT_POOL_SIZE,
        schema: str = "public",
    ) -> None:
        """``schema``: where the tables live (a rebuild builds the next generation in a
        schema of its own beside the live one; ``public`` is the first generation's)."""
        if not re.fullmatch(r"[a-z_][a-z0-9_]*", schema):
            raise ValueError(f"not a plain Postgres schema name: {schema!r}")
        self._url = url
        self.projector = projector or self.store
        self._pool_size = pool_size
        self.pg_schema = schema
        # Unqualified table names resolve in the generation's schema first; the vector
        # type and extension stay in public.
        self._server_settings = {"search_path": f"{schema}, public"}
        self._pool: Any = None
        self._log = logging.getLogger(f"{__name__}.{type(self).__name__}")

    async def start(self) -> None:
        # The schema first, on a connection of its own: the pool's connections may need
        # its types (pgvector's) as they open. Two workers creating it at once would race
        # on the catalog: lock first.
        conn = await asyncpg.connect(self._url, timeout=60, server_settings=self._server_settings)
        try:
            async with conn.transaction():
                await conn.execute("SELECT pg_advisory_xact_lock(7305916)")
                await conn.execute(f"CREATE SCHEMA IF NOT EXISTS {self.pg_schema}")
                await conn.execute(SCHEMA + self.schema)
        finally:
            await conn.close()
        if self._pool is None:
            self._pool = await asyncpg.create_pool(
                self._url,
                min_size=1,
                max_size=self._pool_size,
                command_timeout=60,
                server_settings=self._server_settings,
                init=self._init_connection,
            )

    async def _init_connection(self, conn: Connection) -> None:
        """Set up each new connection of the pool (type codecs)."""

    async def erased_since(self, tenant_id: str, after: Position | None) -> dict[str, Position]:
        since, args = after_sql(after, [self.projector, tenant_id])
        rows = await self._pool.fetch(
            f"""SELECT session_id, pos_ms, pos_seq FROM amem_erasures
                WHERE projector = $1 AND tenant_id = $2 AND {since}""",
            *args,
        )
        return {r[0]: Position(r[1], r[2]) for r in rows}

    async def redacted_since(
        self, tenant_id: str, after: Position | None
    ) -> dict[MessageKey, Position]:
        since, args = after_sql(after, [self.projector, tenant_id])
        rows = await self._pool.fetch(
            f"""SELECT session_id, message_id, pos_ms, pos_seq FROM amem_redactions
                WHERE projector = $1 AND tenant_id = $2 AND {since}""",
            *args,
        )
        return {(r[0], r[1]): Position(r[2], r[3]) for r in rows}

    async def close(self) -> None:
        if self._pool is not None:
            # close() waits for every connection to come back; one held by a cancelled
            # task never does, so do not wait for ever.
            try:
                await asyncio.wait_for(self._pool.close(), timeout=10)
            except TimeoutError:
                self._pool.terminate()
            self._pool = None

    async def apply(self, records: Sequence[Record]) -> None:
        if not records:
            return
        messages, erasures, redactions = split(records)
        async with self._pool.acquire() as conn, conn.transaction():
            await lock_sessions(conn, {r.session for r in records})
            if erasures:
                latest = latest_erasures(erasures)
                await self._write_tombstones(conn, latest)
                tenants, sessions = _columns(latest)
                for table in self.tables:
                    await conn.execute(
                        f"DELETE FROM {table} t WHERE {ERASED_SESSION}",
                        self.projector,
                        tenants,
                        sessions,
                    )
            if redactions:
                redacted = latest_redactions(redactions)
                await self._write_redactions(conn, redacted)
                columns = _address_columns(redacted)
                for table in self.tables:
                    await conn.execute(
                        f"DELETE FROM {table} t WHERE {REDACTED_MESSAGE}",
                        self.projector,
                        *columns,
                    )
            await self._insert(conn, messages, [*erasures, *redactions])
            await self._advance(conn, records)

    @abstractmethod
    async def _insert(
        self, conn: Connection, messages: Sequence[Record], erasures: Sequence[Record]
    ) -> None:
        """Insert the batch's rows that no tombstone covers (the condition NOT_ERASED);
        ``erasures`` holds the batch's session erasures and redactions."""

    async def _write_tombstones(self, conn: Connection, latest: dict[SessionKey, Position]) -> None:
        tenants, sessions = _columns(latest)
        await conn.execute(
            """INSERT INTO amem_erasures AS e
               SELECT $1, * FROM unnest($2::text[], $3::text[], $4::bigint[], $5::bigint[])
               ON CONFLICT (projector, tenant_id, session_id) DO UPDATE
               SET pos_ms = excluded.pos_ms, pos_seq = excluded.pos_seq
               WHERE (excluded.pos_ms, excluded.pos_seq) > (e.pos_ms, e.pos_seq)""",
            self.projector,
            tenants,
            sessions,
            [p.ms for p in latest.values()],
            [p.seq for p in latest.values()],
        )

    async def _write_redactions(
        self, conn: Connection, redacted: dict[MessageAddress, Position]
    ) -> None:
        await conn.execute(
            """INSERT INTO amem_redactions AS r
               SELECT $1, * FROM unnest($2::text[], $3::text[], $4::text[], $5::bigint[],
                                        $6::bigint[])
               ON CONFLICT (projector, tenant_id, session_id, message_id) DO UPDATE
               SET pos_ms = excluded.pos_ms, pos_seq = excluded.pos_seq
               WHERE (excluded.pos_ms, excluded.pos_seq) > (r.pos_ms, r.pos_seq)""",
            self.projector,
            *_address_columns(redacted),
            [p.ms for p in redacted.values()],
            [p.seq for p in redacted.values()],
        )

    async def _advance(self, conn: Connection, records: Sequence[Record]) -> None:
        furthest: dict[int, Position] = {}
        for r in records:
            if r.position > furthest.get(r.partition, Position(-1, -1)):
                furthest[r.partition] = r.position
        await conn.execute(
            """INSERT INTO amem_positions AS p
               SELECT $1, * FROM unnest($2::int[], $3::bigint[], $4::bigint[])
               ON CONFLICT (projector, partition) DO UPDATE
               SET pos_ms = excluded.pos_ms, pos_seq = excluded.pos_seq
               WHERE (excluded.pos_ms, excluded.pos_seq) > (p.pos_ms, p.pos_seq)""",
            self.projector,
            list(furthest),
            [p.ms for p in furthest.values()],
            [p.seq for p in furthest.values()],
        )

    async def positions(self) -> dict[int, Position]:
        rows = await self._pool.fetch(
            "SELECT partition, pos_ms, pos_seq FROM amem_positions WHERE projector = $1",
            self.projector,
        )
        return {r["partition"]: Position(r["pos_ms"], r["pos_seq"]) for r in rows}

    async def count(self) -> int:
        value = await self._pool.fetchval(f"SELECT count(*) FROM {self.tables[0]}")
        return int(value)

    async def reset(self) -> None:
        async with self._pool.acquire() as conn, conn.transaction():
            for table in self.tables:
                await conn.execute(f"TRUNCATE {table}")
            for table in ("amem_erasures", "amem_redactions", "amem_positions"):
                await conn.execute(f"DELETE FROM {table} WHERE projector = $1", self.projector)

    async def drop(self) -> None:
        if self.pg_schema == "public":  # shared with the other projections' first generation
            await self.reset()
            return
        async with self._pool.acquire() as conn:
            await conn.execute(f"DROP SCHEMA IF EXISTS {self.pg_schema} CASCADE")

    async def _digest(self, hash_expr: str, tenant_id: str | None) -> Digest:
        query = f"SELECT tenant_id, session_id, message_id, {hash_expr} AS h FROM {self.tables[0]}"
        if tenant_id is None:
            rows = await self._pool.fetch(query)
        else:
            rows = await self._pool.fetch(query + " WHERE tenant_id = $1", tenant_id)
        digest: Digest = {}
        for r in rows:
            digest.setdefault((r["tenant_id"], r["session_id"]), {})[r["message_id"]] = r["h"]
        return digest


async def lock_sessions(conn: Connection, sessions: set[SessionKey]) -> None:
    # Sorted, so two transactions over overlapping sessions cannot deadlock.
    keys = sorted(f"{t}|{s}" for t, s in sessions)
    await conn.execute(
        "SELECT pg_advisory_xact_lock(hashtextextended(k, 0))"
        " FROM unnest($1::text[]) WITH ORDINALITY AS u(k, i) ORDER BY i",
        keys,
    )


def _columns(latest: dict[SessionKey, Position]) -> tuple[list[str], list[str]]:
    return [t for t, _ in latest], [s for _, s in latest]


def _address_columns(latest: dict[MessageAddress, Position]) -> list[list[str]]:
    return [[t for t, _, _ in latest], [s for _, s, _ in latest], [m for _, _, m in latest]]


MESSAGE_COLUMNS = (
    "tenant_id, session_id, message_id, partition, pos_ms, pos_seq, role, name, parent_id,"
    " agent_id, user_id, content, created_at, metadata"
)


class PostgresProjectionStore(PostgresProjection, ProjectionStore, HistoryStore):
    """Messages in log order per session, with their full text."""

    store = "postgres"
    tables = ("amem_messages",)

    async def _insert(
        self, conn: Connection, messages: Sequence[Record], erasures: Sequence[Record]
    ) -> None:
        if messages:
            await conn.execute(
                f"""INSERT INTO amem_messages AS x ({MESSAGE_COLUMNS})
                SELECT * FROM unnest(
                    $2::text[], $3::text[], $4::text[], $5::int[], $6::bigint[], $7::bigint[],
                    $8::text[], $9::text[], $10::text[], $11::text[], $12::text[], $13::text[],
                    $14::timestamptz[], $15::jsonb[]) AS m({MESSAGE_COLUMNS})
                WHERE {NOT_ERASED}
                ON CONFLICT (tenant_id, session_id, message_id) DO UPDATE
                SET partition = excluded.partition, pos_ms = excluded.pos_ms,
                    pos_seq = excluded.pos_seq, role = excluded.role, name = excluded.name,
                    parent_id = excluded.parent_id, agent_id = excluded.agent_id,
                    user_id = excluded.user_id, content = excluded.content,
                    created_at = excluded.created_at, metadata = excluded.metadata
                WHERE (excluded.pos_ms, excluded.pos_seq) < (x.pos_ms, x.pos_seq)""",
                self.projector,
                *message_columns(messages),
            )

    async def digest(self, tenant_id: str | None = None) -> Digest:
        return await self._digest("encode(sha256(convert_to(content, 'UTF8')), 'hex')", tenant_id)

    async def session(self, tenant_id: str, session_id: str) -> SessionSummary | None:
        rows = await self._summaries(tenant_id, "AND session_id = $2", session_id)
        return rows[0] if rows else None

    async def sessions(self, tenant_id: str, *, limit: int) -> list[SessionSummary]:
        return await self._summaries(
            tenant_id, "GROUP BY session_id ORDER BY last_at DESC, session_id LIMIT $2", limit
        )

    async def _summaries(
        self, tenant_id: str, rest: str, argument: str | int
    ) -> list[SessionSummary]:
        rows = await self._pool.fetch(
            f"""SELECT min(session_id) AS session_id, count(*) AS n,
                      min(created_at) AS first_at, max(created_at) AS last_at,
                      array_agg(DISTINCT role || coalesce(':' || name, '')) AS participants,
                      (array_agg(pos_ms ORDER BY pos_ms DESC, pos_seq DESC))[1] AS ms,
                      (array_agg(pos_seq ORDER BY pos_ms DESC, pos_seq DESC))[1] AS seq
               FROM amem_messages WHERE tenant_id = $1 {rest}""",
            tenant_id,
            argument,
        )
        return [
            SessionSummary(
                tenant_id=tenant_id,
                session_id=row["session_id"],
                message_count=row["n"],
                participants=frozenset(row["participants"]),
                first_at=row["first_at"],
                last_at=row["last_at"],
                last_position=Position(row["ms"], row["seq"]),
            )
            for row in rows
            if row["n"]
        ]

    async def recent(self, tenant_id: str, session_id: str, *, limit: int) -> list[StoredMessage]:
        rows = await self._pool.fetch(
            f"""SELECT {MESSAGE_COLUMNS} FROM amem_messages
                WHERE tenant_id = $1 AND session_id = $2
                ORDER BY pos_ms DESC, pos_seq DESC LIMIT $3""",
            tenant_id,
            session_id,
            limit,
        )
        return [_stored(r) for r in reversed(rows)]

    async def messages(self, tenant_id: str, keys: Sequence[MessageKey]) -> list[StoredMessage]:
        rows = await self._pool.fetch(
            f"""SELECT {MESSAGE_COLUMNS} FROM amem_messages
                WHERE tenant_id = $1 AND (session_id, message_id) IN
                      (SELECT * FROM unnest($2::text[], $3::text[]))
                ORDER BY pos_ms, pos_seq, session_id""",
            tenant_id,
            [s for s, _ in keys],
            [m for _, m in keys],
        )
        return [_stored(r) for r in rows]

    async def around(
        self, tenant_id: str, keys: Sequence[MessageKey], *, radius: int
    ) -> dict[MessageKey, list[Turn]]:
        rows = await self._pool.fetch(
            f"""WITH anchor AS (
                    SELECT m.session_id, m.message_id AS anchor, m.pos_ms, m.pos_seq
                    FROM amem_messages m
                    WHERE m.tenant_id = $1 AND (m.session_id, m.message_id) IN
                          (SELECT * FROM unnest($2::text[], $3::text[])))
                SELECT a.anchor, {_NEAR_COLUMNS} FROM anchor a CROSS JOIN LATERAL (
                    (SELECT {TURN_COLUMNS} FROM amem_messages b
                     WHERE b.tenant_id = $1 AND b.session_id = a.session_id
                       AND (b.pos_ms, b.pos_seq) < (a.pos_ms, a.pos_seq)
                     ORDER BY b.pos_ms DESC, b.pos_seq DESC LIMIT $4)
                    UNION ALL
                    (SELECT {TURN_COLUMNS} FROM amem_messages b
                     WHERE b.tenant_id = $1 AND b.session_id = a.session_id
                       AND (b.pos_ms, b.pos_seq) >= (a.pos_ms, a.pos_seq)
                     ORDER BY b.pos_ms, b.pos_seq LIMIT $4 + 1)) n
                ORDER BY a.anchor, n.pos_ms, n.pos_seq""",
            tenant_id,
            [s for s, _ in keys],
            [m for _, m in keys],
            radius,
        )
        windows: dict[MessageKey, list[Turn]] = {}
        for r in rows:
            windows.setdefault((r["session_id"], r["anchor"]), []).append(_turn(r))
        return windows

    async def lexical(self, tenant_id: str, query: str, *, limit: int, scope: Scope) -> list[Hit]:
        text = _search_text(query)
        if not text:
            return []
        where, args = scope_sql(scope, [tenant_id, text, float(self.bm25_k1), float(self.bm25_b)])
        # Any query word matches (websearch syntax: "a or b"); BM25 over the english
        # lexemes, with document frequencies and lengths taken within the scope. The
        # parameters are cast: untyped, Postgres reads them as integers (k1 1, b 0).
        rows = await self._pool.fetch(
            f"""WITH q AS (SELECT websearch_to_tsquery('english', $2) AS query),
            terms AS (SELECT DISTINCT lexeme FROM unnest(to_tsvector('english', $2))),
            scoped AS (SELECT session_id, message_id, tsv FROM amem_messages
                       WHERE tenant_id = $1 AND {where}),
            corpus AS (SELECT count(*)::float8 AS n,
                              coalesce(avg(length(tsv)), 1)::float8 AS avgdl FROM scoped),
            matched AS (SELECT m.session_id, m.message_id, m.tsv FROM scoped m, q
                        WHERE m.tsv @@ q.query),
            tf AS (SELECT m.session_id, m.message_id, u.lexeme,
                          coalesce(array_length(u.positions, 1), 1)::float8 AS tf,
                          length(m.tsv)::float8 AS dl
                   FROM matched m, unnest(m.tsv) u
                   WHERE u.lexeme IN (SELECT lexeme FROM terms)),
            df AS (SELECT lexeme, count(*)::float8 AS df FROM tf GROUP BY lexeme)
            SELECT tf.session_id, tf.message_id,
                   sum(ln(1 + (c.n - df.df + 0.5) / (df.df + 0.5))
                       * tf.tf * ($3::float8 + 1)
                       / (tf.tf + $3::float8
                          * (1 - $4::float8 + $4::float8 * tf.dl / greatest(c.avgdl, 1))))
                   AS score
            FROM tf JOIN df USING (lexeme) CROSS JOIN corpus c
            GROUP BY tf.session_id, tf.message_id
            ORDER BY score DESC, tf.session_id, tf.message_id LIMIT {int(limit)}""",
            *args,
        )
        return [Hit(session_id=r[0], message_id=r[1], score=float(r[2])) for r in rows]

    async def analyse(self, query: str) -> list[str]:
        text = _search_text(query)
        if not text:
            return []
        terms = await self._pool.fetchval(
            "SELECT array(SELECT DISTINCT lexeme FROM unnest(to_tsvector('english', $1)))", text
        )
        return list(terms)

    async def scan(
        self, tenant_id: str, *, scope: Scope, after: Position | None = None
    ) -> list[IndexedTurn]:
        where, args = scope_sql(scope, [tenant_id])
        since, args = after_sql(after, args)
        rows = await self._pool.fetch(
            f"""SELECT {MESSAGE_COLUMNS},
                       array(SELECT u.lexeme FROM unnest(tsv) u) AS lexemes,
                       array(SELECT coalesce(array_length(u.positions, 1), 1)
                             FROM unnest(tsv) u) AS counts
                FROM amem_messages WHERE tenant_id = $1 AND {where} AND {since}""",
            *args,
        )
        return [
            IndexedTurn(stored=_stored(r), terms=dict(zip(r["lexemes"], r["counts"], strict=True)))
            for r in rows
        ]


def message_columns(messages: Sequence[Record]) -> list[list[Any]]:
    ms = [r.message.message for r in messages]
    return [
        [m.tenant_id for m in ms],
        [m.session_id for m in ms],
        [m.id for m in ms],
        [r.partition for r in messages],
        [r.position.ms for r in messages],
        [r.position.seq for r in messages],
        [m.role for m in ms],
        [m.name for m in ms],
        [m.parent_id for m in ms],
        [m.agent_id for m in ms],
        [m.user_id for m in ms],
        [m.content for m in ms],
        [m.created_at for m in ms],
        [orjson.dumps(m.metadata).decode() for m in ms],
    ]


_WORD = re.compile(r"\w+")

TURN_COLUMNS = "session_id, message_id, role, name, pos_ms, pos_seq, created_at"
_NEAR_COLUMNS = ", ".join(f"n.{c}" for c in TURN_COLUMNS.split(", "))


def _search_text(query: str) -> str:
    """The query as full-text search reads it: its words, any of which may match."""
    return " or ".join(w for w in _WORD.findall(query) if w.lower() != "or")


def _turn(row: Any) -> Turn:
    return Turn(
        session_id=row["session_id"],
        message_id=row["message_id"],
        role=row["role"],
        name=row["name"],
        position=Position(row["pos_ms"], row["pos_seq"]),
        created_at=row["created_at"],
    )


def _stored(row: Any) -> StoredMessage:
    return StoredMessage(
        message=Message(
            tenant_id=row["tenant_id"],
            session_id=row["session_id"],
            id=row["message_id"],
            role=row["role"],
            name=row["name"],
            parent_id=row["parent_id"],
            agent_id=row["agent_id"],
            user_id=row["user_id"],
            content=row["content"],
            created_at=row["created_at"],
            metadata=orjson.loads(row["metadata"]),
        ),
        partition=row["partition"],
        position=Position(row["pos_ms"], row["pos_seq"]),
    )
