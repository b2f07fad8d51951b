"""The FalkorDB graph adapter against the FalkorDB module of the embedded Redis.

:class:`CypherGraphChecks` looks at the graph itself (edges, entity nodes) through the
shared Cypher; the Neo4j suite runs the same checks.
"""

from __future__ import annotations

import random
from collections.abc import AsyncIterator
from itertools import pairwise

import pytest
from hypothesis import given
from hypothesis import strategies as st

from projectors.store import GraphStore, Scope
from projectors.stores.cypher import CypherGraphStore, Statement
from projectors.stores.falkordb import FalkorDBGraphStore
from stack.settings import Settings
from tests.contract.base import EXAMPLES, GraphStoreContract, apply_in_batches, emptied
from tests.records import conversation, erase, message

GRAPH = "amem-test-graph"


async def edges(store: CypherGraphStore, kind: str) -> list[tuple[str, str, str]]:
    rows = await store._run(
        Statement(
            f"MATCH (a:Message)-[:{kind}]->(b:Message) "
            "RETURN a.session_id, a.message_id, b.message_id"
        )
    )
    return sorted((str(s), str(a), str(b)) for s, a, b in rows)


async def entity_nodes(store: CypherGraphStore) -> list[tuple[str, str]]:
    rows = await store._run(Statement("MATCH (e:Entity) RETURN e.tenant_id, e.name"))
    return sorted((str(t), str(n)) for t, n in rows)


class CypherGraphChecks:
    """What the graph holds, beyond what the port shows."""

    @EXAMPLES
    @given(seed=st.integers(0, 2**32 - 1), size=st.integers(1, 5))
    async def test_next_links_exactly_the_consecutive_survivors(
        self, store: CypherGraphStore, seed: int, size: int
    ) -> None:
        records = [
            *conversation("t1", "s1", 5),
            *conversation("t1", "s2", 3),
            erase("t1", "s1", 7),
            *conversation("t1", "s1", 3, start=10),
        ]
        random.Random(seed).shuffle(records)
        await store.reset()
        await apply_in_batches(store, records, size)
        assert await edges(store, "NEXT") == [
            ("s1", "m10", "m11"),
            ("s1", "m11", "m12"),
            ("s2", "m0", "m1"),
            ("s2", "m1", "m2"),
        ]
        assert await edges(store, "REPLY_TO") == [
            ("s1", "m11", "m10"),
            ("s1", "m12", "m11"),
            ("s2", "m1", "m0"),
            ("s2", "m2", "m1"),
        ]

    @EXAMPLES
    @given(sizes=st.lists(st.integers(1, 4), min_size=1, max_size=8))
    async def test_next_follows_appends_redeliveries_and_an_id_moved_later(
        self, store: CypherGraphStore, sizes: list[int]
    ) -> None:
        records = conversation("t1", "s1", 10)
        await store.reset()
        cut = 0
        for size in sizes:  # in log order, as a worker reads: the tail-append path
            await store.apply(records[cut : cut + size])
            cut += size
        await store.apply(records[cut:])
        await store.apply(records[2:5])  # redelivered after a crash
        # The same id again later in the log (a non-conforming writer): it moves to the end.
        await store.apply([message("t1", "s1", "m3", "again", 20)])
        await store.apply([message("t1", "s1", "m21", "after", 21)])
        order = ["m0", "m1", "m2", "m4", "m5", "m6", "m7", "m8", "m9", "m3", "m21"]
        assert await edges(store, "NEXT") == sorted(("s1", a, b) for a, b in pairwise(order))

    async def test_a_reply_before_its_parent_is_linked_when_the_parent_arrives(
        self, store: CypherGraphStore
    ) -> None:
        a = message("t1", "s1", "a", "question", 0)
        b = message("t1", "s1", "b", "answer", 1, parent_id="a")
        c = message("t1", "s1", "c", "aside", 5, parent_id="a")
        await store.apply([b])
        assert await edges(store, "REPLY_TO") == []
        await store.apply([c])
        await store.apply([a])
        assert await edges(store, "REPLY_TO") == [("s1", "b", "a"), ("s1", "c", "a")]
        assert await edges(store, "NEXT") == [("s1", "a", "b"), ("s1", "b", "c")]

    async def test_score_counts_every_path_to_a_hit(self, store: GraphStore) -> None:
        await store.apply(
            [
                message("t1", "s1", "a", "one", 0, entities=("Paris", "Rome")),
                message("t1", "s1", "b", "two", 1, parent_id="a"),
                message("t1", "s1", "c", "three", 2, entities=("Paris",)),
                message("t1", "s1", "d", "four", 3, entities=("Paris", "Rome")),
            ]
        )
        s1 = Scope(session_id="s1")
        hits = await store.neighbours("t1", [("s1", "a"), ("s1", "c")], scope=s1)
        scores = {h.message_id: h.score for h in hits}
        # b: next to a, reply to a, next to c. d: next to c, Paris twice, Rome once.
        assert scores == {"b": 3.0, "d": 4.0}
        assert [h.message_id for h in hits] == ["d", "b"]
        assert await store.neighbours("t1", [("s2", "a")], scope=s1) == []
        assert await store.neighbours("t1", [], scope=s1) == []

    async def test_an_erase_drops_the_entities_only_the_session_mentioned(
        self, store: CypherGraphStore
    ) -> None:
        await store.apply(
            [
                message("t1", "s1", "a", "one", 0, entities=("Paris", "Oslo")),
                message("t1", "s2", "a", "one", 0, entities=("Paris",)),
                message("t2", "s1", "a", "one", 0, entities=("Oslo",)),
            ]
        )
        assert await entity_nodes(store) == [("t1", "Oslo"), ("t1", "Paris"), ("t2", "Oslo")]
        await store.apply([erase("t1", "s1", 1)])
        assert await entity_nodes(store) == [("t1", "Paris"), ("t2", "Oslo")]
        assert await store.entities("t1", "s2") == {"Paris": 1}
        assert await store.entities("t2", "s1") == {"Oslo": 1}

    async def test_the_latest_copy_of_a_repeated_id_wins_in_any_order(
        self, store: CypherGraphStore
    ) -> None:
        first = message("t1", "s1", "a", "draft", 0, name="Ann", entities=("Paris",), parent_id="z")
        again = message("t1", "s1", "a", "final", 5, entities=("Rome",))
        other = message("t1", "s1", "b", "between", 2)
        views = []
        for order in ([first, other, again], [again, other, first], [other, again, first]):
            await store.reset()
            for record in order:
                await store.apply([record])
            await store.apply([message("t1", "s1", "z", "root", 1)])
            views.append(
                (
                    await store.digest("t1"),
                    await store.entities("t1", "s1"),
                    await edges(store, "NEXT"),
                    await edges(store, "REPLY_TO"),
                    await entity_nodes(store),
                )
            )
        assert views[0] == views[1] == views[2]
        digest, entities, next_edges, replies, nodes = views[0]
        assert digest[("t1", "s1")]["a"] == again.content_hash
        assert entities == {"Rome": 1}
        assert next_edges == [("s1", "b", "a"), ("s1", "z", "b")]
        assert replies == []
        assert nodes == [("t1", "Rome")]
        rows = await store._run(
            Statement("MATCH (m:Message {key: 't1|s1|a'}) RETURN properties(m)")
        )
        # Name and parent gone, the rest intact (FalkorDB 4.16 got this wrong for a SET
        # that dropped several properties at once).
        assert dict(rows[0][0]) == {
            "key": "t1|s1|a",
            "tenant_id": "t1",
            "session_id": "s1",
            "message_id": "a",
            "pos": again.position.key,
            "content_hash": again.content_hash,
            "role": "user",
            "created_at": again.message.message.created_at.isoformat(),
        }

    async def test_text_survives_quotes_backslashes_and_newlines(self, store: GraphStore) -> None:
        odd = "Café \"Le \\ Bistro\"\n'😀' CYPHER x=1 `tick`"
        await store.apply([message("t1", "s1", "a", "one", 0, name=odd, entities=(odd, "\\"))])
        assert await store.entities("t1", "s1") == {odd: 1, "\\": 1}


@pytest.fixture
async def falkordb_store(settings: Settings) -> AsyncIterator[FalkorDBGraphStore]:
    # Other suites FLUSHDB this Redis (graph and indexes go): start() puts the indexes back.
    async with emptied(FalkorDBGraphStore(url=settings.require_redis(), graph=GRAPH)) as store:
        yield store


class TestFalkorDBGraphStore(GraphStoreContract, CypherGraphChecks):
    @pytest.fixture
    def store(self, falkordb_store: FalkorDBGraphStore) -> FalkorDBGraphStore:
        return falkordb_store

    async def test_start_is_idempotent_and_indexes_the_keys(
        self, store: FalkorDBGraphStore
    ) -> None:
        await store.start()
        rows = await store._run(Statement("CALL db.indexes() YIELD label, properties"))
        indexed = {(str(label), str(p)) for label, props in rows for p in props}
        assert {
            ("Session", "key"),
            ("Message", "key"),
            ("Message", "parent_key"),
            ("Entity", "key"),
            ("Tombstone", "key"),
        } <= indexed
