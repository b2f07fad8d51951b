"""Qdrant (``AsyncQdrantClient``): vector recall, the tenant filter inside every query.

Two modes. ``url`` talks to a Qdrant server. ``path`` runs Qdrant's local mode inside this
process, the embedded default: points live in SQLite under ``path`` and every query is a
brute-force scan (about 20 ms per filtered query at 2,000 points). **Only one client, in
one process, may open a path at a time**: a second one raises "Storage folder … is already
accessed by another instance of Qdrant client". Run a single Qdrant projector worker per
path, and read through that worker (or use a server) when several processes need Qdrant.
Within a process, stores of one path (two generations of the projection during a rebuild)
share one local client, closed with the last of them.

Layout:

- ``<collection>``: one point per message, id :func:`message_uuid`, cosine distance, payload
  ``tenant_id, session_id, message_id, user_id`` (null when the message names no user),
  ``pos_ms, pos_seq, content_hash, role, created_at`` (ISO 8601), ``tokens, model``. On a
  server, ``tenant_id`` has a keyword index marked ``is_tenant``, ``session_id`` and
  ``user_id`` keyword indexes; local mode has no payload indexes. A :class:`Scope` is one
  condition of the query's filter, beside the tenant's: a session or user match, or for
  both a nested filter whose ``should`` holds the two.
- ``<collection>_erasures``: erase tombstones without vectors, one point per erase event
  (id :func:`erasure_uuid`, payload ``tenant_id, session_id, pos_ms, pos_seq``). Readers
  take the furthest, so writing one is a blind upsert that no concurrent writer can
  undo. The same request deletes the session's tombstones from before it, so a session
  keeps one unless its erasures arrive out of order. Only tombstones strictly before one
  just written are deleted, so the furthest always stays. Redaction tombstones live here
  too, one point per redaction (id :func:`redaction_uuid`), their payload naming the
  ``message_id`` as well; a session's erase tombstone supersedes the session's earlier
  ones of either kind.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterable, Iterator, Sequence
from contextlib import contextmanager
from typing import Any, ClassVar

import httpx
from qdrant_client import AsyncQdrantClient, models
from qdrant_client.common.client_exceptions import ResourceExhaustedResponse
from qdrant_client.http.exceptions import ResponseHandlingException, UnexpectedResponse

from projectors.errors import ApplyError, StoreUnavailableError
from projectors.position import Position
from projectors.records import Digest, MessageAddress, Record, SessionKey
from projectors.store import WHOLE_TENANT, Hit, Scope, TombstoneProjection, VectorStore
from projectors.stores.point_ids import erasure_uuid, message_uuid, redaction_uuid
from schemas.errors import ConfigurationError

PAGE = 1024
"""Points per scroll request."""
UNAVAILABLE_STATUS = frozenset({502, 503, 504})
"""HTTP answers meaning the server (or the proxy before it) is down, not the request wrong."""


_LOCAL: dict[str, tuple[AsyncQdrantClient, int]] = {}
"""Local-mode clients of this process by path, with how many stores use each."""


def _open_local(path: str) -> AsyncQdrantClient:
    client, users = _LOCAL.get(path) or (AsyncQdrantClient(path=path), 0)
    _LOCAL[path] = (client, users + 1)
    return client


async def _close_local(path: str) -> None:
    client, users = _LOCAL[path]
    if users > 1:
        _LOCAL[path] = (client, users - 1)
        return
    del _LOCAL[path]
    await client.close()


class QdrantVectorStore(TombstoneProjection, VectorStore):
    store = "qdrant"
    transient_errors: ClassVar[tuple[type[BaseException], ...]] = (
        OSError,
        # Raised for transport failures (connection refused, reset, timeout), which
        # qdrant-client wraps; also for an unparsable answer, which would fail every
        # batch alike: stalling in place beats dead-lettering the whole log.
        ResponseHandlingException,
        ResourceExhaustedResponse,  # 429: rate limited
        httpx.TransportError,
        StoreUnavailableError,  # 502/503/504, see _unavailable()
        # No gRPC errors: this adapter never sets prefer_grpc, so every call is REST.
    )

    def __init__(
        self,
        *,
        url: str | None = None,
        path: str | None = None,
        collection: str = "amem_messages",
        dimension: int = 384,
    ) -> None:
        if (url is None) == (path is None):
            raise ConfigurationError(
                "QdrantVectorStore takes exactly one of url (a server) or path (local mode)"
            )
        self._url = url
        self._path = path
        self.collection = collection
        self.erasures = f"{collection}_erasures"
        self.dimension = dimension
        self._client: AsyncQdrantClient | None = None

    # -- lifecycle -------------------------------------------------------------------------

    async def start(self) -> None:
        if self._client is None:
            self._client = (
                AsyncQdrantClient(url=self._url) if self._path is None else _open_local(self._path)
            )
        with _unavailable():
            await self._create_missing()

    async def close(self) -> None:
        client, self._client = self._client, None
        if client is None:
            return
        if self._path is None:
            await client.close()
        else:
            await _close_local(self._path)

    async def reset(self) -> None:
        client = self._require()
        with _unavailable():
            for name in (self.collection, self.erasures):
                await client.delete_collection(name)
            await self._create_missing()

    async def drop(self) -> None:
        client = self._require()
        with _unavailable():
            for name in (self.collection, self.erasures):
                await client.delete_collection(name)

    async def _create_missing(self) -> None:
        client = self._require()
        await self._create_collection(
            self.collection,
            models.VectorParams(size=self.dimension, distance=models.Distance.COSINE),
        )
        await self._create_collection(self.erasures, {})
        if self._url is None:
            # Local mode ignores payload indexes and warns that it does: create none.
            return
        tenant_index = models.KeywordIndexParams(
            type=models.KeywordIndexType.KEYWORD, is_tenant=True
        )
        for name in (self.collection, self.erasures):
            await client.create_payload_index(name, "tenant_id", tenant_index)
            await client.create_payload_index(name, "session_id", models.PayloadSchemaType.KEYWORD)
        # Made on every start, so a collection from before user scopes gets it too.
        await client.create_payload_index(
            self.collection, "user_id", models.PayloadSchemaType.KEYWORD
        )

    async def _create_collection(
        self, name: str, vectors: models.VectorParams | dict[str, models.VectorParams]
    ) -> None:
        client = self._require()
        if await client.collection_exists(name):
            return
        try:
            await client.create_collection(name, vectors_config=vectors)
        except UnexpectedResponse:
            if not await client.collection_exists(name):
                raise
            # Another worker created it between our check and our create.

    def _require(self) -> AsyncQdrantClient:
        if self._client is None:
            raise RuntimeError("QdrantVectorStore.start() has not been awaited")
        return self._client

    # -- writes ----------------------------------------------------------------------------

    async def apply(self, records: Sequence[Record]) -> None:
        with _unavailable():
            await super().apply(records)

    async def _upsert(self, messages: Sequence[Record]) -> None:
        points = [self._point(r) for r in messages]
        await self._require().upsert(self.collection, points=points, wait=True)

    def _point(self, record: Record) -> models.PointStruct:
        msg = record.message.message
        enrichment = record.enrichment
        if enrichment is None:
            raise ApplyError(f"qdrant applies enriched records only; message {msg.id!r} has none")
        if len(enrichment.vector) != self.dimension:
            raise ApplyError(
                f"message {msg.id!r} has a {len(enrichment.vector)}-dimensional vector;"
                f" collection {self.collection!r} holds {self.dimension} dimensions"
            )
        return models.PointStruct(
            id=str(message_uuid(msg.tenant_id, msg.session_id, msg.id)),
            vector=list(enrichment.vector),
            payload={
                "tenant_id": msg.tenant_id,
                "session_id": msg.session_id,
                "message_id": msg.id,
                "user_id": msg.user_id,
                "pos_ms": record.position.ms,
                "pos_seq": record.position.seq,
                "content_hash": record.content_hash,
                "role": msg.role,
                "created_at": msg.created_at.isoformat(),
                "tokens": enrichment.tokens,
                "model": enrichment.model,
            },
        )

    async def _write_tombstones(self, erased: dict[SessionKey, Position]) -> None:
        points = [
            models.PointStruct(
                id=str(erasure_uuid(tenant, session, position)),
                vector={},
                payload={
                    "tenant_id": tenant,
                    "session_id": session,
                    "pos_ms": position.ms,
                    "pos_seq": position.seq,
                },
            )
            for (tenant, session), position in erased.items()
        ]
        await self._replace_tombstones(points, _any_session_upto(erased, inclusive=False))

    async def _replace_tombstones(
        self, points: list[models.PointStruct], superseded: models.Filter
    ) -> None:
        # One request, applied in order: the new tombstones, then the ones they supersede.
        await self._require().batch_update_points(
            self.erasures,
            [
                models.UpsertOperation(upsert=models.PointsList(points=points)),
                models.DeleteOperation(delete=models.FilterSelector(filter=superseded)),
            ],
            wait=True,
        )

    async def _tombstones(self, sessions: Iterable[SessionKey]) -> dict[SessionKey, Position]:
        wanted = set(sessions)
        if not wanted:
            return {}
        found: dict[SessionKey, Position] = {}
        which = models.Filter(should=[models.Filter(must=_session(t, s)) for t, s in wanted])
        async for payload in self._scroll(self.erasures, which, _TOMBSTONE_FIELDS):
            if payload.get("message_id") is not None:
                continue  # a redaction's
            key = (payload["tenant_id"], payload["session_id"])
            position = Position(int(payload["pos_ms"]), int(payload["pos_seq"]))
            if key in wanted and (key not in found or position > found[key]):
                found[key] = position
        return found

    async def _delete_upto(self, erased: dict[SessionKey, Position]) -> None:
        await self._require().delete(
            self.collection,
            points_selector=models.FilterSelector(filter=_any_session_upto(erased, inclusive=True)),
            wait=True,
        )

    async def _write_redactions(self, redacted: dict[MessageAddress, Position]) -> None:
        points = [
            models.PointStruct(
                id=str(redaction_uuid(tenant, session, message, position)),
                vector={},
                payload={
                    "tenant_id": tenant,
                    "session_id": session,
                    "message_id": message,
                    "pos_ms": position.ms,
                    "pos_seq": position.seq,
                },
            )
            for (tenant, session, message), position in redacted.items()
        ]
        await self._replace_tombstones(points, _any_message_upto(redacted, inclusive=False))

    async def _redactions(
        self, messages: Iterable[MessageAddress]
    ) -> dict[MessageAddress, Position]:
        wanted = set(messages)
        if not wanted:
            return {}
        found: dict[MessageAddress, Position] = {}
        which = models.Filter(should=[models.Filter(must=_message(*m)) for m in wanted])
        async for payload in self._scroll(self.erasures, which, _TOMBSTONE_FIELDS):
            key = (payload["tenant_id"], payload["session_id"], payload.get("message_id"))
            position = Position(int(payload["pos_ms"]), int(payload["pos_seq"]))
            if key in wanted and (key not in found or position > found[key]):
                found[key] = position
        return found

    async def _delete_redacted(self, redacted: dict[MessageAddress, Position]) -> None:
        await self._require().delete(
            self.collection,
            points_selector=models.FilterSelector(
                filter=_any_message_upto(redacted, inclusive=True)
            ),
            wait=True,
        )

    # -- reads -----------------------------------------------------------------------------

    async def digest(self, tenant_id: str | None = None) -> Digest:
        which = None if tenant_id is None else models.Filter(must=[_match("tenant_id", tenant_id)])
        out: Digest = {}
        with _unavailable():
            async for payload in self._scroll(self.collection, which, _DIGEST_FIELDS):
                session = (payload["tenant_id"], payload["session_id"])
                out.setdefault(session, {})[payload["message_id"]] = payload["content_hash"]
        return out

    async def count(self) -> int:
        with _unavailable():
            return (await self._require().count(self.collection, exact=True)).count

    async def nearest(
        self,
        tenant_id: str,
        vector: Sequence[float],
        *,
        limit: int = 10,
        scope: Scope = WHOLE_TENANT,
    ) -> list[Hit]:
        if limit < 1:
            return []
        must: list[models.Condition] = [_match("tenant_id", tenant_id), *_scope(scope)]
        with _unavailable():
            response = await self._require().query_points(
                self.collection,
                query=list(vector),
                query_filter=models.Filter(must=must),
                limit=limit,
                with_payload=["session_id", "message_id"],
            )
        hits = []
        for point in response.points:
            payload = point.payload or {}
            hits.append(
                Hit(
                    session_id=payload["session_id"],
                    message_id=payload["message_id"],
                    score=float(point.score),  # cosine distance: Qdrant's score is the similarity
                )
            )
        return hits

    async def _scroll(
        self, collection: str, which: models.Filter | None, fields: list[str]
    ) -> AsyncIterator[dict[str, Any]]:
        client = self._require()
        offset: models.ExtendedPointId | None = None
        while True:
            records, offset = await client.scroll(
                collection,
                scroll_filter=which,
                limit=PAGE,
                offset=offset,
                with_payload=fields,
                with_vectors=False,
            )
            for record in records:
                yield record.payload or {}
            if offset is None:
                return


_DIGEST_FIELDS = ["tenant_id", "session_id", "message_id", "content_hash"]
_TOMBSTONE_FIELDS = ["tenant_id", "session_id", "message_id", "pos_ms", "pos_seq"]


def _match(key: str, value: str | int) -> models.FieldCondition:
    return models.FieldCondition(key=key, match=models.MatchValue(value=value))


def _session(tenant_id: str, session_id: str) -> list[models.Condition]:
    return [_match("tenant_id", tenant_id), _match("session_id", session_id)]


def _message(tenant_id: str, session_id: str, message_id: str) -> list[models.Condition]:
    return [*_session(tenant_id, session_id), _match("message_id", message_id)]


def _scope(scope: Scope) -> list[models.Condition]:
    """The scope as conditions to add to the tenant's under ``must`` (none: the whole tenant)."""
    either: list[models.Condition] = []
    if scope.session_id is not None:
        either.append(_match("session_id", scope.session_id))
    if scope.user_id is not None:
        either.append(_match("user_id", scope.user_id))
    if len(either) < 2:
        return either
    return [models.Filter(should=either)]


def _upto(position: Position, *, inclusive: bool) -> models.Filter:
    """Points at or before ``position`` (strictly before unless ``inclusive``), in log order."""
    seq = models.Range(lte=position.seq) if inclusive else models.Range(lt=position.seq)
    return models.Filter(
        should=[
            models.FieldCondition(key="pos_ms", range=models.Range(lt=position.ms)),
            models.Filter(
                must=[
                    _match("pos_ms", position.ms),
                    models.FieldCondition(key="pos_seq", range=seq),
                ]
            ),
        ]
    )


def _any_session_upto(erased: dict[SessionKey, Position], *, inclusive: bool) -> models.Filter:
    """Points of any of these sessions at or before that session's position."""
    return models.Filter(
        should=[
            models.Filter(must=[*_session(tenant, session), _upto(position, inclusive=inclusive)])
            for (tenant, session), position in erased.items()
        ]
    )


def _any_message_upto(
    redacted: dict[MessageAddress, Position], *, inclusive: bool
) -> models.Filter:
    """Points of any of these messages at or before that message's position."""
    return models.Filter(
        should=[
            models.Filter(must=[*_message(*message), _upto(position, inclusive=inclusive)])
            for message, position in redacted.items()
        ]
    )


@contextmanager
def _unavailable() -> Iterator[None]:
    """Turn a 502/503/504 answer into :class:`StoreUnavailableError` (retried in place)."""
    try:
        yield
    except UnexpectedResponse as exc:
        if exc.status_code in UNAVAILABLE_STATUS:
            raise StoreUnavailableError("qdrant", exc) from exc
        raise
