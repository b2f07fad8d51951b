"""The server-independent half of the Weaviate adapter (:mod:`projectors.stores.weaviate`).

Collection definitions, tenant names, filters, and which client errors mean "Weaviate is
down": all of it can be checked without a server, which the test suite does.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Iterator
from contextlib import contextmanager

import httpx
from grpc import StatusCode  # type: ignore[import-untyped]
from grpc.aio import AioRpcError  # type: ignore[import-untyped]
from weaviate.classes.config import (
    Configure,
    DataType,
    Property,
    Tokenization,
    VectorConfigCreate,
    VectorDistances,
)
from weaviate.classes.query import Filter
from weaviate.collections.classes.filters import FilterReturn
from weaviate.exceptions import (
    WeaviateBaseError,
    WeaviateConnectionError,
    WeaviateGRPCUnavailableError,
    WeaviateRetryError,
    WeaviateStartUpError,
    WeaviateTimeoutError,
)

from projectors.errors import StoreUnavailableError
from projectors.position import Position
from projectors.store import MessageKey, Scope

VECTOR = "embedding"
"""Name of the one vector of a message (named, so that no call relies on a default vector)."""


def _text(name: str, *, filterable: bool = True) -> Property:
    # FIELD tokenization: an id is one token, so "a.b" never matches "a".
    return Property(
        name=name,
        data_type=DataType.TEXT,
        tokenization=Tokenization.FIELD,
        index_filterable=filterable,
        index_searchable=False,
    )


def _int(name: str, *, filterable: bool = True) -> Property:
    return Property(name=name, data_type=DataType.INT, index_filterable=filterable)


MESSAGE_PROPERTIES = [
    _text("tenant_id"),
    _text("session_id"),
    _text("message_id"),
    _text("user_id"),  # absent when the message names no user
    _int("pos_ms"),
    _int("pos_seq"),
    _text("content_hash", filterable=False),
    _text("role"),
    Property(name="created_at", data_type=DataType.DATE),
    _int("tokens", filterable=False),
    _text("model", filterable=False),
]
ERASURE_PROPERTIES = [
    _text("tenant_id"),
    _text("session_id"),
    _text("message_id"),  # a redaction's; absent from a session erase's
    _int("pos_ms"),
    _int("pos_seq"),
]


def vector_config(*, indexed: bool) -> VectorConfigCreate:
    """Self-provided vectors (no vectorizer): HNSW with cosine distance, or no index at all."""
    index = (
        Configure.VectorIndex.hnsw(distance_metric=VectorDistances.COSINE)
        if indexed
        else Configure.VectorIndex.none()
    )
    config: VectorConfigCreate = Configure.Vectors.self_provided(
        name=VECTOR, vector_index_config=index
    )
    return config


MULTI_TENANCY = Configure.multi_tenancy(
    enabled=True, auto_tenant_creation=True, auto_tenant_activation=True
)


def tenant_name(tenant_id: str) -> str:
    """The Weaviate tenant of an Atomic Memory tenant; distinct ids give distinct names.

    Weaviate allows ``[A-Za-z0-9_-]{1,64}``; ids also allow ``. : @ /`` and reach 128
    characters. ``_`` escapes: ``_`` → ``__``, ``.`` → ``_d``, ``:`` → ``_c``, ``@`` →
    ``_a``, ``/`` → ``_s``. A result over 64 characters becomes ``_h`` + 62 hex digits of its
    SHA-256; no escaped name starts with ``_h``, so the two forms never meet.
    """
    escaped = "".join(_ESCAPES.get(ch, ch) for ch in tenant_id)
    if len(escaped) <= 64 and _TENANT_NAME.fullmatch(escaped):
        return escaped
    return "_h" + hashlib.sha256(tenant_id.encode()).hexdigest()[:62]


_ESCAPES = {"_": "__", ".": "_d", ":": "_c", "@": "_a", "/": "_s"}
_TENANT_NAME = re.compile(r"[A-Za-z0-9_-]{1,64}")


def tenant_filter(tenant_id: str) -> FilterReturn:
    return Filter.by_property("tenant_id").equal(tenant_id)


def scope_filter(tenant_id: str, scope: Scope) -> FilterReturn:
    """The tenant and the scope: its session's or its user's objects, or both (the union)."""
    either = []
    if scope.session_id is not None:
        either.append(Filter.by_property("session_id").equal(scope.session_id))
    if scope.user_id is not None:
        either.append(Filter.by_property("user_id").equal(scope.user_id))
    if not either:
        return tenant_filter(tenant_id)
    return tenant_filter(tenant_id) & (either[0] if len(either) == 1 else either[0] | either[1])


def upto(position: Position, inclusive: bool) -> FilterReturn:
    """Objects at or before ``position`` (strictly before unless ``inclusive``), in log order."""
    seq = Filter.by_property("pos_seq")
    return Filter.by_property("pos_ms").less_than(position.ms) | (
        Filter.by_property("pos_ms").equal(position.ms)
        & (seq.less_or_equal(position.seq) if inclusive else seq.less_than(position.seq))
    )


def sessions_upto(tenant_id: str, sessions: dict[str, Position], inclusive: bool) -> FilterReturn:
    return tenant_filter(tenant_id) & Filter.any_of(
        [
            Filter.by_property("session_id").equal(session_id) & upto(position, inclusive)
            for session_id, position in sessions.items()
        ]
    )


def messages_upto(
    tenant_id: str, messages: dict[MessageKey, Position], inclusive: bool
) -> FilterReturn:
    return tenant_filter(tenant_id) & Filter.any_of(
        [
            Filter.by_property("session_id").equal(session_id)
            & Filter.by_property("message_id").equal(message_id)
            & upto(position, inclusive)
            for (session_id, message_id), position in messages.items()
        ]
    )


UNREACHABLE: tuple[type[BaseException], ...] = (
    OSError,
    httpx.TransportError,
    WeaviateConnectionError,  # REST: connection refused or reset
    WeaviateTimeoutError,  # REST: read timeout
    WeaviateRetryError,  # gRPC: still UNAVAILABLE after the client's own retries
    WeaviateStartUpError,  # connect(): the server did not answer
    WeaviateGRPCUnavailableError,
)
UNREACHABLE_CODES = frozenset({StatusCode.UNAVAILABLE, StatusCode.DEADLINE_EXCEEDED})


def unreachable(exc: BaseException) -> bool:
    """Whether ``exc``, or an error it was raised from, means the server cannot be reached."""
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        if isinstance(current, UNREACHABLE):
            return True
        if isinstance(current, AioRpcError) and current.code() in UNREACHABLE_CODES:
            return True
        current = current.__cause__ or current.__context__
    return False


@contextmanager
def unavailable() -> Iterator[None]:
    """Turn a client error caused by an unreachable server into :class:`StoreUnavailableError`.

    The client wraps gRPC UNAVAILABLE in errors that also mean a bad request
    (``WeaviateDeleteManyError``, ``WeaviateQueryError``): the cause tells them apart.
    """
    try:
        yield
    except WeaviateBaseError as exc:
        if unreachable(exc):
            raise StoreUnavailableError("weaviate", exc) from exc
        raise
