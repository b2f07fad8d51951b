"""Weaviate (weaviate-client v4, async): vector recall with one Weaviate tenant per tenant.

Written against the weaviate-client 4.24 source and type-checked, but not yet run against
a live Weaviate server: the contract suite runs only where ``AMEM_TEST_WEAVIATE_URL`` is set.

Layout. Both collections use native multi-tenancy: an Atomic Memory tenant is a Weaviate
tenant, which is a shard of its own. Every read goes through ``collection.with_tenant(...)``,
so one tenant's query can never reach another tenant's objects. Reads also filter on the
``tenant_id`` property. Tenants are created on first insert (``auto_tenant_creation``).

- ``<collection>`` (default ``AmemMessage``): one object per message, uuid
  :func:`message_uuid` (the same ids as Qdrant's points), a self-provided vector in an HNSW
  index with cosine distance, and properties ``tenant_id, session_id, message_id, user_id``
  (absent when the message names no user), ``pos_ms, pos_seq, content_hash, role,
  created_at, tokens, model``. ``start`` adds a property the definitions have and an
  existing collection lacks (``user_id`` on a collection from before user scopes) before
  anything is written: Weaviate's auto-schema would otherwise add it on the first insert
  with word tokenization, under which ``user_id`` filters would match parts of ids.
- ``<collection>Erasure``: erase tombstones without vectors, one object per erase event
  (uuid :func:`erasure_uuid`). Readers take the furthest. Writing one also deletes the
  session's tombstones from before it, as for Qdrant. A worker creates a tenant's shard
  here the first time it reads that tenant's tombstones, so that read is one query.
  Redaction tombstones live here too, one object per redaction (uuid
  :func:`redaction_uuid`) with a ``message_id`` property, which erase tombstones lack.

Positions travel to Weaviate as JSON-like doubles (the client's gRPC ``Struct``), so they
are exact up to 2**53, far beyond any stream id's milliseconds or sequence in practice.

Weaviate tenant names allow ``[A-Za-z0-9_-]{1,64}``, ids allow more: :func:`tenant_name`
maps one to the other without collisions.

The adapter asks for ``skip_init_checks``. Without it, ``connect()`` also asks PyPI for
the latest client version and raises a DeprecationWarning when this one is older. That is a
network call from every worker, and the test suite turns warnings into errors. The gRPC
channel is therefore first tested by the first query.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from typing import Any, ClassVar, TypeVar
from urllib.parse import urlsplit

import weaviate
from weaviate.classes.config import Property
from weaviate.classes.data import DataObject
from weaviate.classes.init import Auth
from weaviate.classes.query import Filter, MetadataQuery
from weaviate.collections import CollectionAsync
from weaviate.collections.classes.batch import BatchObjectReturn
from weaviate.collections.classes.filters import FilterReturn
from weaviate.exceptions import WeaviateBaseError

from projectors.errors import ApplyError, ProjectorError, StoreUnavailableError
from projectors.position import Position
from projectors.records import Digest, MessageAddress, Record, SessionKey
from projectors.store import (
    WHOLE_TENANT,
    Hit,
    MessageKey,
    Scope,
    TombstoneProjection,
    VectorStore,
)
from projectors.stores.point_ids import erasure_uuid, message_uuid, redaction_uuid
from projectors.stores.weaviate_support import (
    ERASURE_PROPERTIES,
    MESSAGE_PROPERTIES,
    MULTI_TENANCY,
    UNREACHABLE,
    VECTOR,
    messages_upto,
    scope_filter,
    sessions_upto,
    tenant_filter,
    tenant_name,
    unavailable,
    unreachable,
    vector_config,
)
from schemas.errors import ConfigurationError

T = TypeVar("T")

PAGE = 1000
"""Objects per cursor page (``digest``)."""
TOMBSTONE_LIMIT = 10_000
"""Tombstones one query may return: Weaviate's default QUERY_MAXIMUM_RESULTS."""

_MESSAGE_FIELDS = ["tenant_id", "session_id", "message_id", "content_hash"]
_TOMBSTONE_FIELDS = ["tenant_id", "session_id", "message_id", "pos_ms", "pos_seq"]


class WeaviateVectorStore(TombstoneProjection, VectorStore):
    store = "weaviate"
    transient_errors: ClassVar[tuple[type[BaseException], ...]] = (
        *UNREACHABLE,
        StoreUnavailableError,  # any other client error caused by one of those, see unavailable()
    )

    def __init__(
        self,
        *,
        url: str,
        collection: str = "AmemMessage",
        api_key: str | None = None,
        grpc_port: int = 50051,
    ) -> None:
        parts = urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ConfigurationError(f"the Weaviate URL must be http(s)://host[:port], not {url!r}")
        self._secure = parts.scheme == "https"
        self._host = parts.hostname
        self._port = parts.port or (443 if self._secure else 80)
        self._grpc_port = grpc_port
        self._api_key = api_key
        self.collection = collection
        self.erasures = f"{collection}Erasure"
        self._client: weaviate.WeaviateAsyncClient | None = None
        self._erasure_tenants: set[str] = set()
        """Tenants known to exist in the erasure collection (never a negative: see below)."""

    # -- lifecycle -------------------------------------------------------------------------

    async def start(self) -> None:
        with unavailable():
            if self._client is None:
                client = weaviate.use_async_with_custom(
                    http_host=self._host,
                    http_port=self._port,
                    http_secure=self._secure,
                    grpc_host=self._host,
                    grpc_port=self._grpc_port,
                    grpc_secure=self._secure,
                    auth_credentials=Auth.api_key(self._api_key) if self._api_key else None,
                    skip_init_checks=True,  # see the module docstring
                )
                try:
                    await client.connect()
                except BaseException:
                    await client.close()
                    raise
                self._client = client
            await self._create_missing()

    async def close(self) -> None:
        client, self._client = self._client, None
        if client is not None:
            await client.close()

    async def reset(self) -> None:
        await self.drop()
        with unavailable():
            await self._create_missing()

    async def drop(self) -> None:
        with unavailable():
            await self._require().collections.delete([self.collection, self.erasures])
            self._erasure_tenants.clear()

    async def _create_missing(self) -> None:
        await self._create_collection(self.collection, MESSAGE_PROPERTIES, indexed=True)
        await self._create_collection(self.erasures, ERASURE_PROPERTIES, indexed=False)

    async def _create_collection(
        self, name: str, properties: list[Property], *, indexed: bool
    ) -> None:
        collections = self._require().collections
        if await collections.exists(name):
            await self._add_missing_properties(name, properties)
            return
        try:
            await collections.create(
                name,
                properties=properties,
                vector_config=vector_config(indexed=indexed),
                multi_tenancy_config=MULTI_TENANCY,
            )
        except WeaviateBaseError:
            if not await collections.exists(name):
                raise
            # Another worker created it between our check and our create.

    async def _add_missing_properties(self, name: str, properties: list[Property]) -> None:
        """Add to an existing collection the properties it was made without."""
        config = self._require().collections.use(name).config
        held = {p.name for p in (await config.get(simple=True)).properties}
        for prop in properties:
            if prop.name in held:
                continue
            try:
                await config.add_property(prop)
            except WeaviateBaseError:
                latest = {p.name for p in (await config.get(simple=True)).properties}
                if prop.name not in latest:
                    raise
                # Another worker added it between our check and our add.

    def _require(self) -> weaviate.WeaviateAsyncClient:
        if self._client is None:
            raise RuntimeError("WeaviateVectorStore.start() has not been awaited")
        return self._client

    def _messages(self) -> CollectionAsync:
        return self._require().collections.use(self.collection)

    def _erasures(self) -> CollectionAsync:
        return self._require().collections.use(self.erasures)

    async def _in_tenant(
        self,
        collection: CollectionAsync,
        tenant_id: str,
        call: Callable[[CollectionAsync], Awaitable[T]],
        missing: T,
    ) -> T:
        """``call`` on the tenant's shard; ``missing`` when the tenant has none yet.

        Reads and deletes do not create tenants. Checking existence only after a failure
        keeps it off the common path.
        """
        name = tenant_name(tenant_id)
        try:
            return await call(collection.with_tenant(name))
        except WeaviateBaseError as exc:
            if unreachable(exc) or await collection.tenants.exists(name):
                raise
            return missing

    # -- writes ----------------------------------------------------------------------------

    async def apply(self, records: Sequence[Record]) -> None:
        with unavailable():
            await super().apply(records)

    async def _upsert(self, messages: Sequence[Record]) -> None:
        by_tenant: dict[str, list[DataObject[Any, None]]] = {}
        for record in messages:
            by_tenant.setdefault(record.event.tenant_id, []).append(_message_object(record))
        messages_collection = self._messages()

        async def insert(tenant_id: str, objects: list[DataObject[Any, None]]) -> None:
            shard = messages_collection.with_tenant(tenant_name(tenant_id))
            _refused(await shard.data.insert_many(objects), self.collection)

        # One insert_many (one round trip) per tenant, the tenants concurrently.
        await asyncio.gather(*(insert(t, objects) for t, objects in by_tenant.items()))

    async def _write_tombstones(self, erased: dict[SessionKey, Position]) -> None:
        await asyncio.gather(
            *(
                self._insert_tombstones(
                    tenant_id,
                    [_tombstone(tenant_id, s, p) for s, p in sessions.items()],
                    sessions_upto(tenant_id, sessions, False),
                )
                for tenant_id, sessions in _by_tenant(erased).items()
            )
        )

    async def _insert_tombstones(
        self, tenant_id: str, objects: list[DataObject[Any, None]], superseded: FilterReturn
    ) -> None:
        shard = self._erasures().with_tenant(tenant_name(tenant_id))
        _refused(await shard.data.insert_many(objects), self.erasures)
        # Only after the new ones exist: drop the tombstones they supersede.
        await shard.data.delete_many(where=superseded)

    async def _provision_erasures(self, tenant_ids: Iterable[str]) -> None:
        """Give these tenants a shard in the erasure collection, once per process.

        A tenant that was never erased has no shard there (only an insert creates one), and
        reading a missing shard costs a failed query plus an existence check on every batch.
        Only existence is cached: caching "no shard" would miss a tombstone another worker
        writes next, which is exactly what the re-read after each write must see.
        """
        names = sorted({tenant_name(t) for t in tenant_ids} - self._erasure_tenants)
        if not names:
            return
        tenants = self._erasures().tenants
        try:
            await tenants.create(names)
        except WeaviateBaseError as exc:  # some already exist (the server may refuse them)
            if unreachable(exc) or len(await tenants.get_by_names(names)) != len(names):
                raise
        self._erasure_tenants.update(names)

    async def _tombstones(self, sessions: Iterable[SessionKey]) -> dict[SessionKey, Position]:
        wanted: dict[str, set[str]] = {}
        for tenant_id, session_id in sessions:
            wanted.setdefault(tenant_id, set()).add(session_id)

        def which(tenant_id: str) -> FilterReturn:
            return tenant_filter(tenant_id) & Filter.any_of(
                [Filter.by_property("session_id").equal(s) for s in sorted(wanted[tenant_id])]
            )

        found: dict[SessionKey, Position] = {}
        for props, position in await self._read_tombstones(wanted, which):
            if props.get("message_id") is not None:
                continue  # a redaction's
            key = (str(props["tenant_id"]), str(props["session_id"]))
            if key not in found or position > found[key]:
                found[key] = position
        return found

    async def _write_redactions(self, redacted: dict[MessageAddress, Position]) -> None:
        await asyncio.gather(
            *(
                self._insert_tombstones(
                    tenant_id,
                    [_tombstone(tenant_id, s, p, m) for (s, m), p in messages.items()],
                    messages_upto(tenant_id, messages, False),
                )
                for tenant_id, messages in _messages_by_tenant(redacted).items()
            )
        )

    async def _redactions(
        self, messages: Iterable[MessageAddress]
    ) -> dict[MessageAddress, Position]:
        wanted: dict[str, set[MessageKey]] = {}
        for tenant_id, session_id, message_id in messages:
            wanted.setdefault(tenant_id, set()).add((session_id, message_id))

        def which(tenant_id: str) -> FilterReturn:
            return tenant_filter(tenant_id) & Filter.any_of(
                [
                    Filter.by_property("session_id").equal(s)
                    & Filter.by_property("message_id").equal(m)
                    for s, m in sorted(wanted[tenant_id])
                ]
            )

        found: dict[MessageAddress, Position] = {}
        for props, position in await self._read_tombstones(wanted, which):
            key = (str(props["tenant_id"]), str(props["session_id"]), str(props["message_id"]))
            if key not in found or position > found[key]:
                found[key] = position
        return found

    async def _read_tombstones(
        self, tenant_ids: Iterable[str], which: Callable[[str], FilterReturn]
    ) -> list[tuple[Mapping[str, object], Position]]:
        """The tombstones (properties and position) ``which`` selects in each tenant's shard."""
        tenants = sorted(set(tenant_ids))
        await self._provision_erasures(tenants)
        erasures = self._erasures()

        async def read(tenant_id: str) -> list[tuple[Mapping[str, object], Position]]:
            result = await self._in_tenant(
                erasures,
                tenant_id,
                lambda shard: shard.query.fetch_objects(
                    filters=which(tenant_id),
                    limit=TOMBSTONE_LIMIT,
                    return_properties=_TOMBSTONE_FIELDS,
                ),
                None,
            )
            if result is None:  # dropped by someone else's reset since we provisioned it
                self._erasure_tenants.discard(tenant_name(tenant_id))
                return []
            if len(result.objects) >= TOMBSTONE_LIMIT:
                raise ProjectorError(
                    f"more than {TOMBSTONE_LIMIT} tombstones in one read of tenant"
                    f" {tenant_id!r}: apply smaller batches"
                )
            return [
                (props, Position(_as_int(props["pos_ms"]), _as_int(props["pos_seq"])))
                for props in (obj.properties for obj in result.objects)
                if props["tenant_id"] == tenant_id
            ]

        return [found for part in await asyncio.gather(*map(read, tenants)) for found in part]

    async def _delete_upto(self, erased: dict[SessionKey, Position]) -> None:
        await asyncio.gather(
            *(self._delete(t, sessions_upto(t, s, True)) for t, s in _by_tenant(erased).items())
        )

    async def _delete_redacted(self, redacted: dict[MessageAddress, Position]) -> None:
        await asyncio.gather(
            *(
                self._delete(t, messages_upto(t, m, True))
                for t, m in _messages_by_tenant(redacted).items()
            )
        )

    async def _delete(self, tenant_id: str, which: FilterReturn) -> None:
        """Delete the messages ``which`` selects in the tenant's shard."""

        async def drain(shard: CollectionAsync) -> None:
            # One call deletes at most QUERY_MAXIMUM_RESULTS objects: repeat until none match.
            while True:
                result = await shard.data.delete_many(where=which)
                if result.failed:
                    raise ApplyError(
                        f"weaviate failed to delete {result.failed} objects of tenant"
                        f" {tenant_id!r} from {self.collection!r}"
                    )
                if not result.successful:
                    return

        await self._in_tenant(self._messages(), tenant_id, drain, None)

    # -- reads -----------------------------------------------------------------------------

    async def digest(self, tenant_id: str | None = None) -> Digest:
        messages_collection = self._messages()
        out: Digest = {}

        async def scan(shard: CollectionAsync) -> None:
            after = None
            while True:
                page = await shard.query.fetch_objects(
                    limit=PAGE, after=after, return_properties=_MESSAGE_FIELDS
                )
                for obj in page.objects:
                    props = obj.properties
                    tenant = str(props["tenant_id"])
                    if tenant_id is None or tenant == tenant_id:
                        session = (tenant, str(props["session_id"]))
                        out.setdefault(session, {})[str(props["message_id"])] = str(
                            props["content_hash"]
                        )
                if len(page.objects) < PAGE:
                    return
                after = page.objects[-1].uuid

        with unavailable():
            if tenant_id is not None:
                await self._in_tenant(messages_collection, tenant_id, scan, None)
            else:
                for name in await messages_collection.tenants.get():
                    await scan(messages_collection.with_tenant(name))
        return out

    async def count(self) -> int:
        messages_collection = self._messages()

        async def count_tenant(name: str) -> int:
            result = await messages_collection.with_tenant(name).aggregate.over_all(
                total_count=True
            )
            return result.total_count or 0

        with unavailable():
            names = list(await messages_collection.tenants.get())
            return sum(await asyncio.gather(*(count_tenant(n) for n in names)))

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
        which = scope_filter(tenant_id, scope)
        with unavailable():
            result = await self._in_tenant(
                self._messages(),
                tenant_id,
                lambda shard: shard.query.near_vector(
                    near_vector=list(vector),
                    target_vector=VECTOR,
                    limit=limit,
                    filters=which,
                    return_metadata=MetadataQuery(distance=True),
                    return_properties=["session_id", "message_id"],
                ),
                None,
            )
        if result is None:
            return []
        hits = []
        for obj in result.objects:
            distance = obj.metadata.distance
            hits.append(
                Hit(
                    session_id=str(obj.properties["session_id"]),
                    message_id=str(obj.properties["message_id"]),
                    # Weaviate's cosine distance is 1 - cosine similarity.
                    score=1.0 - (distance if distance is not None else 1.0),
                )
            )
        return hits


def _message_object(record: Record) -> DataObject[Any, None]:
    msg = record.message.message
    enrichment = record.enrichment
    if enrichment is None:
        raise ApplyError(f"weaviate applies enriched records only; message {msg.id!r} has none")
    # No user: no user_id at all (an insert replaces the whole object, so a later copy of
    # the message without one drops it too).
    user = {} if msg.user_id is None else {"user_id": msg.user_id}
    return DataObject(
        properties={
            "tenant_id": msg.tenant_id,
            "session_id": msg.session_id,
            "message_id": msg.id,
            **user,
            "pos_ms": record.position.ms,
            "pos_seq": record.position.seq,
            "content_hash": record.content_hash,
            "role": msg.role,
            "created_at": msg.created_at,
            "tokens": enrichment.tokens,
            "model": enrichment.model,
        },
        uuid=message_uuid(msg.tenant_id, msg.session_id, msg.id),
        vector={VECTOR: list(enrichment.vector)},
    )


def _tombstone(
    tenant_id: str, session_id: str, position: Position, message_id: str | None = None
) -> DataObject[Any, None]:
    """A session's erase tombstone, or with ``message_id`` a message's redaction tombstone."""
    if message_id is None:
        return DataObject(
            properties=_position(tenant_id, session_id, position),
            uuid=erasure_uuid(tenant_id, session_id, position),
        )
    return DataObject(
        properties={**_position(tenant_id, session_id, position), "message_id": message_id},
        uuid=redaction_uuid(tenant_id, session_id, message_id, position),
    )


def _position(tenant_id: str, session_id: str, position: Position) -> dict[str, object]:
    return {
        "tenant_id": tenant_id,
        "session_id": session_id,
        "pos_ms": position.ms,
        "pos_seq": position.seq,
    }


def _refused(result: BatchObjectReturn, collection: str) -> None:
    """Raise when Weaviate refused part of an ``insert_many`` (it reports, never raises)."""
    if result.errors:
        first = next(iter(result.errors.values()))
        raise ApplyError(
            f"weaviate refused {len(result.errors)} objects of {collection!r}: {first.message}"
        )


def _by_tenant(erased: dict[SessionKey, Position]) -> dict[str, dict[str, Position]]:
    out: dict[str, dict[str, Position]] = {}
    for (tenant_id, session_id), position in erased.items():
        out.setdefault(tenant_id, {})[session_id] = position
    return out


def _messages_by_tenant(
    redacted: dict[MessageAddress, Position],
) -> dict[str, dict[MessageKey, Position]]:
    out: dict[str, dict[MessageKey, Position]] = {}
    for (tenant_id, session_id, message_id), position in redacted.items():
        out.setdefault(tenant_id, {})[(session_id, message_id)] = position
    return out


def _as_int(value: object) -> int:
    if isinstance(value, int | float | str):
        return int(value)
    raise ProjectorError(f"weaviate returned {value!r} where an integer was stored")
