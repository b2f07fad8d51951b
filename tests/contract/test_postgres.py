"""The Postgres adapters against the embedded Postgres 16 + pgvector."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from projectors.stores.pgvector import PgvectorVectorStore
from projectors.stores.postgres import PostgresProjectionStore
from stack.settings import Settings
from tests.contract.base import (
    HistoryStoreContract,
    ProjectionStoreContract,
    VectorSourceContract,
    VectorStoreContract,
    emptied,
)
from tests.records import conversation, erase


@pytest.fixture
async def postgres_store(settings: Settings) -> AsyncIterator[PostgresProjectionStore]:
    assert settings.postgres_url is not None
    async with emptied(
        PostgresProjectionStore(url=settings.postgres_url, projector="test-postgres")
    ) as store:
        yield store


@pytest.fixture
async def pgvector_store(settings: Settings) -> AsyncIterator[PgvectorVectorStore]:
    assert settings.postgres_url is not None
    async with emptied(
        PgvectorVectorStore(url=settings.postgres_url, projector="test-pgvector")
    ) as store:
        yield store


class TestPostgresProjectionStore(ProjectionStoreContract, HistoryStoreContract):
    @pytest.fixture
    def store(self, postgres_store: PostgresProjectionStore) -> PostgresProjectionStore:
        return postgres_store

    async def test_positions_advance_with_the_rows(self, store: PostgresProjectionStore) -> None:
        records = conversation("t1", "s1")
        await store.apply(records[3:])
        await store.apply(records[:3])
        assert await store.positions() == {0: records[-1].position}

    async def test_archive_keeps_erasures_and_drops_erased_messages(
        self, store: PostgresProjectionStore
    ) -> None:
        await store.apply([*conversation("t1", "s1", 3), erase("t1", "s1", 50)])
        assert store._pool is not None
        rows = await store._pool.fetch("SELECT event_type FROM amem_archive")
        assert [r[0] for r in rows] == ["session.erased"]


class TestPgvectorVectorStore(VectorStoreContract, VectorSourceContract):
    @pytest.fixture
    def store(self, pgvector_store: PgvectorVectorStore) -> PgvectorVectorStore:
        return pgvector_store
