"""MongoDB (PyMongo's native async client): one document per session.

A session document holds the session's participants, the users its messages name
(``users``), first and last message times, last log position and, under ``messages``, one
small entry per message keyed by message id: the text ``"<position> <content hash>
<time>[@<user>] <participant>"`` (see :class:`Entry`). Every
write of a message is a single upsert made of order-insensitive operators (``$set`` by
message id, ``$min``, ``$max``, ``$addToSet``), so applying the log in any order, any
number of times, gives the same document; the message count is the number of entries,
counted on read (an ``$inc`` would count redeliveries).

Erasure follows :class:`TombstoneProjection`: a tombstone per session in ``erasures``, then
the covered entries are removed and the aggregates recomputed from what remains (the one
read-modify-write, made conditional on the revision read; see :meth:`_delete_upto`). A
redaction is the same for one entry; its tombstone sits in ``erasures`` too, under the
session's key followed by ``|`` and the message id (see :func:`message_key`).

Times are stored as fixed-width UTC ISO 8601 text: BSON dates hold milliseconds, the log
holds microseconds, and the summary must give back the message's own ``created_at``. Both
that text and :attr:`Position.key` sort as they compare, so ``$min``/``$max`` work on them.

Sizes: an entry is about 90 bytes (see :meth:`Entry.text`), so a session document
reaches MongoDB's 16 MB document limit near 180,000 messages.
"""

from __future__ import annotations

import asyncio
import base64
import re
import secrets
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, ClassVar

from pymongo import AsyncMongoClient, UpdateOne
from pymongo.asynchronous.collection import AsyncCollection
from pymongo.asynchronous.database import AsyncDatabase
from pymongo.errors import (
    AutoReconnect,
    ConnectionFailure,
    NetworkTimeout,
    ServerSelectionTimeoutError,
)

from projectors.errors import ProjectorError
from projectors.position import Position
from projectors.records import Digest, MessageAddress, Record, SessionKey
from projectors.store import ProjectionStore, SessionSummary, TombstoneProjection, participant

Document = dict[str, Any]

SESSIONS = "sessions"
ERASURES = "erasures"
KEY_SEPARATOR = "|"
"""Between tenant and session in a document ``_id``; escaped inside either, so never ambiguous."""

# `.` and `$` are special in field paths, `|` separates the parts of a key and `%` starts an
# escape: percent-encoding these four makes any id a plain field name, reversibly.
_ESCAPES = {"%": "%25", ".": "%2E", "$": "%24", KEY_SEPARATOR: "%7C"}
_ESCAPE = re.compile("[%.$|]")
_UNESCAPE = re.compile("%(25|2E|24|7C)")
_UNESCAPES = {code[1:]: char for char, code in _ESCAPES.items()}

EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
REWRITE_ATTEMPTS = 50
"""Conditional rewrites of one erase before giving up (each loses only to a concurrent write)."""


def escape(text: str) -> str:
    """``text`` as a field name (no ``.``, no ``$``) or key part (no separator); reversible."""
    return _ESCAPE.sub(lambda m: _ESCAPES[m.group()], text)


def unescape(name: str) -> str:
    return _UNESCAPE.sub(lambda m: _UNESCAPES[m.group(1)], name)


def session_key(tenant_id: str, session_id: str) -> str:
    """The ``_id`` of a session's document and of its tombstone."""
    return f"{escape(tenant_id)}{KEY_SEPARATOR}{escape(session_id)}"


def message_key(tenant_id: str, session_id: str, message_id: str) -> str:
    """The ``_id`` of a message's redaction tombstone (never a session's: it has two
    separators)."""
    return f"{session_key(tenant_id, session_id)}{KEY_SEPARATOR}{escape(message_id)}"


def time_text(at: datetime) -> str:
    """Fixed-width UTC text with microseconds: string order is time order."""
    return at.astimezone(UTC).isoformat(timespec="microseconds")


@dataclass(frozen=True, slots=True)
class Entry:
    """A message's entry in its session document: what verify and an erase need."""

    pos: Position
    h: str
    """Content hash, hex (what ``verify`` compares)."""
    at: datetime
    who: str
    """:func:`participant`."""
    user: str | None = None
    """The message's ``user_id``."""

    @classmethod
    def of(cls, record: Record) -> Entry:
        m = record.message.message
        return cls(
            record.position,
            record.content_hash,
            m.created_at,
            participant(m.role, m.name),
            m.user_id,
        )

    def text(self) -> str:
        """``"<ms>-<seq> <hash, base64url> <µs since the epoch>[@<user id>] <participant>"``.

        Compact because the whole document is rewritten on every update: at about 80
        characters instead of a 5-field sub-document's ~200, updating a 50-message session
        ran about 1.2x faster on nx-27017's storage. The participant comes last, so it may
        hold spaces. The user, when there is one, is glued to the time (an integer, so
        without ``@``; an id has no space): an entry without a user is what it was before
        messages named users.
        """
        digest = base64.urlsafe_b64encode(bytes.fromhex(self.h)).rstrip(b"=").decode()
        micros = (self.at - EPOCH) // timedelta(microseconds=1)
        user = "" if self.user is None else f"@{self.user}"
        return f"{self.pos.ms}-{self.pos.seq} {digest} {micros}{user} {self.who}"

    @classmethod
    def parse(cls, stored: str | Document) -> Entry:
        if isinstance(stored, str):
            pos, digest, when, who = stored.split(" ", 3)
            micros, at_sign, user = when.partition("@")
            h = base64.urlsafe_b64decode(digest + "=" * (-len(digest) % 4)).hex()
            at = EPOCH + timedelta(microseconds=int(micros))
            return cls(Position.from_key(pos), h, at, who, user if at_sign else None)
        # Written before entries were one string (a rebuild rewrites them as text).
        return cls(
            Position.from_key(stored["pos"]),
            stored["h"],
            datetime.fromisoformat(stored["at"]),
            participant(stored["role"], stored["name"]),
        )


Covers = Callable[[str, Entry], bool]
"""Whether an erase or redaction covers the entry under this (escaped) message id."""


def _upto(position: Position) -> Covers:
    return lambda _, entry: entry.pos <= position


def _listed(messages: dict[str, Position]) -> Covers:
    """Covers the entries of these escaped message ids at or before their position."""
    return lambda key, entry: key in messages and entry.pos <= messages[key]


def _revision() -> str:
    # Text, not an ObjectId: nx-27017 does not match ObjectId values outside `_id`.
    return secrets.token_hex(12)


def _in_filter(sessions: Iterable[SessionKey]) -> Document:
    """Filter on a set of sessions, the tenant condition inside the query."""
    keys = sorted(set(sessions))
    return {
        "_id": {"$in": [session_key(t, s) for t, s in keys]},
        "tenant_id": {"$in": sorted({t for t, _ in keys})},
    }


class MongoProjectionStore(TombstoneProjection, ProjectionStore):
    """Session documents: participants, users, first and last times, last position, messages."""

    store = "mongo"
    transient_errors: ClassVar[tuple[type[BaseException], ...]] = (
        AutoReconnect,
        ServerSelectionTimeoutError,
        NetworkTimeout,
        ConnectionFailure,
        OSError,
    )

    def __init__(self, *, url: str, database: str = "amem") -> None:
        self._url = url
        self._database = database
        self._client: AsyncMongoClient[Document] | None = None

    @property
    def _sessions(self) -> AsyncCollection[Document]:
        return self._db()[SESSIONS]

    @property
    def _erasures(self) -> AsyncCollection[Document]:
        return self._db()[ERASURES]

    def _db(self) -> AsyncDatabase[Document]:
        if self._client is None:
            raise ProjectorError(f"{self.store} store is not started")
        return self._client[self._database]

    async def start(self) -> None:
        if self._client is None:
            # Production timeouts are PyMongo's (30 s server selection); a URL may set its own.
            self._client = AsyncMongoClient(self._url, appname="amem-projector")
        for collection in (self._sessions, self._erasures):
            await collection.create_index([("tenant_id", 1), ("session_id", 1)])

    async def close(self) -> None:
        if self._client is not None:
            await self._client.close()
            self._client = None

    # Writes: order-insensitive upserts, tombstones, and the conditional erase rewrite.

    async def _upsert(self, messages: Sequence[Record]) -> None:
        # One entry per message id; a repeated id in a batch keeps its earliest position,
        # as a repeat across batches does wherever the log holds an id once (append once).
        first: dict[tuple[str, str, str], Record] = {}
        for r in messages:
            ident = (*r.session, r.message.message.id)
            if ident not in first or r.position < first[ident].position:
                first[ident] = r
        by_session: dict[SessionKey, list[Record]] = {}
        for r in first.values():
            by_session.setdefault(r.session, []).append(r)
        # One update per session, not per message: the server applies a few large updates
        # far faster than many small ones (about 5x on nx-27017), and the operators stay
        # order-insensitive ($set by id, $addToSet, $min, $max).
        await self._sessions.bulk_write(
            [_session_update(rs) for rs in by_session.values()], ordered=False
        )

    async def _write_tombstones(self, erased: dict[SessionKey, Position]) -> None:
        await self._erasures.bulk_write(
            [
                UpdateOne(
                    {"_id": session_key(t, s)},
                    {"$set": {"tenant_id": t, "session_id": s}, "$max": {"pos": pos.key}},
                    upsert=True,
                )
                for (t, s), pos in erased.items()
            ],
            ordered=False,
        )

    async def _tombstones(self, sessions: Iterable[SessionKey]) -> dict[SessionKey, Position]:
        docs = await self._erasures.find(_in_filter(sessions)).to_list()
        return {(d["tenant_id"], d["session_id"]): Position.from_key(d["pos"]) for d in docs}

    async def _write_redactions(self, redacted: dict[MessageAddress, Position]) -> None:
        await self._erasures.bulk_write(
            [
                UpdateOne(
                    {"_id": message_key(t, s, m)},
                    {
                        "$set": {"tenant_id": t, "session_id": s, "message_id": m},
                        "$max": {"pos": pos.key},
                    },
                    upsert=True,
                )
                for (t, s, m), pos in redacted.items()
            ],
            ordered=False,
        )

    async def _redactions(
        self, messages: Iterable[MessageAddress]
    ) -> dict[MessageAddress, Position]:
        wanted = sorted(set(messages))
        if not wanted:
            return {}
        which = {
            "_id": {"$in": [message_key(*m) for m in wanted]},
            "tenant_id": {"$in": sorted({t for t, _, _ in wanted})},
        }
        docs = await self._erasures.find(which).to_list()
        return {
            (d["tenant_id"], d["session_id"], d["message_id"]): Position.from_key(d["pos"])
            for d in docs
        }

    async def _delete_redacted(self, redacted: dict[MessageAddress, Position]) -> None:
        by_session: dict[SessionKey, dict[str, Position]] = {}
        for (t, s, m), pos in redacted.items():
            by_session.setdefault((t, s), {})[escape(m)] = pos
        await self._remove({s: _listed(ids) for s, ids in by_session.items()})

    async def _delete_upto(self, erased: dict[SessionKey, Position]) -> None:
        await self._remove({s: _upto(pos) for s, pos in erased.items()})

    async def _remove(self, covered: dict[SessionKey, Covers]) -> None:
        # The one read-modify-write. Removing entries at or before a position cannot be an
        # order-insensitive operator here: participants, users and first/last times are $addToSet,
        # $min and $max, which never give back, so they are recomputed from the entries that
        # remain. That is safe because erasure is rare (an erase event, or a late message
        # the tombstone covers) and because TombstoneProjection writes the tombstone before
        # this runs and re-reads tombstones after every message write: a covered message
        # written concurrently is deleted by its own writer if not by this. What must not
        # happen is this rewrite replacing a document another worker has just written to;
        # every message write sets a fresh `rev`, and the rewrite (or delete) is filtered on
        # the `rev` read, so a concurrent write makes it match nothing and it starts over.
        pending = dict(covered)
        for attempt in range(REWRITE_ATTEMPTS):
            docs = await self._sessions.find(_in_filter(pending)).to_list()
            done = await asyncio.gather(
                *(self._rewrite(d, pending[(d["tenant_id"], d["session_id"])]) for d in docs)
            )
            pending = {
                (d["tenant_id"], d["session_id"]): pending[(d["tenant_id"], d["session_id"])]
                for d, ok in zip(docs, done, strict=True)
                if not ok
            }
            if not pending:
                return
            await asyncio.sleep(min(0.002 * 2**attempt, 0.2))
        raise ProjectorError(
            f"{self.store}: {len(pending)} session(s) changed under every one of"
            f" {REWRITE_ATTEMPTS} erase rewrites"
        )

    async def _rewrite(self, doc: Document, covers: Covers) -> bool:
        """Drop ``doc``'s entries ``covers`` names if it is unchanged; False if it changed."""
        stored: dict[str, str | Document] = doc.get("messages") or {}
        entries = {k: Entry.parse(v) for k, v in stored.items()}
        kept = {k: e for k, e in entries.items() if not covers(k, e)}
        current = {"_id": doc["_id"], "tenant_id": doc["tenant_id"], "rev": doc.get("rev")}
        if not kept:
            return (await self._sessions.delete_one(current)).deleted_count == 1
        aggregates = _aggregates(kept.values())
        if len(kept) == len(entries) and _aggregates_of(doc) == aggregates:
            return True  # nothing covered (a concurrent erase got there first)
        replacement = {
            "tenant_id": doc["tenant_id"],
            "session_id": doc["session_id"],
            "messages": {k: e.text() for k, e in kept.items()},
            "rev": _revision(),
            **aggregates,
        }
        result = await self._sessions.replace_one(current, replacement)
        return result.matched_count == 1

    # Reads: every query names the tenant.

    async def session(self, tenant_id: str, session_id: str) -> SessionSummary | None:
        doc = await self._sessions.find_one(
            {"_id": session_key(tenant_id, session_id), "tenant_id": tenant_id}
        )
        return None if doc is None else _summary(doc)

    async def sessions(self, tenant_id: str, *, limit: int) -> list[SessionSummary]:
        found: list[SessionSummary] = []
        # A document every message of which was redacted stays, empty: skipped here, so the
        # query itself takes no limit.
        cursor = self._sessions.find({"tenant_id": tenant_id}).sort(
            [("last_at", -1), ("session_id", 1)]
        )
        async for doc in cursor:
            summary = _summary(doc)
            if summary is not None:
                found.append(summary)
                if len(found) == limit:
                    break
        await cursor.close()
        return found

    async def digest(self, tenant_id: str | None = None) -> Digest:
        query = {} if tenant_id is None else {"tenant_id": tenant_id}
        fields = {"tenant_id": 1, "session_id": 1, "messages": 1}
        digest: Digest = {}
        async for doc in self._sessions.find(query, fields):
            entries: dict[str, str | Document] = doc.get("messages") or {}
            if entries:
                digest[(doc["tenant_id"], doc["session_id"])] = {
                    unescape(k): Entry.parse(v).h for k, v in entries.items()
                }
        return digest

    async def count(self) -> int:
        entries = {"$size": {"$objectToArray": {"$ifNull": ["$messages", {}]}}}
        cursor = await self._sessions.aggregate(
            [{"$project": {"n": entries}}, {"$group": {"_id": None, "n": {"$sum": "$n"}}}]
        )
        rows = await cursor.to_list()
        return int(rows[0]["n"]) if rows else 0

    async def reset(self) -> None:
        await self._sessions.delete_many({})
        await self._erasures.delete_many({})

    async def drop(self) -> None:
        if self._client is None:
            raise ProjectorError(f"{self.store} store is not started")
        await self._client.drop_database(self._database)


def _summary(doc: Document) -> SessionSummary | None:
    if not doc.get("messages"):
        return None
    return SessionSummary(
        tenant_id=doc["tenant_id"],
        session_id=doc["session_id"],
        message_count=len(doc["messages"]),
        participants=frozenset(doc["participants"]),
        first_at=datetime.fromisoformat(doc["first_at"]),
        last_at=datetime.fromisoformat(doc["last_at"]),
        last_position=Position.from_key(doc["last_position"]),
    )


def _session_update(records: Sequence[Record]) -> UpdateOne:
    """Every message of one session in the batch, as one upsert of its session document."""
    first = records[0].message.message
    entries = {escape(r.message.message.id): Entry.of(r) for r in records}
    times = [time_text(e.at) for e in entries.values()]
    return UpdateOne(
        {"_id": session_key(first.tenant_id, first.session_id)},
        {
            "$set": {
                "tenant_id": first.tenant_id,
                "session_id": first.session_id,
                **{f"messages.{k}": e.text() for k, e in entries.items()},
                "rev": _revision(),
            },
            "$addToSet": {
                "participants": {"$each": sorted({e.who for e in entries.values()})},
                "users": {"$each": sorted({e.user for e in entries.values() if e.user})},
            },
            "$min": {"first_at": min(times)},
            "$max": {"last_at": max(times), "last_position": max(r.position.key for r in records)},
        },
        upsert=True,
    )


def _aggregates_of(doc: Document) -> Document:
    fields = {f: doc.get(f) for f in ("first_at", "last_at", "last_position")}
    return {
        "participants": sorted(doc.get("participants") or []),
        "users": sorted(doc.get("users") or []),
        **fields,
    }


def _aggregates(entries: Iterable[Entry]) -> Document:
    """What the message upserts would have built from exactly these entries."""
    listed = list(entries)
    return {
        "participants": sorted({e.who for e in listed}),
        "users": sorted({e.user for e in listed if e.user is not None}),
        "first_at": time_text(min(e.at for e in listed)),
        "last_at": time_text(max(e.at for e in listed)),
        "last_position": max(e.pos for e in listed).key,
    }
