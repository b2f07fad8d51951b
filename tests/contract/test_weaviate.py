"""The Weaviate adapter: the contract where AMEM_TEST_WEAVIATE_URL is set, offline checks always.

Weaviate cannot run on this machine (compose.yaml has it): without the variable only what
needs no server runs — tenant names, the collection definitions as the client validates
them, and which client errors count as "Weaviate is down".
"""

from __future__ import annotations

import os
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest
import weaviate
from google.protobuf.json_format import MessageToDict  # type: ignore[import-untyped]
from grpc import StatusCode  # type: ignore[import-untyped]
from grpc.aio import AioRpcError, Metadata  # type: ignore[import-untyped]
from hypothesis import given
from hypothesis import strategies as st
from weaviate.classes.config import Property
from weaviate.collections.classes.config import _CollectionConfigCreate
from weaviate.exceptions import WeaviateDeleteManyError
from weaviate.proto.v1 import search_get_pb2
from weaviate.util import _ServerVersion

from projectors.errors import StoreUnavailableError
from projectors.position import Position
from projectors.store import WHOLE_TENANT, Scope
from projectors.stores.weaviate import WeaviateVectorStore, _message_object
from projectors.stores.weaviate_support import (
    ERASURE_PROPERTIES,
    MESSAGE_PROPERTIES,
    MULTI_TENANCY,
    tenant_name,
    unavailable,
    vector_config,
)
from schemas.errors import ConfigurationError
from tests.contract.base import VectorStoreContract, emptied
from tests.records import conversation, erase

WEAVIATE_URL_VAR = "AMEM_TEST_WEAVIATE_URL"

ids = st.from_regex(r"[A-Za-z0-9._:@/-]{1,128}", fullmatch=True)


@pytest.fixture
async def weaviate_store() -> AsyncIterator[WeaviateVectorStore]:
    url = os.environ.get(WEAVIATE_URL_VAR)
    if not url:
        pytest.skip(
            f"{WEAVIATE_URL_VAR} is not set: Weaviate cannot run here (compose.yaml has it)"
        )
    async with emptied(WeaviateVectorStore(url=url, collection="AmemTestMessage")) as store:
        yield store


class TestWeaviateVectorStore(VectorStoreContract):
    @pytest.fixture
    def store(self, weaviate_store: WeaviateVectorStore) -> WeaviateVectorStore:
        return weaviate_store

    async def test_tombstones_keep_the_furthest_erase(self, store: WeaviateVectorStore) -> None:
        await store.apply([erase("t1", "s1", 100)])
        await store.apply([erase("t1", "s1", 150), erase("t1", "s2", 30)])
        shard = store._erasures().with_tenant(tenant_name("t1"))
        held = await shard.aggregate.over_all(total_count=True)
        assert held.total_count == 2, "an erase replaces the session's earlier tombstones"
        await store.apply([erase("t1", "s1", 120)])  # late: must not move the tombstone back
        tombstones = await store._tombstones([("t1", "s1"), ("t1", "s2"), ("t2", "s1")])
        assert tombstones == {("t1", "s1"): Position(1_150, 0), ("t1", "s2"): Position(1_030, 0)}


# -- offline --------------------------------------------------------------------------------


@given(st.lists(ids, min_size=1, max_size=20, unique=True))
def test_tenant_names_are_valid_weaviate_names_and_never_collide(tenant_ids: list[str]) -> None:
    names = [tenant_name(t) for t in tenant_ids]
    for name in names:
        assert 1 <= len(name) <= 64
        assert all(ch.isascii() and (ch.isalnum() or ch in "_-") for ch in name)
    assert len(set(names)) == len(names)


def test_plain_tenant_ids_keep_their_name() -> None:
    assert tenant_name("acme-prod") == "acme-prod"
    assert tenant_name("a_b") != tenant_name("a.b")
    assert tenant_name("x" * 65).startswith("_h")


@pytest.mark.parametrize(
    ("name", "properties", "indexed"),
    [("AmemMessage", MESSAGE_PROPERTIES, True), ("AmemMessageErasure", ERASURE_PROPERTIES, False)],
)
def test_collection_definitions_pass_the_clients_validation(
    name: str, properties: list[Property], indexed: bool
) -> None:
    config = _CollectionConfigCreate(
        name=name,
        properties=properties,
        vector_config=vector_config(indexed=indexed),
        multi_tenancy_config=MULTI_TENANCY,
    )._to_dict()
    assert config["multiTenancyConfig"]["autoTenantCreation"] is True
    assert config["vectorConfig"]["embedding"]["vectorizer"] == {"none": {}}
    index = config["vectorConfig"]["embedding"]["vectorIndexConfig"]
    assert index == ({"distance": "cosine"} if indexed else {"skip": True})
    by_name = {p["name"]: p for p in config["properties"]}
    assert by_name["tenant_id"]["tokenization"] == "field"
    assert by_name["pos_ms"]["dataType"] == ["int"]
    if indexed:
        assert by_name["user_id"]["tokenization"] == "field"
        assert by_name["user_id"]["indexFilterable"] is True


def test_a_message_object_names_its_user_only_when_it_has_one() -> None:
    [with_user] = conversation("t1", "s1", 1, user_id="ada@example.com")
    [without] = conversation("t1", "s1", 1)
    assert _message_object(with_user).properties["user_id"] == "ada@example.com"
    assert "user_id" not in _message_object(without).properties


COMPOSE_WEAVIATE = _ServerVersion(1, 38, 2)
"""The version compose.yaml runs: the client builds its requests for the server's version."""


def offline_client() -> weaviate.WeaviateAsyncClient:
    """A client never connected: each test stubs the transport calls it expects."""
    client = weaviate.use_async_with_custom(
        http_host="127.0.0.1",
        http_port=9,
        http_secure=False,
        grpc_host="127.0.0.1",
        grpc_port=10,
        grpc_secure=False,
        skip_init_checks=True,
    )
    client._connection._weaviate_version = COMPOSE_WEAVIATE
    return client


def _equal(prop: str, value: str) -> dict[str, Any]:
    return {"operator": "OPERATOR_EQUAL", "valueText": value, "target": {"property": prop}}


@pytest.mark.parametrize(
    ("scope", "expected"),
    [
        (WHOLE_TENANT, _equal("tenant_id", "acme")),
        (
            Scope(session_id="now"),
            {
                "operator": "OPERATOR_AND",
                "filters": [_equal("tenant_id", "acme"), _equal("session_id", "now")],
            },
        ),
        (
            Scope(user_id="ada"),
            {
                "operator": "OPERATOR_AND",
                "filters": [_equal("tenant_id", "acme"), _equal("user_id", "ada")],
            },
        ),
        (
            Scope(session_id="now", user_id="ada"),
            {
                "operator": "OPERATOR_AND",
                "filters": [
                    _equal("tenant_id", "acme"),
                    {
                        "operator": "OPERATOR_OR",
                        "filters": [_equal("session_id", "now"), _equal("user_id", "ada")],
                    },
                ],
            },
        ),
    ],
    ids=["tenant", "session", "user", "session-or-user"],
)
async def test_nearest_puts_the_tenant_and_scope_filter_in_the_search_request(
    scope: Scope, expected: dict[str, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    """The gRPC request ``nearest`` sends, as the client builds it, captured before the wire."""
    client = offline_client()
    sent: list[search_get_pb2.SearchRequest] = []

    async def grpc_search(request: search_get_pb2.SearchRequest) -> search_get_pb2.SearchReply:
        sent.append(request)
        return search_get_pb2.SearchReply()

    monkeypatch.setattr(client._connection, "grpc_search", grpc_search)
    store = WeaviateVectorStore(url="http://127.0.0.1:9")
    store._client = client
    assert await store.nearest("acme", [0.5, 0.5], limit=3, scope=scope) == []
    [request] = sent
    assert (request.collection, request.tenant, request.limit) == ("AmemMessage", "acme", 3)
    assert MessageToDict(request.filters) == expected


def _as_served(prop: Property) -> dict[str, Any]:
    """A property as Weaviate's schema endpoint describes it."""
    mine = prop._to_dict()
    fields = ("name", "dataType", "indexFilterable", "indexSearchable", "tokenization")
    return {"indexFilterable": True, "indexSearchable": False} | {
        k: mine[k] for k in fields if k in mine
    }


async def test_start_adds_user_id_to_a_collection_made_before_it(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Schema reads and writes stubbed: the old collection lacks user_id, start adds it once."""
    schemas: dict[str, dict[str, Any]] = {
        "AmemMessage": {
            "class": "AmemMessage",
            "properties": [_as_served(p) for p in MESSAGE_PROPERTIES if p.name != "user_id"],
        },
        "AmemMessageErasure": {
            "class": "AmemMessageErasure",
            "properties": [_as_served(p) for p in ERASURE_PROPERTIES],
        },
    }
    added: list[tuple[str, dict[str, Any]]] = []

    def answer(method: str, path: str, status: int, body: object = None) -> httpx.Response:
        return httpx.Response(status, json=body, request=httpx.Request(method, f"http://x{path}"))

    async def head(path: str, **_: Any) -> httpx.Response:
        return answer("HEAD", path, 200 if path.split("/")[2] in schemas else 404)

    async def get(path: str, **_: Any) -> httpx.Response:
        return answer("GET", path, 200, schemas[path.split("/")[2]])

    async def post(path: str, weaviate_object: dict[str, Any], **_: Any) -> httpx.Response:
        name = path.split("/")[2]
        added.append((name, weaviate_object))
        schemas[name]["properties"].append(weaviate_object)
        return answer("POST", path, 200, weaviate_object)

    client = offline_client()
    for name, stub in (("head", head), ("get", get), ("post", post)):
        monkeypatch.setattr(client._connection, name, stub)
    store = WeaviateVectorStore(url="http://127.0.0.1:9")
    store._client = client
    await store.start()
    [(collection, prop)] = added
    assert collection == "AmemMessage"
    assert prop == {
        "name": "user_id",
        "dataType": ["text"],
        "indexFilterable": True,
        "indexSearchable": False,
        "tokenization": "field",
    }
    await store.start()  # another worker, or a restart: nothing more to add
    assert len(added) == 1


def _delete_error(code: StatusCode) -> WeaviateDeleteManyError:
    """A delete error raised the way the client raises it: while handling the gRPC error."""
    try:
        try:
            raise AioRpcError(code, Metadata(), Metadata(), details="test")
        except AioRpcError as grpc_error:
            raise WeaviateDeleteManyError(f"[{code.name}] test") from grpc_error
    except WeaviateDeleteManyError as exc:
        return exc


def test_an_unreachable_server_is_transient_and_a_bad_request_is_not() -> None:
    with pytest.raises(StoreUnavailableError), unavailable():
        raise _delete_error(StatusCode.UNAVAILABLE)
    with pytest.raises(WeaviateDeleteManyError), unavailable():
        raise _delete_error(StatusCode.INVALID_ARGUMENT)
    assert issubclass(StoreUnavailableError, WeaviateVectorStore.transient_errors)
    assert not issubclass(WeaviateDeleteManyError, WeaviateVectorStore.transient_errors)


@pytest.mark.parametrize("url", ["grpc://127.0.0.1:50051", "127.0.0.1:8080", "http://"])
def test_the_url_must_be_http(url: str) -> None:
    with pytest.raises(ConfigurationError, match="http"):
        WeaviateVectorStore(url=url)
