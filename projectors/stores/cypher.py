"""The one Cypher projection of the message and entity graph, shared by FalkorDB and Neo4j.

Graph model (every node carries ``tenant_id``; keys join ids with ``|``, which ids cannot hold)::

    (:Message {key, tenant_id, session_id, message_id, user_id, pos, content_hash, role,
               name, created_at, parent_id, parent_key})
    (:Message)-[:IN_SESSION]->(:Session {key, tenant_id, session_id})
    (:Message)-[:NEXT]->(:Message)        log-consecutive messages of a session
    (:Message)-[:REPLY_TO]->(:Message)    a message to its parent, once both are there
    (:Message)-[:MENTIONS]->(:Entity {key, tenant_id, name})   entities are per tenant
    (:Tombstone {key, tenant_id, session_id, pos})             a session's furthest erase
    (:Redaction {key, tenant_id, session_id, message_id, pos}) a message's furthest redaction

``pos`` is :attr:`Position.key`, whose string order is the log order. Everything is MERGEd
by deterministic keys, and each batch is one statement: ``UNWIND`` over the rows, its steps
chained by ``WITH count(*) AS done`` (an aggregate always yields one row, so a step that
matches nothing does not stop the next). Every MATCH and MERGE names the tenant on each
node it binds.

The statements keep to clauses FalkorDB 4.16 and Neo4j 5 both run alike (no ``CALL {}``
subqueries, ``FOREACH``, ``EXISTS {}`` or APOC), and work around three FalkorDB bugs noted
where they bite. Schema DDL and ``reset`` differ and stay in the adapters.
"""

from __future__ import annotations

from abc import abstractmethod
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar

from projectors.position import Position
from projectors.records import Digest, MessageAddress, Record, SessionKey
from projectors.store import GraphStore, Hit, MessageKey, Scope, TombstoneProjection

SEP = "|"
"""Key separator: not in the id alphabet, so ``tenant|session|id`` is unambiguous."""

LABELS = ("Session", "Message", "Entity", "Tombstone", "Redaction")
KEYS: tuple[tuple[str, str], ...] = tuple((label, "key") for label in LABELS)
"""Unique key of each label (a uniqueness constraint where the store has them)."""
LOOKUPS: tuple[tuple[str, str], ...] = (("Message", "parent_key"),)
"""Further indexed properties: replies that arrived before their parent.

Deliberately no index on ``Message.tenant_id``: FalkorDB's planner would then start a
session's messages from every message of the tenant instead of from the session's key.
"""


def session_key(tenant_id: str, session_id: str) -> str:
    return f"{tenant_id}{SEP}{session_id}"


def message_key(tenant_id: str, session_id: str, message_id: str) -> str:
    return f"{tenant_id}{SEP}{session_id}{SEP}{message_id}"


def entity_key(tenant_id: str, name: str) -> str:
    return f"{tenant_id}{SEP}{name}"


@dataclass(frozen=True, slots=True)
class Statement:
    text: str
    params: dict[str, Any] = field(default_factory=dict)
    write: bool = False


# Steps. `row` is the UNWIND variable; a step ends in `WITH count(*) AS done` when more follow.
# A match from a key lookup is split: `MATCH (anchor {key, tenant_id}) WITH … MATCH (anchor)-…`.
# Unsplit, FalkorDB's planner may start from the far node, i.e. scan every Message.

_GC_ENTITIES = """
WITH DISTINCT e
SET e.name = e.name
WITH e
OPTIONAL MATCH (e)<-[x:MENTIONS]-(:Message)
WITH e, count(x) AS mentions
WHERE mentions = 0
DELETE e
WITH count(*) AS done
"""
"""Follows a step binding `e` to entities that lost a mention: drops those nobody mentions.

The no-op SET write-locks the entity in Neo4j before the mentions are counted, so a
concurrent batch adding a mention either commits first (and is counted) or waits."""

_MESSAGES = (
    """
UNWIND $messages AS row
MERGE (s:Session {key: row.session_key, tenant_id: row.tenant_id})
ON CREATE SET s.tail_pos = '', s.tail_key = '', s.relink = false
SET s.session_id = row.session_id
MERGE (m:Message {key: row.key, tenant_id: row.tenant_id})
MERGE (m)-[:IN_SESSION]->(s)
WITH s, m, row, m.pos AS before
WHERE before IS NULL OR before <= row.pos
SET s.relink = CASE WHEN before < row.pos THEN true ELSE s.relink END
SET m = row.props
WITH m, row, before
OPTIONAL MATCH (m)-[r:REPLY_TO]->(p:Message {tenant_id: row.tenant_id})
WHERE before IS NOT NULL AND (row.parent_key IS NULL OR p.key <> row.parent_key)
DELETE r
WITH DISTINCT m, row.tenant_id AS tenant_id, row.entities AS entities, before
OPTIONAL MATCH (m)-[r:MENTIONS]->(e:Entity {tenant_id: tenant_id})
WHERE before IS NOT NULL AND NOT e.name IN entities
DELETE r
WITH e
WHERE e IS NOT NULL
"""
    + _GC_ENTITIES
)
"""Each message written, and what its previous copy had and it has not dropped.

The same id twice in the log: the copy furthest in the log wins, whatever the arrival
order (an earlier copy never overwrites). That keeps tombstones exact: a copy appended
after an erase survives it, one before it does not. ``m.pos = row.pos`` in later steps: the
winner. A winner replacing an earlier copy flags its session for a relink (see `_NEXT`);
a message that was there before loses its REPLY_TO to another parent and the mentions it
no longer has (another copy, or a re-enrichment, had them), and entities nobody mentions
any more go with them. A new message has nothing to clean (``before`` is null).

No ``WHERE`` filters rows after the ``SET``: FalkorDB 4.16 applies such a filter, when it
names only variables bound before the ``SET``, ahead of it, and the rows it drops are never
written (``WITH m, row SET m = row.props WITH m, row WHERE …`` left filtered nodes empty).
The conditions sit in the ``OPTIONAL MATCH`` instead, which keeps every row."""
# `SET m = row.props` (every property, key included) rather than `SET m.a = …, m.b = …`:
# FalkorDB 4.16 mangles a node when one SET or REMOVE drops several properties (setting
# name and parent_key to null left parent_key in place and dropped another property).

_MENTIONS = """
UNWIND $mentions AS row
MATCH (m:Message {key: row.key, tenant_id: row.tenant_id})
WHERE m.pos = row.pos
MERGE (e:Entity {key: row.entity_key, tenant_id: row.tenant_id})
ON CREATE SET e.name = row.name
MERGE (m)-[:MENTIONS]->(e)
WITH count(*) AS done
"""

_REPLIES = """
UNWIND $replies AS row
MATCH (m:Message {key: row.key, tenant_id: row.tenant_id})
WHERE m.pos = row.pos
MATCH (p:Message {key: row.parent_key, tenant_id: row.tenant_id})
MERGE (m)-[:REPLY_TO]->(p)
WITH count(*) AS done
UNWIND $messages AS row
MATCH (c:Message {parent_key: row.key, tenant_id: row.tenant_id})
MATCH (m:Message {key: row.key, tenant_id: row.tenant_id})
MERGE (c)-[:REPLY_TO]->(m)
WITH count(*) AS done
"""
"""REPLY_TO from whichever of child and parent arrives second: child → parent if the parent
is there, then every child already there (``parent_key`` is indexed) → the new message."""

_RELINK = """
MATCH (s)<-[:IN_SESSION]-(m:Message {tenant_id: row.tenant_id})
WITH row, s, m
ORDER BY m.pos
WITH row.tenant_id AS tenant_id, s, collect(m) AS ms
SET s.tail_pos = ms[size(ms) - 1].pos, s.tail_key = ms[size(ms) - 1].key, s.relink = false
WITH tenant_id, ms
UNWIND range(0, size(ms) - 1) AS i
WITH tenant_id, ms[i] AS a, CASE WHEN i + 1 < size(ms) THEN ms[i + 1] END AS b
OPTIONAL MATCH (a)-[r:NEXT]->(x:Message {tenant_id: tenant_id})
WHERE b IS NULL OR x.key <> b.key
DELETE r
WITH DISTINCT a, b
WHERE b IS NOT NULL
MERGE (a)-[:NEXT]->(b)
"""
"""Follows a step binding `row` and its session `s`: NEXT recomputed over the whole session.

Each message keeps one NEXT edge, to its successor in `pos` order; edges to anything else
(a message arrived in between, out of order) are deleted, missing ones merged, and the
session's tail (`tail_pos`, `tail_key`: its last message) is set. Deleted messages take
their edges along (DETACH DELETE) and the gap is bridged here. A scan of the session: the
slow path, for batches that do not simply extend it."""

_NEXT = (
    """
UNWIND $sessions AS row
MATCH (s:Session {key: row.session_key, tenant_id: row.tenant_id})
WITH row, s
WHERE s.relink OR s.tail_pos IS NULL OR s.tail_pos >= row.first_pos
"""
    + _RELINK
    + """
WITH count(*) AS done
UNWIND $sessions AS row
MATCH (s:Session {key: row.session_key, tenant_id: row.tenant_id})
WITH row, s
WHERE s.tail_pos IS NOT NULL AND s.tail_pos < row.first_pos
WITH row, s, [s.tail_key] + row.keys AS chain
SET s.tail_pos = row.last_pos, s.tail_key = row.last_key
WITH row, chain
UNWIND range(0, size(chain) - 2) AS i
MATCH (a:Message {key: chain[i], tenant_id: row.tenant_id})
MATCH (b:Message {key: chain[i + 1], tenant_id: row.tenant_id})
MERGE (a)-[:NEXT]->(b)
"""
)
"""NEXT after an upsert: appended at the session's tail when the batch only extends it.

The fast path, the usual one: every message of the batch comes after the session's tail
and none replaced an earlier copy of its id (`s.relink`, set by `_MESSAGES`). Then the old
tail links to the batch's first message, and the batch's messages (``row.keys``, in log
order) to one another: a few index lookups, whatever the session's length. Any other
batch (out of order, redelivered, a session made before sessions had a tail) takes
:data:`_RELINK`, which leaves the tail set, so the fast path then skips that session.
A new session's tail is ``''``, before every position; an erase resets it to that."""
# Concurrent batches of one session (Neo4j; FalkorDB runs one query at a time) must not
# each relink from a view lacking the other's messages: both statements SET a property of
# every Session they touch first, which write-locks it until commit (Neo4j locks on any
# SET, even to the same value), rows sorted by session to keep lock order. The tail is
# read under that lock.

UPSERT = _MESSAGES + _MENTIONS + _REPLIES + _NEXT

_DROP_MESSAGES = (
    """
OPTIONAL MATCH (m)-[:MENTIONS]->(e:Entity {tenant_id: row.tenant_id})
WITH m, collect(e) AS mentioned
DETACH DELETE m
WITH mentioned
UNWIND mentioned AS e
"""
    + _GC_ENTITIES
    + """
UNWIND $sessions AS row
MATCH (s:Session {key: row.session_key, tenant_id: row.tenant_id})
WITH row, s
"""
    + _RELINK
)
"""Follows a step binding `m` to messages and `row` to their erase or redaction: deletes
the messages, then the entities only they mentioned (no names are left behind), then
relinks NEXT over what is left of each of ``$sessions``; a session left empty keeps the
tail ``''`` the step set."""

DELETE_UPTO = (
    """
UNWIND $erased AS row
MATCH (s:Session {key: row.session_key, tenant_id: row.tenant_id})
SET s.session_id = row.session_id, s.tail_pos = '', s.tail_key = ''
WITH row, s
MATCH (s)<-[:IN_SESSION]-(m:Message {tenant_id: row.tenant_id})
WHERE m.pos <= row.pos
"""
    + _DROP_MESSAGES
)
"""Erased messages and what only they brought (see :data:`_DROP_MESSAGES`)."""

WRITE_TOMBSTONES = """
UNWIND $erased AS row
MERGE (t:Tombstone {key: row.session_key, tenant_id: row.tenant_id})
SET t.session_id = row.session_id,
    t.pos = CASE WHEN t.pos IS NULL OR t.pos < row.pos THEN row.pos ELSE t.pos END
"""

DELETE_REDACTED = (
    """
UNWIND $sessions AS row
MATCH (s:Session {key: row.session_key, tenant_id: row.tenant_id})
SET s.session_id = row.session_id, s.tail_pos = '', s.tail_key = ''
WITH count(*) AS done
UNWIND $redacted AS row
MATCH (m:Message {key: row.key, tenant_id: row.tenant_id})
WHERE m.pos <= row.pos
"""
    + _DROP_MESSAGES
)
"""Redacted messages, then the entities only they mentioned, then NEXT over the rest of
their sessions: the turns before and after a redacted one become consecutive, and its
replies keep their ``parent_id`` but lose their REPLY_TO edge. The sessions are written
first, which locks them against a concurrent upsert (see `_NEXT`)."""

WRITE_REDACTIONS = """
UNWIND $redacted AS row
MERGE (t:Redaction {key: row.key, tenant_id: row.tenant_id})
SET t.session_id = row.session_id, t.message_id = row.message_id,
    t.pos = CASE WHEN t.pos IS NULL OR t.pos < row.pos THEN row.pos ELSE t.pos END
"""

REDACTIONS = """
UNWIND $messages AS row
MATCH (t:Redaction {key: row.key, tenant_id: row.tenant_id})
RETURN t.tenant_id, t.session_id, t.message_id, t.pos
"""

TOMBSTONES = """
UNWIND $sessions AS row
MATCH (t:Tombstone {key: row.session_key, tenant_id: row.tenant_id})
RETURN t.tenant_id, t.session_id, t.pos
"""

DIGEST_TENANT = """
MATCH (s:Session {tenant_id: $tenant_id})
WITH s
MATCH (s)<-[:IN_SESSION]-(m:Message {tenant_id: $tenant_id})
RETURN m.tenant_id, m.session_id, m.message_id, m.content_hash
"""
DIGEST_ALL = """
MATCH (m:Message)
RETURN m.tenant_id, m.session_id, m.message_id, m.content_hash
"""

COUNT = "MATCH (m:Message) RETURN count(m)"

NEIGHBOURS = """
UNWIND $keys AS given
MATCH (m:Message {key: given, tenant_id: $tenant_id})
WITH m
MATCH (m)-[r:NEXT|REPLY_TO]-(h:Message {tenant_id: $tenant_id})
WHERE NOT h.key IN $keys AND <scope>
RETURN h.session_id AS session_id, h.message_id AS message_id, h.pos AS pos,
       count(r) AS paths
ORDER BY paths DESC, pos LIMIT $limit
UNION ALL
UNWIND $keys AS given
MATCH (m:Message {key: given, tenant_id: $tenant_id})
WITH m
MATCH (m)-[:MENTIONS]->(e:Entity {tenant_id: $tenant_id})
WITH m, e
WHERE <mentions> <= $common
MATCH (e)<-[:MENTIONS]-(h:Message {tenant_id: $tenant_id})
WHERE NOT h.key IN $keys AND <scope>
RETURN h.session_id AS session_id, h.message_id AS message_id, h.pos AS pos,
       count(e) AS paths
ORDER BY paths DESC, pos LIMIT $limit
"""
"""Hits one step away: next or previous turn, reply or parent, or a shared entity.

The given messages (``$keys``, of any sessions) are looked up by key first; ``<scope>`` is
the :class:`Scope` as a condition on the hit (:func:`scope_condition`), so a user's scope
reaches the user's other sessions through shared entities. Each path counts once: a given
message and a hit both NEXT and REPLY_TO give 2, each shared entity 1, each given message
the hit is next to 1. Entities more than ``$common`` messages mention (a speaker's name
in a long history) relate nothing in particular and would make one call traverse thousands
of mentions: they are not followed. ``<mentions>`` is the store's own cheap count of an
entity's mentions (the node's in-degree). Each half keeps its ``$limit`` best hits; the
halves are summed per hit in Python. ``count(r)``, not
``count(*)``: FalkorDB 4.16 counts an undirected two-type match once per hit under
``count(*)`` (a NEXT and a REPLY_TO between the same two messages gave 1).
"""


def scope_condition(scope: Scope) -> tuple[str, dict[str, str]]:
    """The scope as a Cypher condition on the hit ``h``, and its parameters."""
    params: dict[str, str] = {}
    terms = []
    if scope.session_id is not None:
        params["session_id"] = scope.session_id
        terms.append("h.session_id = $session_id")
    if scope.user_id is not None:
        params["user_id"] = scope.user_id
        terms.append("h.user_id = $user_id")
    return (f"({' OR '.join(terms)})" if terms else "true"), params


ENTITIES = """
MATCH (s:Session {key: $session_key, tenant_id: $tenant_id})
WITH s
MATCH (s)<-[:IN_SESSION]-(m:Message {tenant_id: $tenant_id})
      -[:MENTIONS]->(e:Entity {tenant_id: $tenant_id})
RETURN e.name, count(DISTINCT m)
"""


def _session_row(session: SessionKey) -> dict[str, str]:
    tenant_id, session_id = session
    return {
        "session_key": session_key(tenant_id, session_id),
        "tenant_id": tenant_id,
        "session_id": session_id,
    }


def _entities(record: Record) -> list[str]:
    names = record.enrichment.entities if record.enrichment is not None else ()
    return list(dict.fromkeys(names))


def _message_row(record: Record) -> dict[str, Any]:
    msg = record.message.message
    tenant_id, session_id = record.session
    key = message_key(tenant_id, session_id, msg.id)
    pos = record.position.key
    parent_key = message_key(tenant_id, session_id, msg.parent_id) if msg.parent_id else None
    props = {
        "key": key,
        "tenant_id": tenant_id,
        "session_id": session_id,
        "message_id": msg.id,
        "user_id": msg.user_id,
        "pos": pos,
        "content_hash": record.content_hash,
        "role": msg.role,
        "name": msg.name,
        "created_at": msg.created_at.isoformat(),
        "parent_id": msg.parent_id,
        "parent_key": parent_key,
    }
    return {
        **_session_row(record.session),
        "key": key,
        "pos": pos,
        "parent_key": parent_key,
        "entities": _entities(record),
        "props": props,
    }


def _log_order(record: Record) -> tuple[SessionKey, Position]:
    return record.session, record.position


def upsert(messages: Sequence[Record]) -> Statement:
    # One row per message key: the copy furthest in the log (see _MESSAGES).
    latest: dict[str, Record] = {}
    for record in messages:
        msg = record.message.message
        key = message_key(*record.session, msg.id)
        if key not in latest or latest[key].position < record.position:
            latest[key] = record
    rows = [_message_row(r) for r in sorted(latest.values(), key=_log_order)]
    mentions = [
        {
            "key": row["key"],
            "tenant_id": row["tenant_id"],
            "pos": row["pos"],
            "entity_key": entity_key(row["tenant_id"], name),
            "name": name,
        }
        for row in rows
        for name in row["entities"]
    ]
    replies = [r for r in rows if r["parent_key"] is not None]
    chains: dict[str, list[dict[str, Any]]] = {}
    for row in rows:  # log order within each session
        chains.setdefault(row["session_key"], []).append(row)
    sessions = [
        {
            **_session_row((chain[0]["tenant_id"], chain[0]["session_id"])),
            "keys": [r["key"] for r in chain],
            "first_pos": chain[0]["pos"],
            "last_pos": chain[-1]["pos"],
            "last_key": chain[-1]["key"],
        }
        for chain in chains.values()
    ]
    return Statement(
        UPSERT,
        {
            "messages": rows,
            "mentions": mentions,
            "replies": replies,
            "sessions": sessions,
        },
        write=True,
    )


def _erased_rows(erased: dict[SessionKey, Position]) -> list[dict[str, str]]:
    return [{**_session_row(s), "pos": p.key} for s, p in sorted(erased.items())]


def write_tombstones(erased: dict[SessionKey, Position]) -> Statement:
    return Statement(WRITE_TOMBSTONES, {"erased": _erased_rows(erased)}, write=True)


def delete_upto(erased: dict[SessionKey, Position]) -> Statement:
    rows = _erased_rows(erased)
    return Statement(DELETE_UPTO, {"erased": rows, "sessions": rows}, write=True)


def _redacted_rows(redacted: dict[MessageAddress, Position]) -> list[dict[str, str]]:
    return [
        {
            "key": message_key(t, s, m),
            "tenant_id": t,
            "session_id": s,
            "message_id": m,
            "pos": p.key,
        }
        for (t, s, m), p in sorted(redacted.items())
    ]


def write_redactions(redacted: dict[MessageAddress, Position]) -> Statement:
    return Statement(WRITE_REDACTIONS, {"redacted": _redacted_rows(redacted)}, write=True)


def delete_redacted(redacted: dict[MessageAddress, Position]) -> Statement:
    sessions = [_session_row(s) for s in sorted({(t, s) for t, s, _ in redacted})]
    return Statement(
        DELETE_REDACTED,
        {"redacted": _redacted_rows(redacted), "sessions": sessions},
        write=True,
    )


def redactions(messages: Iterable[MessageAddress]) -> Statement:
    rows = [{"key": message_key(*m), "tenant_id": m[0]} for m in sorted(set(messages))]
    return Statement(REDACTIONS, {"messages": rows})


def tombstones(sessions: Iterable[SessionKey]) -> Statement:
    return Statement(TOMBSTONES, {"sessions": [_session_row(s) for s in sorted(set(sessions))]})


def digest(tenant_id: str | None) -> Statement:
    if tenant_id is None:
        return Statement(DIGEST_ALL)
    return Statement(DIGEST_TENANT, {"tenant_id": tenant_id})


COMMON_ENTITY = 200
"""Mentions past which an entity is too common to relate two messages (see NEIGHBOURS)."""


def neighbours(
    tenant_id: str, seeds: Sequence[MessageKey], scope: Scope, limit: int, mentions: str
) -> Statement:
    """``mentions``: the store's expression for the number of messages mentioning ``e``."""
    keys = sorted({message_key(tenant_id, s, m) for s, m in seeds})
    condition, params = scope_condition(scope)
    return Statement(
        NEIGHBOURS.replace("<scope>", condition).replace("<mentions>", mentions),
        {
            "keys": keys,
            "tenant_id": tenant_id,
            "limit": limit,
            "common": COMMON_ENTITY,
            **params,
        },
    )


def entities(tenant_id: str, session_id: str) -> Statement:
    return Statement(
        ENTITIES, {"session_key": session_key(tenant_id, session_id), "tenant_id": tenant_id}
    )


Rows = Sequence[Sequence[Any]]


def parse_tombstones(rows: Rows) -> dict[SessionKey, Position]:
    return {(str(t), str(s)): Position.from_key(str(p)) for t, s, p in rows}


def parse_redactions(rows: Rows) -> dict[MessageAddress, Position]:
    return {(str(t), str(s), str(m)): Position.from_key(str(p)) for t, s, m, p in rows}


def parse_digest(rows: Rows) -> Digest:
    out: Digest = {}
    for tenant_id, session_id, message_id, content_hash in rows:
        session = out.setdefault((str(tenant_id), str(session_id)), {})
        session[str(message_id)] = str(content_hash)
    return out


def parse_hits(rows: Rows) -> list[Hit]:
    """Sum the paths per hit; best first, then log order."""
    paths: dict[MessageKey, int] = {}
    positions: dict[MessageKey, str] = {}
    for session_id, message_id, pos, count in rows:
        key = (str(session_id), str(message_id))
        paths[key] = paths.get(key, 0) + int(count)
        positions[key] = str(pos)
    ranked = sorted(paths, key=lambda k: (-paths[k], positions[k], k))
    return [Hit(session_id=s, message_id=m, score=float(paths[(s, m)])) for s, m in ranked]


def parse_entities(rows: Rows) -> dict[str, int]:
    return {str(name): int(count) for name, count in rows}


class CypherGraphStore(TombstoneProjection, GraphStore):
    """The graph projection over any store that runs these statements.

    An adapter connects, creates its indexes, resets, and runs one :class:`Statement`
    (:meth:`_run`), returning the rows as sequences in ``RETURN`` order.
    """

    mentions: ClassVar[str]
    """The store's Cypher for how many messages mention entity ``e`` (its in-degree)."""

    @abstractmethod
    async def _run(self, statement: Statement) -> Rows:
        """Run one statement (``write`` tells reads from writes) and return its rows."""

    async def _upsert(self, messages: Sequence[Record]) -> None:
        await self._run(upsert(messages))

    async def _write_tombstones(self, erased: dict[SessionKey, Position]) -> None:
        await self._run(write_tombstones(erased))

    async def _tombstones(self, sessions: Iterable[SessionKey]) -> dict[SessionKey, Position]:
        return parse_tombstones(await self._run(tombstones(sessions)))

    async def _delete_upto(self, erased: dict[SessionKey, Position]) -> None:
        await self._run(delete_upto(erased))

    async def _write_redactions(self, redacted: dict[MessageAddress, Position]) -> None:
        await self._run(write_redactions(redacted))

    async def _redactions(
        self, messages: Iterable[MessageAddress]
    ) -> dict[MessageAddress, Position]:
        return parse_redactions(await self._run(redactions(messages)))

    async def _delete_redacted(self, redacted: dict[MessageAddress, Position]) -> None:
        await self._run(delete_redacted(redacted))

    async def digest(self, tenant_id: str | None = None) -> Digest:
        return parse_digest(await self._run(digest(tenant_id)))

    async def count(self) -> int:
        rows = await self._run(Statement(COUNT))
        return int(rows[0][0]) if rows else 0

    async def neighbours(
        self, tenant_id: str, seeds: Sequence[MessageKey], *, scope: Scope, limit: int = 50
    ) -> list[Hit]:
        if not seeds or limit < 1:
            return []
        statement = neighbours(tenant_id, seeds, scope, limit, self.mentions)
        return parse_hits(await self._run(statement))

    async def entities(self, tenant_id: str, session_id: str) -> dict[str, int]:
        return parse_entities(await self._run(entities(tenant_id, session_id)))
