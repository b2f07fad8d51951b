"""The Qdrant adapter: local mode always, a Qdrant server where AMEM_TEST_QDRANT_URL is set."""

from __future__ import annotations

import os
from collections.abc import AsyncIterator

import pytest
from qdrant_client import models

from projectors.errors import ApplyError
from projectors.position import Position
from projectors.records import Record
from projectors.stores.qdrant import QdrantVectorStore
from schemas.errors import ConfigurationError
from tests.contract.base import VectorStoreContract, emptied
from tests.records import DIM, conversation, erase, redact

QDRANT_URL_VAR = "AMEM_TEST_QDRANT_URL"


@pytest.fixture(scope="session")
def qdrant_path(tmp_path_factory: pytest.TempPathFactory) -> str:
    return str(tmp_path_factory.mktemp("qdrant-local"))


@pytest.fixture
async def qdrant_local(qdrant_path: str) -> AsyncIterator[QdrantVectorStore]:
    async with emptied(QdrantVectorStore(path=qdrant_path, dimension=DIM)) as store:
        yield store


@pytest.fixture
async def qdrant_server() -> AsyncIterator[QdrantVectorStore]:
    url = os.environ.get(QDRANT_URL_VAR)
    if not url:
        pytest.skip(f"{QDRANT_URL_VAR} is not set: no Qdrant server here (compose.yaml has one)")
    async with emptied(
        QdrantVectorStore(url=url, collection="amem_test_messages", dimension=DIM)
    ) as store:
        yield store


class QdrantChecks(VectorStoreContract):
    """Qdrant specifics, on top of the contract, for both modes."""

    async def test_tombstones_keep_the_furthest_erase(self, store: QdrantVectorStore) -> None:
        await store.apply([erase("t1", "s1", 100)])
        await store.apply([erase("t1", "s1", 150), erase("t1", "s2", 30)])
        assert store._client is not None
        held = await store._client.count(store.erasures, exact=True)
        assert held.count == 2, "an erase replaces the session's earlier tombstones"
        await store.apply([erase("t1", "s1", 120)])  # late: must not move the tombstone back
        tombstones = await store._tombstones([("t1", "s1"), ("t1", "s2"), ("t1", "s3")])
        assert tombstones == {("t1", "s1"): Position(1_150, 0), ("t1", "s2"): Position(1_030, 0)}

    async def test_redaction_tombstones_sit_beside_erase_tombstones(
        self, store: QdrantVectorStore
    ) -> None:
        await store.apply([redact("t1", "s1", "m1", 100), redact("t1", "s1", "m1", 90)])
        await store.apply([redact("t1", "s1", "m1", 120), redact("t1", "s2", "m1", 60)])
        await store.apply([redact("t1", "s1", "m1", 110)])  # late: must not move it back
        assert store._client is not None
        held = await store._client.count(store.erasures, exact=True)
        assert held.count == 3, "a redaction replaces the message's earlier tombstones"
        asked = [("t1", "s1", "m1"), ("t1", "s1", "m2"), ("t2", "s1", "m1")]
        assert await store._redactions(asked) == {("t1", "s1", "m1"): Position(1_120, 0)}
        assert await store._tombstones([("t1", "s1")]) == {}, "a redaction erases no session"
        await store.apply([erase("t1", "s1", 200)])  # covers what the redaction did
        assert await store._redactions(asked) == {}
        assert await store._redactions([("t1", "s2", "m1")]) == {
            ("t1", "s2", "m1"): Position(1_060, 0)
        }
        assert await store._tombstones([("t1", "s1")]) == {("t1", "s1"): Position(1_200, 0)}

    async def test_a_record_without_a_vector_is_refused(self, store: QdrantVectorStore) -> None:
        [record] = conversation("t1", "s1", 1)
        bare = Record(
            partition=record.partition, position=record.position, event=record.event, raw=record.raw
        )
        with pytest.raises(ApplyError, match="enriched"):
            await store.apply([bare])
        assert await store.count() == 0


class TestQdrantLocal(QdrantChecks):
    @pytest.fixture
    def store(self, qdrant_local: QdrantVectorStore) -> QdrantVectorStore:
        return qdrant_local

    async def test_data_survives_a_restart(
        self, store: QdrantVectorStore, qdrant_path: str
    ) -> None:
        await store.apply(conversation("t1", "s1"))
        await store.close()
        reopened = QdrantVectorStore(path=qdrant_path, dimension=DIM)
        await reopened.start()
        try:
            assert await reopened.count() == 6
        finally:
            await reopened.close()


class TestQdrantServer(QdrantChecks):
    @pytest.fixture
    def store(self, qdrant_server: QdrantVectorStore) -> QdrantVectorStore:
        return qdrant_server

    async def test_the_filtered_fields_have_keyword_indexes(self, store: QdrantVectorStore) -> None:
        assert store._client is not None
        await store.start()  # idempotent: a collection made before user scopes gains user_id
        schema = (await store._client.get_collection(store.collection)).payload_schema
        for field in ("tenant_id", "session_id", "user_id"):
            assert schema[field].data_type == models.PayloadSchemaType.KEYWORD


@pytest.mark.parametrize(
    ("url", "path"), [(None, None), ("http://127.0.0.1:6333", "/tmp/q")], ids=["neither", "both"]
)
def test_exactly_one_of_url_and_path(url: str | None, path: str | None) -> None:
    with pytest.raises(ConfigurationError, match="exactly one"):
        QdrantVectorStore(url=url, path=path)
