"""Erase that reaches the log server, not only the projections.

A ``session.erased`` event is applied by every projector like any other event: each store
(and the archive) deletes what it covers. What is left is on the log server: the session's
earlier entries in its log partition and enriched stream, dead letters of its entries, the
producer's dedup keys naming its messages, the errors recorded for its pending entries,
and the query logs that keep statements with their parameters (FalkorDB's
``telemetry{<graph>}`` streams and ``GRAPH.SLOWLOG``, the server's ``SLOWLOG``). A
``message.redacted`` event is the same for one message: its earlier entries, their dead
letters and errors, its dedup key; the redaction itself stays, naming only the id.

The enricher records each erase and redaction it forwards in ``amem:erasures:{N}``. Once
every consumer group of both streams has applied it, :func:`purge` removes all of the above
and the record; :func:`rewrite_log_files` then has the server rewrite its append-only file,
so its files no longer hold the text either. Workers purge what is ready on each retention
round; ``amem erase --wait`` and ``DELETE …?wait=true`` do it at once
(:func:`wait_and_purge`).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from functools import partial
from typing import cast

import orjson
import redis.asyncio as aioredis
from redis.exceptions import ResponseError

from logserver.nodes import on_every_node
from projectors.deadletter import ENTRY_PREFIX
from projectors.position import Position
from projectors.records import SOURCE_FIELD
from projectors.streams import pages
from schemas.constants import (
    ENRICHER,
    ENTRY_FIELD,
    KEY_PREFIX,
    dedup_key,
    enriched_key,
    erasures_key,
    group_name,
    log_key,
)
from schemas.events import MessageRedacted

DELETE_CHUNK = 1_000
"""Ids per XDEL."""
_log = logging.getLogger(__name__)


@dataclass(frozen=True, kw_only=True, slots=True)
class Erasure:
    """One ``session.erased`` or ``message.redacted`` event: what it covers and where it
    sits in both streams."""

    tenant_id: str
    session_id: str
    partition: int
    position: Position
    """The event's id in its log partition; the entries it covers before it go."""
    enriched_id: Position | None = None
    """Its id in the enriched stream (None: not forwarded yet, or not known)."""
    message_id: str | None = None
    """The redacted message; None: the whole session is erased."""

    @property
    def name(self) -> str:
        """``tenant/session``, or ``tenant/session#message`` for a redaction (``#`` is not
        in the id alphabet)."""
        session = f"{self.tenant_id}/{self.session_id}"
        return session if self.message_id is None else f"{session}#{self.message_id}"

    def covers(self, envelope: bytes | None) -> bool:
        """Whether a stream entry's envelope (valid or not) is of what this erases: any
        entry of the session, or for a redaction one naming the message as its ``id``."""
        doc = _document(envelope)
        if doc is None or (doc.get("tenant_id"), doc.get("session_id")) != (
            self.tenant_id,
            self.session_id,
        ):
            return False
        if self.message_id is None:
            return True
        payload = doc.get("payload")
        return isinstance(payload, dict) and payload.get("id") == self.message_id


@dataclass(kw_only=True, slots=True)
class Residue:
    """What of an erased session a place still holds (or held, for a purge)."""

    places: dict[str, int] = field(default_factory=dict)

    def add(self, place: str, count: int) -> None:
        if count:
            self.places[place] = self.places.get(place, 0) + count

    @property
    def total(self) -> int:
        return sum(self.places.values())


async def recorded(redis: aioredis.Redis, partitions: int) -> list[Erasure]:
    """The erasures the enricher recorded and no purge has finished yet."""
    out = []
    for n in range(partitions):
        pending = cast(dict[bytes, bytes], await redis.hgetall(erasures_key(n)))
        for entry_id, value in pending.items():
            enriched, _, envelope = value.partition(b" ")
            tenant, session = session_of(envelope)
            if tenant is None or session is None:
                continue
            out.append(
                Erasure(
                    tenant_id=tenant,
                    session_id=session,
                    partition=n,
                    position=Position.parse(entry_id),
                    enriched_id=Position.parse(enriched),
                    message_id=redacted_message(envelope),
                )
            )
    return out


async def waiting_for(redis: aioredis.Redis, erasure: Erasure) -> list[str]:
    """The consumer groups that have not applied the erase yet (empty: every one has)."""
    if erasure.enriched_id is None:
        return ["the enricher (the erase is not forwarded yet)"]
    waiting = []
    for key, at in (
        (log_key(erasure.partition), erasure.position),
        (enriched_key(erasure.partition), erasure.enriched_id),
    ):
        for group in cast(list[dict[str, object]], await redis.xinfo_groups(key)):
            name = cast(bytes, group["name"]).decode()
            if not await _applied(redis, key, group, at):
                waiting.append(f"{name} on {key}")
    return waiting


async def _applied(redis: aioredis.Redis, key: str, group: dict[str, object], at: Position) -> bool:
    """Whether the group (an ``XINFO GROUPS`` row) has applied entry ``at`` of ``key``."""
    if Position.parse(cast(bytes, group["last-delivered-id"])) < at:
        return False
    if cast(int, group["pending"]) == 0:
        return True
    oldest = await redis.xpending(key, cast(bytes, group["name"]))
    # None: what was pending when XINFO answered has been acknowledged since.
    return oldest["min"] is None or Position.parse(oldest["min"]) > at


async def purge(redis: aioredis.Redis, erasure: Erasure, *, delete: bool = True) -> Residue:
    """Remove (``delete=False``: count) what the log server holds of the erased session or
    redacted message."""
    found = Residue()
    n = erasure.partition
    log_ids = await _session_entries(redis, log_key(n), erasure, enriched=False)
    enriched_ids = await _session_entries(redis, enriched_key(n), erasure, enriched=True)
    found.add("log", len(log_ids))
    found.add("enriched stream", len(enriched_ids))
    gone = {log_key(n): set(log_ids), enriched_key(n): set(enriched_ids)}
    if delete:
        for key, ids in ((log_key(n), log_ids), (enriched_key(n), enriched_ids)):
            for i in range(0, len(ids), DELETE_CHUNK):
                await redis.xdel(key, *ids[i : i + DELETE_CHUNK])
    async for dlq in redis.scan_iter(match=f"{KEY_PREFIX}:dlq:*", _type="stream"):
        letters = await _dead_letters(redis, dlq, erasure, gone)
        found.add("dead letters", len(letters))
        if delete and letters:
            await redis.xdel(dlq, *letters)
    async for errors in redis.scan_iter(match=f"{KEY_PREFIX}:errors:*", _type="hash"):
        fields = [f"{key}|{i.decode()}" for key, ids in gone.items() for i in ids]
        if fields:
            recorded_errors = await redis.hmget(errors, fields)
            stale = [f for f, v in zip(fields, recorded_errors, strict=True) if v]
            found.add("recorded errors", len(stale))
            if delete and stale:
                await redis.hdel(errors, *stale)
    if erasure.message_id is None:
        pattern = _escape_glob(
            dedup_key(n, "msg", erasure.tenant_id, erasure.session_id, "\0")
        ).replace("\0", "*")
        named = [k async for k in redis.scan_iter(match=pattern, count=10_000)]
    else:
        named = [dedup_key(n, "msg", erasure.tenant_id, erasure.session_id, erasure.message_id)]
    # Each key holds its entry's id: keys of messages appended since the erase stay.
    values = cast(list[bytes | None], await redis.mget(named)) if named else []
    dedup = [
        k for k, v in zip(named, values, strict=True) if v and Position.parse(v) < erasure.position
    ]
    found.add("dedup keys", len(dedup))
    if delete and dedup:
        await redis.delete(*dedup)
    found.add("query logs", await _query_logs(redis, erasure, delete=delete))
    if delete:
        await redis.hdel(erasures_key(n), str(erasure.position))
    return found


async def purge_ready(redis: aioredis.Redis, partitions: int) -> list[tuple[Erasure, Residue]]:
    """Purge every recorded erasure every group has applied; rewrite the log files after."""
    ready = [e for e in await recorded(redis, partitions) if not await waiting_for(redis, e)]
    done = [(erasure, await purge(redis, erasure)) for erasure in ready]
    if done:
        await rewrite_log_files(redis)
    return done


async def rewrite_log_files(redis: aioredis.Redis, *, timeout_s: float = 120.0) -> str:
    """Have the server, or every node of a cluster (replicas too: each keeps its own
    append-only file), rewrite its append-only file from what it holds now.

    Returns ``rewritten``, or why not (for a cluster, the first node that did not, named):
    no append-only file (Dragonfly persists by snapshots; see docs/retention.md), or the
    server does not rewrite on demand.
    """
    outcomes = await on_every_node(redis, partial(_rewrite_node, timeout_s=timeout_s))
    failed = [o for o in outcomes if o != REWRITTEN]
    if not failed:
        return REWRITTEN
    return (
        failed[0] if len(outcomes) == 1 else f"{len(failed)} of {len(outcomes)} nodes: {failed[0]}"
    )


REWRITTEN = "rewritten"


async def _rewrite_node(redis: aioredis.Redis, *, timeout_s: float) -> str:
    try:
        persistence = await redis.info("persistence")
    except ResponseError:
        return "not supported by this server"
    if not persistence.get("aof_enabled"):
        return "no append-only file"
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            await redis.bgrewriteaof()
            break
        except ResponseError as exc:
            # A rewrite already running may have started before the purge: wait for it,
            # then ask for ours.
            if "in progress" not in str(exc) or time.monotonic() > deadline:
                raise
            await asyncio.sleep(0.1)
    while time.monotonic() < deadline:
        info = await redis.info("persistence")
        if not info["aof_rewrite_in_progress"] and not info["aof_rewrite_scheduled"]:
            if info.get("aof_last_bgrewrite_status", "ok") != "ok":
                return "the rewrite failed: see the server's log"
            return REWRITTEN
        await asyncio.sleep(0.05)
    return f"still rewriting after {timeout_s:.0f} s"


async def wait_and_purge(
    redis: aioredis.Redis, erasures: Sequence[Erasure], partitions: int, *, timeout_s: float
) -> tuple[Residue, dict[str, list[str]], str]:
    """Wait until every group applied each erase, purge, rewrite the log files.

    Returns what was purged, what each erase still waited for when the time ran out (empty
    when all were purged) and the outcome of the rewrite.
    """
    purged, todo = Residue(), list(erasures)
    deadline = time.monotonic() + timeout_s
    while True:
        # Forwarded first, then the records: an erase forwarded and not recorded was purged
        # (by a worker's round). The other order would take one forwarded in between for
        # purged.
        forwarded = {_name(e): await _forwarded(redis, e) for e in todo}
        known = {(e.partition, e.position): e for e in await recorded(redis, partitions)}
        waiting: dict[str, list[str]] = {}
        for erasure in todo:
            current = known.get((erasure.partition, erasure.position))
            if current is None:
                if not forwarded[_name(erasure)]:
                    waiting[_name(erasure)] = ["the enricher (the erase is not forwarded yet)"]
                continue
            left = await waiting_for(redis, current)
            if left:
                waiting[_name(erasure)] = left
                continue
            for place, count in (await purge(redis, current)).places.items():
                purged.add(place, count)
        todo = [e for e in todo if _name(e) in waiting]
        if not todo or time.monotonic() > deadline:
            break
        await asyncio.sleep(0.1)
    rewrite = "not run: erases still pending" if todo else await rewrite_log_files(redis)
    return purged, waiting, rewrite


def _name(erasure: Erasure) -> str:
    return f"{erasure.name}@{erasure.position}"


async def _forwarded(redis: aioredis.Redis, erasure: Erasure) -> bool:
    """Whether the enricher has forwarded the erase (then a missing record means purged)."""
    key = log_key(erasure.partition)
    for group in cast(list[dict[str, object]], await redis.xinfo_groups(key)):
        if cast(bytes, group["name"]).decode() == group_name(ENRICHER):
            return await _applied(redis, key, group, erasure.position)
    return False


async def _session_entries(
    redis: aioredis.Redis, key: str, erasure: Erasure, *, enriched: bool
) -> list[bytes]:
    """Ids of the entries the erase covers before it (by their log position)."""
    out: list[bytes] = []
    async for page in pages(redis, key):
        for entry_id, fields in page:
            at = Position.parse(fields[SOURCE_FIELD.encode()] if enriched else entry_id)
            if at >= erasure.position:
                return out
            if erasure.covers(fields.get(ENTRY_FIELD.encode())):
                out.append(entry_id)
    return out


async def _dead_letters(
    redis: aioredis.Redis, dlq: bytes, erasure: Erasure, gone: dict[str, set[bytes]]
) -> list[bytes]:
    """Dead letters of the entries the erase covers from before it."""
    out: list[bytes] = []
    before = {log_key(erasure.partition), enriched_key(erasure.partition)}
    async for page in pages(redis, dlq.decode()):
        for letter_id, fields in page:
            stream = fields.get(b"stream", b"").decode()
            entry = fields.get(b"entry_id", b"")
            if stream not in before or not erasure.covers(
                fields.get(ENTRY_PREFIX + ENTRY_FIELD.encode())
            ):
                continue
            source = fields.get(ENTRY_PREFIX + SOURCE_FIELD.encode(), entry)
            if entry in gone[stream] or Position.parse(source) < erasure.position:
                out.append(letter_id)
    return out


async def _query_logs(redis: aioredis.Redis, erasure: Erasure, *, delete: bool) -> int:
    """Entries of the server's logs of statements with their parameters that name the
    session (or the redacted message); a purge clears these logs whole (they keep no entry
    worth an erased text)."""
    needle = orjson.dumps(erasure.message_id or erasure.session_id)
    held = 0
    async for key in redis.scan_iter(match="telemetry{*}", _type="stream"):
        async for page in pages(redis, key.decode()):
            held += sum(any(needle in v for v in f.values()) for _, f in page)
        if delete:
            await redis.delete(key)
    # Every node keeps its own slow log.
    logs = await on_every_node(redis, lambda node: node.slowlog_get(-1))
    slow = [e for log in cast(list[list[dict[str, object]]], logs) for e in log]
    held += sum(needle in cast(bytes, e.get("command", b"")) for e in slow)
    if delete:
        await on_every_node(redis, lambda node: node.slowlog_reset())
        async for graph in redis.scan_iter(_type="graphdata"):
            try:
                await redis.execute_command("GRAPH.SLOWLOG", graph, "RESET")  # type: ignore[no-untyped-call]
            except ResponseError:
                _log.debug("no slow log to reset on %r", graph)
    return held


def _document(envelope: bytes | None) -> dict[str, object] | None:
    """An envelope's JSON object, even one that fails validation; None if it is none."""
    if not envelope:
        return None
    try:
        doc = orjson.loads(envelope)
    except orjson.JSONDecodeError:
        return None
    return doc if isinstance(doc, dict) else None


def session_of(envelope: bytes | None) -> tuple[str | None, str | None]:
    """Tenant and session an envelope names, even one that fails validation (a poison
    entry still names them when its JSON does)."""
    doc = _document(envelope) or {}
    tenant, session = doc.get("tenant_id"), doc.get("session_id")
    return (
        tenant if isinstance(tenant, str) else None,
        session if isinstance(session, str) else None,
    )


def redacted_message(envelope: bytes | None) -> str | None:
    """The message a ``message.redacted`` envelope names; None for any other envelope."""
    doc = _document(envelope) or {}
    payload = doc.get("payload")
    if doc.get("type") != MessageRedacted.TYPE or not isinstance(payload, dict):
        return None
    message = payload.get("message_id")
    return message if isinstance(message, str) else None


def _escape_glob(text: str) -> str:
    return "".join("\\" + c if c in "*?[]\\" else c for c in text)
