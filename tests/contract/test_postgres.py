"""The Postgres adapters against the embedded Postgres 16 + pgvector."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from projectors.errors import ArchiveError
from projectors.stores.archive import PostgresArchiveStore
from projectors.stores.pgvector import PgvectorVectorStore
from projectors.stores.postgres import PostgresProjectionStore
from stack.settings import Settings
from tests.contract.base import (
    HistoryStoreContract,
    ProjectionContract,
    ProjectionStoreContract,
    VectorSourceContract,
    VectorStoreContract,
    emptied,
)
from tests.records import MODEL, conversation, erase


@pytest.fixture
async def postgres_store(settings: Settings) -> AsyncIterator[PostgresProjectionStore]:
    assert settings.postgres_url is not None
    async with emptied(
        PostgresProjectionStore(url=settings.postgres_url, projector="test-postgres")
    ) as store:
        yield store


@pytest.fixture
async def archive_store(settings: Settings) -> AsyncIterator[PostgresArchiveStore]:
    assert settings.postgres_url is not None
    async with emptied(PostgresArchiveStore(url=settings.postgres_url)) as store:
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


class TestPostgresArchiveStore(ProjectionContract):
    @pytest.fixture
    def store(self, archive_store: PostgresArchiveStore) -> PostgresArchiveStore:
        return archive_store

    async def test_keeps_erasures_and_drops_erased_messages(
        self, store: PostgresArchiveStore
    ) -> None:
        await store.apply([*conversation("t1", "s1", 3), erase("t1", "s1", 50)])
        records = await store.records(0, after=None, before=None, model=MODEL)
        assert [r.event.TYPE for r in records] == ["session.erased"]

    async def test_gives_back_events_and_enrichments_in_log_order_between_bounds(
        self, store: PostgresArchiveStore
    ) -> None:
        records = conversation("t1", "s1", 6)
        await store.apply(list(reversed(records)))
        between = await store.records(
            0, after=records[0].position, before=records[5].position, model=MODEL, limit=3
        )
        assert [r.position for r in between] == [r.position for r in records[1:4]]
        for got, want in zip(between, records[1:4], strict=True):
            assert got.raw == want.raw
            assert want.enrichment is not None
            assert got.enrichment is not None
            assert got.enrichment.tokens == want.enrichment.tokens
            assert list(got.enrichment.entities) == list(want.enrichment.entities)
            assert got.enrichment.vector == pytest.approx(want.enrichment.vector, abs=1e-6)
        plain = await store.records(0, after=None, before=None)
        assert [r.enrichment for r in plain] == [None] * 6

    async def test_a_model_it_holds_no_vectors_of_is_an_error_not_a_silent_gap(
        self, store: PostgresArchiveStore
    ) -> None:
        await store.apply(conversation("t1", "s1", 2))
        with pytest.raises(ArchiveError, match="no archived enrichment"):
            await store.records(0, after=None, before=None, model="another-model")


class TestPgvectorVectorStore(VectorStoreContract, VectorSourceContract):
    @pytest.fixture
    def store(self, pgvector_store: PgvectorVectorStore) -> PgvectorVectorStore:
        return pgvector_store
