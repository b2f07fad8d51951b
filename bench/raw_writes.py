"""The raw side of ``bench/project.py``: the same rows, the same client, none of the logic.

Each writer takes the batches a projector applied and writes the rows the store ends up
holding into scratch tables, collections or graphs, by the plainest bulk method that gives
them: multi-row inserts for Postgres and pgvector, point upserts for Qdrant, ``CREATE`` for
the graph's messages and edges (``MERGE`` only for the session and entity nodes batches
share), plain ``$set`` upserts of Mongo's session documents (the loader keeps each
session's aggregates in memory). No tombstones, positions, relinking, order-insensitive
operators or acknowledgements. Each returns the seconds taken. ``graph_nodes`` and
``mongo_messages`` write the same messages more cheaply still, as other rows.
"""

from __future__ import annotations

import shutil
import tempfile
import time
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

import asyncpg
from falkordb.asyncio import FalkorDB  # type: ignore[import-untyped]
from pymongo import AsyncMongoClient, UpdateOne
from qdrant_client import AsyncQdrantClient, models

from projectors.records import Record, split
from projectors.stores.archive import event_columns
from projectors.stores.cypher import KEYS, LOOKUPS, _message_row, upsert
from projectors.stores.mongo import Entry, escape, session_key, time_text
from projectors.stores.pgvector import _vector_literal
from projectors.stores.postgres import MESSAGE_COLUMNS, message_columns
from projectors.stores.qdrant import QdrantVectorStore
from stack.settings import Settings

Batches = Sequence[Sequence[Record]]
RawWriter = Callable[[Settings, Batches], Awaitable[float]]


def _messages(batches: Batches) -> list[list[Record]]:
    return [split(batch)[0] for batch in batches]


async def postgres(settings: Settings, batches: Batches) -> float:
    """Messages and archive rows, one transaction of two multi-row INSERTs per batch."""
    conn = await asyncpg.connect(settings.require_postgres())
    try:
        for table in ("messages", "archive"):
            await conn.execute(f"DROP TABLE IF EXISTS bench_raw_{table}")
            await conn.execute(f"CREATE TABLE bench_raw_{table} (LIKE amem_{table} INCLUDING ALL)")
        started = time.perf_counter()
        for batch in _messages(batches):
            async with conn.transaction():
                await conn.execute(
                    f"""INSERT INTO bench_raw_messages ({MESSAGE_COLUMNS})
                    SELECT * FROM unnest($1::text[], $2::text[], $3::text[], $4::int[],
                        $5::bigint[], $6::bigint[], $7::text[], $8::text[], $9::text[],
                        $10::text[], $11::text[], $12::timestamptz[], $13::jsonb[])""",
                    *message_columns(batch),
                )
                await conn.execute(
                    """INSERT INTO bench_raw_archive SELECT * FROM unnest($1::int[],
                        $2::bigint[], $3::bigint[], $4::text[], $5::text[], $6::text[],
                        $7::text[])""",
                    *event_columns(batch),
                )
        return time.perf_counter() - started
    finally:
        await conn.close()


async def pgvector(settings: Settings, batches: Batches) -> float:
    conn = await asyncpg.connect(settings.require_postgres())
    try:
        await conn.execute("DROP TABLE IF EXISTS bench_raw_vectors")
        await conn.execute("CREATE TABLE bench_raw_vectors (LIKE amem_vectors INCLUDING ALL)")
        started = time.perf_counter()
        for batch in _messages(batches):
            rows: list[Any] = []
            for r in batch:
                e = r.enrichment
                assert e is not None
                m = r.message.message
                rows.append(
                    (
                        m.tenant_id,
                        m.session_id,
                        m.id,
                        r.position.ms,
                        r.position.seq,
                        r.content_hash,
                        e.model,
                        e.tokens,
                        _vector_literal(e.vector),
                    )
                )
            columns = [list(c) for c in zip(*rows, strict=True)]
            await conn.execute(
                """INSERT INTO bench_raw_vectors SELECT t, s, i, ms, seq, h, model, tok,
                       v::vector
                   FROM unnest($1::text[], $2::text[], $3::text[], $4::bigint[],
                               $5::bigint[], $6::text[], $7::text[], $8::int[], $9::text[])
                        AS x(t, s, i, ms, seq, h, model, tok, v)""",
                *columns,
            )
        return time.perf_counter() - started
    finally:
        await conn.close()


async def mongo(settings: Settings, batches: Batches) -> float:
    """The adapter's session documents, one ``bulk_write`` of plain ``$set`` upserts per batch.

    The loader keeps each session's participants, first and last times and last position
    in memory and sets them, where the adapter uses ``$addToSet``/``$min``/``$max``; no
    revision, no tombstones.
    """
    client: AsyncMongoClient[dict[str, Any]] = AsyncMongoClient(settings.require_mongo())
    seen: dict[str, dict[str, Any]] = {}
    try:
        collection = client["amem_bench"]["raw_sessions"]
        await collection.drop()
        started = time.perf_counter()
        for batch in _messages(batches):
            updates: dict[str, dict[str, Any]] = {}
            for r in batch:
                m = r.message.message
                key = session_key(m.tenant_id, m.session_id)
                entry = Entry.of(r)
                at = time_text(m.created_at)
                known = seen.setdefault(
                    key, {"participants": set(), "first_at": at, "last_at": at, "pos": ""}
                )
                known["participants"].add(entry.who)
                known["first_at"] = min(known["first_at"], at)
                known["last_at"] = max(known["last_at"], at)
                known["pos"] = max(known["pos"], r.position.key)
                fields = updates.setdefault(
                    key, {"tenant_id": m.tenant_id, "session_id": m.session_id}
                )
                fields[f"messages.{escape(m.id)}"] = entry.text()
            for key, fields in updates.items():  # the aggregates once per session touched
                known = seen[key]
                fields |= {
                    "participants": sorted(known["participants"]),
                    "first_at": known["first_at"],
                    "last_at": known["last_at"],
                    "last_position": known["pos"],
                }
            if updates:
                await collection.bulk_write(
                    [UpdateOne({"_id": k}, {"$set": f}, upsert=True) for k, f in updates.items()],
                    ordered=False,
                )
        return time.perf_counter() - started
    finally:
        await client.close()


async def mongo_messages(settings: Settings, batches: Batches) -> float:
    """One document per message, ``insert_many`` per batch: the floor of any Mongo write."""
    client: AsyncMongoClient[dict[str, Any]] = AsyncMongoClient(settings.require_mongo())
    try:
        collection = client["amem_bench"]["raw_messages"]
        await collection.drop()
        started = time.perf_counter()
        for batch in _messages(batches):
            docs = []
            for r in batch:
                m = r.message.message
                docs.append(
                    {
                        "_id": f"{m.tenant_id}|{m.session_id}|{m.id}",
                        "tenant_id": m.tenant_id,
                        "session_id": m.session_id,
                        "pos": r.position.key,
                        "h": r.content_hash,
                        "role": m.role,
                        "name": m.name,
                        "at": m.created_at.isoformat(),
                    }
                )
            if docs:
                await collection.insert_many(docs, ordered=False)
        return time.perf_counter() - started
    finally:
        await client.close()


async def qdrant(settings: Settings, batches: Batches) -> float:
    """The adapter's points, ``upsert`` per batch, into a scratch local-mode collection."""
    path = tempfile.mkdtemp(prefix="amem-bench-qdrant-", dir="/var/tmp")
    points_of = QdrantVectorStore(path=path)._point  # builds points; opens nothing
    client = AsyncQdrantClient(path=path)
    try:
        await client.create_collection(
            "raw", vectors_config=models.VectorParams(size=384, distance=models.Distance.COSINE)
        )
        started = time.perf_counter()
        for batch in _messages(batches):
            if batch:
                await client.upsert("raw", [points_of(r) for r in batch], wait=True)
        return time.perf_counter() - started
    finally:
        await client.close()
        shutil.rmtree(path, ignore_errors=True)


RAW_GRAPH = """
UNWIND $messages AS r
MERGE (s:Session {key: r.session_key, tenant_id: r.tenant_id})
CREATE (m:Message)-[:IN_SESSION]->(s)
SET m = r.props
WITH count(*) AS done
UNWIND $mentions AS r
MATCH (m:Message {key: r.key, tenant_id: r.tenant_id})
MERGE (e:Entity {key: r.entity_key, tenant_id: r.tenant_id})
ON CREATE SET e.name = r.name
CREATE (m)-[:MENTIONS]->(e)
WITH count(*) AS done
UNWIND $links AS r
MATCH (a:Message {key: r.a, tenant_id: r.tenant_id})
MATCH (b:Message {key: r.b, tenant_id: r.tenant_id})
CREATE (a)-[:NEXT]->(b)
WITH count(*) AS done
UNWIND $replies AS r
MATCH (a:Message {key: r.key, tenant_id: r.tenant_id})
MATCH (b:Message {key: r.parent_key, tenant_id: r.tenant_id})
CREATE (a)-[:REPLY_TO]->(b)
"""
"""The elements the projection writes, bulk-loaded: CREATE where the adapter MERGEs (shared
Session and Entity nodes excepted), NEXT from the loader's own memory of each session's
last message, no tombstones, relinking or stale-edge cleanup."""


async def _into_scratch_graph(settings: Settings, load: Callable[[Any], Awaitable[None]]) -> float:
    db = FalkorDB.from_url(settings.require_redis())
    scratch = db.select_graph("amem_bench_raw")
    try:
        for label, prop in (*KEYS, *LOOKUPS):  # the adapter's indexes
            await scratch.query(f"CREATE INDEX FOR (n:{label}) ON (n.{prop})")
        started = time.perf_counter()
        await load(scratch)
        elapsed = time.perf_counter() - started
        await scratch.delete()
        return elapsed
    finally:
        pool = db.connection.connection_pool
        await db.aclose()
        await pool.disconnect()


async def graph(settings: Settings, batches: Batches) -> float:
    """The adapter's nodes and edges (:data:`RAW_GRAPH`), one statement per batch."""

    async def load(scratch: Any) -> None:
        last: dict[str, str] = {}  # session key -> its latest message key so far
        for batch in _messages(batches):
            if not batch:
                continue
            params = upsert(batch).params
            links = []
            for row in params["messages"]:
                if row["session_key"] in last:
                    a = last[row["session_key"]]
                    links.append({"a": a, "b": row["key"], "tenant_id": row["tenant_id"]})
                last[row["session_key"]] = row["key"]
            await scratch.query(RAW_GRAPH, {**params, "links": links})

    return await _into_scratch_graph(settings, load)


async def graph_nodes(settings: Settings, batches: Batches) -> float:
    """Only the message nodes, ``UNWIND … CREATE`` per batch: the floor of any graph write."""

    async def load(scratch: Any) -> None:
        for batch in _messages(batches):
            rows = [_message_row(r)["props"] for r in batch]
            if rows:
                await scratch.query(
                    "UNWIND $rows AS r CREATE (m:Message) SET m = r", {"rows": rows}
                )

    return await _into_scratch_graph(settings, load)


RAW_WRITERS: dict[str, RawWriter] = {
    "postgres": postgres,
    "pgvector": pgvector,
    "mongo": mongo,
    "qdrant": qdrant,
    "graph": graph,
}
