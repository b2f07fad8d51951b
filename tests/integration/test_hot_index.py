"""The in-memory copy of a scope against the real Postgres stores it copies.

Its reads must equal the stores' own (same hits, same scores, same windows) at every
watermark, as rows arrive, move and are erased; and a rehydrate must reach the oldest turn
of a long session, copy or no copy.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence
from dataclasses import replace

import numpy as np
import pytest
import redis.asyncio as aioredis

from projectors.position import Position
from projectors.records import Record
from projectors.store import Hit, Scope
from projectors.stores.pgvector import PgvectorVectorStore
from projectors.stores.postgres import PostgresProjectionStore
from rehydrator.hot_index import HotIndex, HotIndexes
from rehydrator.query_embedding import QueryEmbedder
from rehydrator.rehydrate import Rehydrator
from rehydrator.tokens import TokenCounter
from rehydrator.vector_scan import MIN_ROWS
from stack.projections import reads_enriched
from stack.settings import Settings
from tests.contract.base import emptied
from tests.records import erase, fake_vector, message

pytestmark = pytest.mark.timeout(300)

FACT = "My first car was a green Saab 900 called Olive."
TEXTS = [
    "We walked to the harbour at dawn",
    "The lighthouse keeper waved at us",
    "Grandma baked a cherry pie for the fair",
    "My greyhound Pixel sleeps all day",
    "The ferry to Skye was cancelled again",
    "I started learning the cello in March",
]


def turns(
    tenant: str, session: str, n: int, *, start: int = 0, user: str | None = None
) -> list[Record]:
    return [
        message(
            tenant,
            session,
            f"m{i}",
            f"{TEXTS[i % len(TEXTS)]} ({i})",
            i,
            name=("Ada", "Ben")[i % 2],
            role=("user", "assistant")[i % 2],
            user_id=user,
        )
        for i in range(start, start + n)
    ]


@pytest.fixture
async def stores(
    settings: Settings,
) -> AsyncIterator[tuple[PostgresProjectionStore, PgvectorVectorStore]]:
    url = settings.require_postgres()
    async with (
        emptied(PostgresProjectionStore(url=url, projector="hot-postgres")) as history,
        emptied(PgvectorVectorStore(url=url, projector="hot-pgvector")) as vectors,
    ):
        yield history, vectors


async def apply(
    stores: tuple[PostgresProjectionStore, PgvectorVectorStore], records: Sequence[Record]
) -> None:
    for store in stores:
        await store.apply(records)


def marks(at: Position | None) -> dict[str, dict[int, Position | None]]:
    """Both stores' watermark on partition 0 (the copy follows them by store name)."""
    return {"postgres": {0: at}, "pgvector": {0: at}}


async def current(indexes: HotIndexes, scope: Scope, at: Position | None) -> HotIndex:
    copy = await indexes.current("t1", scope, marks(at))
    if copy is None:  # the first ask starts the load
        await indexes.settle()
        copy = await indexes.current("t1", scope, marks(at))
    assert copy is not None
    return copy


def assert_same_ranking(got: Sequence[Hit], expected: Sequence[Hit], tolerance: float) -> None:
    """The same scores in order and the same hits, but for ties the limit cuts through
    (their order depends on rounding in the last bits of a float)."""
    assert [h.score for h in got] == pytest.approx([h.score for h in expected], abs=tolerance)
    if not expected:
        return
    cut = expected[-1].score + 2 * tolerance
    assert {h.key for h in got if h.score > cut} == {h.key for h in expected if h.score > cut}


async def assert_equal_to_the_stores(
    copy: HotIndex,
    stores: tuple[PostgresProjectionStore, PgvectorVectorStore],
    scope: Scope,
) -> None:
    history, vectors = stores
    for query in ("lighthouse harbour", "Ben greyhound Pixel", "ferry cello fair pie"):
        expected = await history.lexical("t1", query, limit=7, scope=scope)
        assert_same_ranking(copy.lexical(await history.analyse(query), 7), expected, 1e-9)
        probe = fake_vector(query)
        expected_near = await vectors.nearest("t1", probe, limit=7, scope=scope)
        got_near = await copy.nearest(np.asarray(probe, np.float32), 7)
        assert_same_ranking(got_near, expected_near, 1e-5)
    keys = [h.key for h in await history.lexical("t1", "lighthouse", limit=50, scope=scope)]
    assert copy.around(keys, 2) == await history.around("t1", keys, radius=2)
    for session in {k[0] for k in keys}:
        assert copy.recent(session, 3) == await history.recent("t1", session, limit=3)
        assert copy.summary(session) == await history.session("t1", session)
    assert copy.messages(keys) == await history.messages("t1", keys)


@pytest.mark.parametrize(
    "scope",
    [Scope(session_id="s1"), Scope(session_id="s1", user_id="ada")],
    ids=["session", "user"],
)
async def test_the_copy_answers_as_the_stores_do_as_rows_come_move_and_go(
    stores: tuple[PostgresProjectionStore, PgvectorVectorStore], scope: Scope
) -> None:
    history, vectors = stores
    indexes = HotIndexes(history, vectors, max_rows=10_000)
    await apply(stores, turns("t1", "s1", 40) + turns("t1", "a1", 30, user="ada"))
    await apply(stores, turns("t2", "s1", 40) + turns("t1", "b1", 30, user="bob"))
    # The watermark: every row at or before it is applied (rows past it may be too).
    at = Position(1_039, 0)
    copy = await current(indexes, scope, at)
    await assert_equal_to_the_stores(copy, stores, scope)

    # New rows, some applied out of order and past the next watermark.
    later = turns("t1", "s1", 20, start=40) + turns("t1", "a2", 10, start=100, user="ada")
    await apply(stores, later[10:])
    await apply(stores, later[:10])
    at = Position(1_109, 0)
    assert await indexes.current("t1", scope, marks(at)) is copy
    await assert_equal_to_the_stores(copy, stores, scope)

    # A session erased, then written again after its erase.
    await apply(stores, [erase("t1", "a1", 300), erase("t1", "s1", 301)])
    await apply(stores, turns("t1", "s1", 5, start=400))
    at = Position(1_404, 0)
    assert await indexes.current("t1", scope, marks(at)) is copy
    await assert_equal_to_the_stores(copy, stores, scope)
    assert not copy.recent("a1", 10)
    assert [m.message.id for m in copy.recent("s1", 10)] == [f"m{i}" for i in range(400, 405)]


async def test_a_large_copys_quantised_scan_answers_as_pgvector_does(
    stores: tuple[PostgresProjectionStore, PgvectorVectorStore],
) -> None:
    history, vectors = stores
    indexes = HotIndexes(history, vectors, max_rows=100_000)
    scope = Scope(session_id="big")
    records = [
        message("t1", "big", f"m{i}", f"{TEXTS[i % len(TEXTS)]} number {i}", i)
        for i in range(MIN_ROWS + 500)
    ]
    await apply(stores, records)
    copy = await current(indexes, scope, records[-1].position)
    await indexes.settle()
    assert copy.vectors.segment is not None  # the int8 first pass is in use
    for text in TEXTS:
        probe = fake_vector(f"{text} number 17")
        expected = await vectors.nearest("t1", probe, limit=50, scope=scope)
        got = await copy.nearest(np.asarray(probe, np.float32), 50)
        assert_same_ranking(got, expected, 1e-5)


async def test_a_copy_is_used_only_when_current_and_loaded_again_after_a_rebuild(
    stores: tuple[PostgresProjectionStore, PgvectorVectorStore],
) -> None:
    history, vectors = stores
    indexes = HotIndexes(history, vectors, max_rows=10_000)
    scope = Scope(session_id="s1")
    await apply(stores, turns("t1", "s1", 10))
    assert await indexes.current("t1", scope, marks(Position(1_500, 0))) is None  # loading
    copy = await current(indexes, scope, Position(1_500, 0))
    await history.reset()  # a rebuild: the watermarks go back
    await vectors.reset()
    await apply(stores, turns("t1", "s1", 3))
    assert await indexes.current("t1", scope, marks(Position(1_002, 0))) is None
    again = await current(indexes, scope, Position(1_002, 0))
    assert again is not copy
    assert [m.message.id for m in again.recent("s1", 10)] == ["m0", "m1", "m2"]


async def test_copies_are_kept_within_their_row_budget(
    stores: tuple[PostgresProjectionStore, PgvectorVectorStore],
) -> None:
    history, vectors = stores
    indexes = HotIndexes(history, vectors, max_rows=50)
    await apply(stores, turns("t1", "s1", 30) + turns("t1", "s2", 30))
    first = await current(indexes, Scope(session_id="s1"), None)
    assert first.rows == 30  # turns, each with its vector
    await current(indexes, Scope(session_id="s2"), None)
    # Both do not fit: the one used last stays.
    assert await indexes.current("t1", Scope(session_id="s1"), marks(None)) is None


@pytest.mark.parametrize("memory", [False, True], ids=["stores", "memory"])
async def test_a_turn_older_than_5000_later_turns_is_found_by_a_query_that_names_it(
    stores: tuple[PostgresProjectionStore, PgvectorVectorStore], settings: Settings, memory: bool
) -> None:
    history, vectors = stores
    tenant = f"old-{'memory' if memory else 'stores'}"
    embedder = QueryEmbedder.load(settings.home / "models")
    # Real vectors (the model's own, as the enricher stores them): the later turns repeat
    # a few texts, so each distinct text is embedded once.
    said = {t: embedder.embed(t) for t in [FACT, *TEXTS]}

    def embedded(record: Record, text: str) -> Record:
        assert record.enrichment is not None
        return replace(record, enrichment=replace(record.enrichment, vector=said[text]))

    fact = embedded(message(tenant, "long", "fact", FACT, 0), FACT)
    later = [
        embedded(
            message(tenant, "long", f"later{i}", f"{TEXTS[i % len(TEXTS)]} ({i})", i + 1),
            TEXTS[i % len(TEXTS)],
        )
        for i in range(6_000)
    ]
    await apply(stores, [fact, *later])
    client = aioredis.Redis.from_url(settings.require_redis())
    hot = HotIndexes(history, vectors, max_rows=100_000) if memory else None
    rehydrator = Rehydrator(
        redis=client,
        partitions=settings.producer.partitions,
        projectors=["postgres", "pgvector"],
        reads_enriched=reads_enriched,
        history=history,
        vectors=[vectors],
        graph=None,
        sessions=None,
        embedder=embedder,
        counter=TokenCounter.load(),
        hot=hot,
    )
    ask = "What was my first car, the green Saab called?"
    try:
        if hot is not None:
            assert await rehydrator.prepare(tenant, "long")
        context = await rehydrator.rehydrate(tenant, "long", ask, 600, deadline_ms=5000)
    finally:
        await client.aclose()
    found = {i.message.id: i for i in context.items}
    assert "fact" in found, context.tiers
    assert "lexical" in found["fact"].found_by
    lexical = next(t for t in context.tiers if t.tier == "lexical")
    assert lexical.store == ("memory" if memory else "postgres")
