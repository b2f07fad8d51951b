"""The Weaviate adapter: the contract where AMEM_TEST_WEAVIATE_URL is set, offline checks always.

Weaviate cannot run on this machine (compose.yaml has it): without the variable only what
needs no server runs — tenant names, the collection definitions as the client validates
them, and which client errors count as "Weaviate is down".
"""

from __future__ import annotations

import os
from collections.abc import AsyncIterator

import pytest
from grpc import StatusCode  # type: ignore[import-untyped]
from grpc.aio import AioRpcError, Metadata  # type: ignore[import-untyped]
from hypothesis import given
from hypothesis import strategies as st
from weaviate.classes.config import Property
from weaviate.collections.classes.config import _CollectionConfigCreate
from weaviate.exceptions import WeaviateDeleteManyError

from projectors.errors import StoreUnavailableError
from projectors.position import Position
from projectors.stores.weaviate import WeaviateVectorStore
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
from tests.records import erase

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
