"""One contract test class per port; each adapter's test module subclasses it.

A subclass provides the ``store`` fixture: a started projection holding nothing. Each test
compares what the store shows through its port (``observe``), so "the same state" means the
same digest and the same answers to the port's reads.
"""

from __future__ import annotations

import random
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from typing import Any, TypeVar

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from projectors.records import Record
from projectors.store import GraphStore, HistoryStore, Projection, ProjectionStore, VectorStore
from schemas.digest import content_hash
from tests.records import conversation, erase, fake_vector, message

P = TypeVar("P", bound=Projection)


@asynccontextmanager
async def emptied(store: P) -> AsyncIterator[P]:
    """The store started and holding nothing, closed afterwards: every adapter's fixture."""
    await store.start()
    await store.reset()
    try:
        yield store
    finally:
        await store.close()


EXAMPLES = settings(
    max_examples=15,
    deadline=None,
    # Each adapter's subclass runs the same inherited test: that is the point of a contract.
    suppress_health_check=[
        HealthCheck.function_scoped_fixture,
        HealthCheck.too_slow,
        HealthCheck.differing_executors,
    ],
)


async def apply_in_batches(store: Projection, records: Sequence[Record], size: int) -> None:
    for i in range(0, len(records), size):
        await store.apply(records[i : i + size])


class ProjectionContract:
    """What every adapter promises, whatever its port."""

    async def observe(self, store: Any, tenant: str, sessions: Sequence[str]) -> object:
        """The port's view of these sessions; subclasses add their port's reads."""
        return await store.digest(tenant)

    async def test_digest_holds_each_message_once_with_its_content_hash(
        self, store: Projection
    ) -> None:
        records = conversation("t1", "s1")
        await store.apply(records)
        digest = await store.digest("t1")
        expected = {r.message.message.id: content_hash(r.message.message.content) for r in records}
        assert digest == {("t1", "s1"): expected}
        assert await store.count() == len(records)

    async def test_applying_a_batch_twice_changes_nothing(self, store: Projection) -> None:
        records = conversation("t1", "s1") + conversation("t1", "s2")
        await store.apply(records)
        once = await self.observe(store, "t1", ["s1", "s2"])
        await store.apply(records)
        await store.apply(records[2:4])
        assert await self.observe(store, "t1", ["s1", "s2"]) == once

    @EXAMPLES
    @given(seed=st.integers(0, 2**32 - 1), size=st.integers(1, 7), with_erase=st.booleans())
    async def test_any_order_and_batching_gives_the_same_state(
        self, store: Projection, seed: int, size: int, with_erase: bool
    ) -> None:
        records = conversation("t1", "s1", 5) + conversation("t1", "s2", 4)
        if with_erase:
            records += [erase("t1", "s1", 50), *conversation("t1", "s1", 3, start=60)]
        await store.reset()
        await apply_in_batches(store, records, len(records))
        in_order = await self.observe(store, "t1", ["s1", "s2"])

        shuffled = list(records)
        random.Random(seed).shuffle(shuffled)
        await store.reset()
        await apply_in_batches(store, shuffled, size)
        assert await self.observe(store, "t1", ["s1", "s2"]) == in_order

    async def test_erase_removes_the_session_and_nothing_else(self, store: Projection) -> None:
        await store.apply(conversation("t1", "s1") + conversation("t1", "s2"))
        await store.apply([erase("t1", "s1", 100)])
        assert set(await store.digest("t1")) == {("t1", "s2")}

    async def test_a_late_message_from_before_the_erase_stays_erased(
        self, store: Projection
    ) -> None:
        early, late = conversation("t1", "s1", 4), conversation("t1", "s1", 2, start=200)
        await store.apply([erase("t1", "s1", 100), *late])
        await store.apply(early)
        digest = await store.digest("t1")
        assert set(digest[("t1", "s1")]) == {r.message.message.id for r in late}

    async def test_tenants_with_the_same_sessions_and_texts_never_mix(
        self, store: Projection
    ) -> None:
        a, b = conversation("ta", "s1"), conversation("tb", "s1")
        await store.apply(a + b)
        assert set(await store.digest("ta")) == {("ta", "s1")}
        await store.apply([erase("ta", "s1", 100)])
        assert await store.digest("ta") == {}
        assert len((await store.digest("tb"))[("tb", "s1")]) == len(b)

    async def test_reset_empties_the_store(self, store: Projection) -> None:
        await store.apply(conversation("t1", "s1"))
        await store.reset()
        assert await store.count() == 0
        assert await store.digest() == {}


class ProjectionStoreContract(ProjectionContract):
    async def observe(self, store: Any, tenant: str, sessions: Sequence[str]) -> object:
        return (
            await store.digest(tenant),
            [await store.session(tenant, s) for s in sessions],
        )

    async def test_session_summary(self, store: ProjectionStore) -> None:
        records = conversation("t1", "s1", 4)
        await store.apply(records)
        summary = await store.session("t1", "s1")
        assert summary is not None
        assert summary.message_count == 4
        assert summary.participants == {"user:Alice", "assistant:Bob"}
        assert summary.first_at == records[0].message.message.created_at
        assert summary.last_at == records[-1].message.message.created_at
        assert summary.last_position == records[-1].position
        assert await store.session("t1", "nope") is None
        assert await store.session("t2", "s1") is None


class HistoryStoreContract(ProjectionContract):
    async def observe(self, store: Any, tenant: str, sessions: Sequence[str]) -> object:
        return (
            await store.digest(tenant),
            [[m.message for m in await store.recent(tenant, s, limit=100)] for s in sessions],
            [await store.outline(tenant, s, limit=100) for s in sessions],
        )

    async def test_recent_and_outline_are_the_latest_turns_in_log_order(
        self, store: HistoryStore
    ) -> None:
        records = conversation("t1", "s1", 6)
        await store.apply(list(reversed(records)))
        recent = await store.recent("t1", "s1", limit=3)
        assert [m.message.id for m in recent] == ["m3", "m4", "m5"]
        assert [m.position for m in recent] == [r.position for r in records[3:]]
        assert recent[0].message == records[3].message.message
        outline = await store.outline("t1", "s1", limit=4)
        assert [(t.message_id, t.name, t.role) for t in outline] == [
            ("m2", "Alice", "user"),
            ("m3", "Bob", "assistant"),
            ("m4", "Alice", "user"),
            ("m5", "Bob", "assistant"),
        ]
        assert await store.recent("t2", "s1", limit=3) == []

    async def test_messages_by_id_in_log_order_unknown_ids_left_out(
        self, store: HistoryStore
    ) -> None:
        await store.apply(conversation("t1", "s1", 6))
        found = await store.messages("t1", "s1", ["m4", "nope", "m1"])
        assert [m.message.id for m in found] == ["m1", "m4"]
        assert await store.messages("t2", "s1", ["m1"]) == []

    async def test_lexical_ranks_a_rare_word_first_within_the_tenant(
        self, store: HistoryStore
    ) -> None:
        texts = ["we walked to the harbour", "the lighthouse keeper waved", "we walked home"]
        for tenant in ("t1", "t2"):
            await store.apply([message(tenant, "s1", f"m{i}", t, i) for i, t in enumerate(texts)])
        await store.apply([message("t3", "s1", "x", "a lighthouse, a lighthouse", 9)])
        hits = await store.lexical("t1", "s1", "Where is the lighthouse we walked to?", limit=10)
        assert hits[0].message_id == "m1"  # the rarer word outweighs two common ones
        assert {h.message_id for h in hits} == {"m0", "m1", "m2"}
        assert all(h.session_id == "s1" and h.score > 0 for h in hits)
        assert await store.lexical("t1", "s1", "nothing matches zebra", limit=10) == []
        assert await store.lexical("t1", "s1", "  ?! or ", limit=10) == []

    async def test_lexical_matches_the_speaker_name(self, store: HistoryStore) -> None:
        await store.apply(conversation("t1", "s1", 4))
        hits = await store.lexical("t1", "s1", "what did bob say", limit=10)
        assert {h.message_id for h in hits} == {"m1", "m3"}

    async def test_erased_messages_are_never_read(self, store: HistoryStore) -> None:
        await store.apply([*conversation("t1", "s1", 4), erase("t1", "s1", 50)])
        await store.apply(conversation("t1", "s1", 2, start=60))
        assert [m.message.id for m in await store.recent("t1", "s1", limit=10)] == ["m60", "m61"]
        assert await store.messages("t1", "s1", ["m0", "m1"]) == []
        assert await store.lexical("t1", "s1", "Berlin Paris", limit=10) != []
        assert all(
            h.message_id in {"m60", "m61"}
            for h in await store.lexical("t1", "s1", "Alice Bob Paris Berlin", limit=10)
        )


class VectorStoreContract(ProjectionContract):
    async def observe(self, store: Any, tenant: str, sessions: Sequence[str]) -> object:
        probe = fake_vector("Alice talks about Paris in turn 0")
        hits = await store.nearest(tenant, probe, limit=50)
        return (await store.digest(tenant), sorted((h.session_id, h.message_id) for h in hits))

    async def test_an_identical_text_is_the_nearest(self, store: VectorStore) -> None:
        records = conversation("t1", "s1") + conversation("t1", "s2", 3, start=10)
        await store.apply(records)
        target = records[3].message.message
        hits = await store.nearest("t1", fake_vector(target.content), limit=3)
        assert (hits[0].session_id, hits[0].message_id) == ("s1", target.id)
        assert hits[0].score == pytest.approx(1.0, abs=1e-3)
        assert [h.score for h in hits] == sorted((h.score for h in hits), reverse=True)

    async def test_session_and_tenant_filters_are_in_the_query(self, store: VectorStore) -> None:
        await store.apply(conversation("ta", "s1") + conversation("ta", "s2"))
        await store.apply(conversation("tb", "s1"))
        probe = fake_vector("Alice talks about Paris in turn 0")
        only_s2 = await store.nearest("ta", probe, limit=50, session_id="s2")
        assert only_s2
        assert {h.session_id for h in only_s2} == {"s2"}
        tenant_b = await store.nearest("tb", probe, limit=50)
        assert len(tenant_b) == 6
        assert await store.nearest("tc", probe, limit=50) == []

    async def test_the_tenant_filter_is_inside_the_query_not_applied_after_it(
        self, store: VectorStore
    ) -> None:
        # Tenant A holds many exact matches of the probe, tenant B a few distant texts: a
        # store that took the top k and filtered afterwards would return B nothing.
        probe_text = "Alice talks about Paris in turn 0"
        crowd = [message("ta", "s1", f"m{i}", probe_text, i) for i in range(30)]
        few = [message("tb", "s1", f"m{i}", f"unrelated text number {i}", i) for i in range(3)]
        await store.apply(crowd + few)
        hits = await store.nearest("tb", fake_vector(probe_text), limit=3)
        assert sorted(h.message_id for h in hits) == ["m0", "m1", "m2"]
        assert {h.session_id for h in hits} == {"s1"}


class GraphStoreContract(ProjectionContract):
    async def observe(self, store: Any, tenant: str, sessions: Sequence[str]) -> object:
        views = []
        for s in sessions:
            hits = await store.neighbours(tenant, s, ["m1", "m4"])
            views.append((await store.entities(tenant, s), sorted(h.message_id for h in hits)))
        return (await store.digest(tenant), views)

    async def test_neighbours_follow_turns_replies_and_shared_entities(
        self, store: GraphStore
    ) -> None:
        records = [
            message("t1", "s1", "a", "first", 0, entities=("Paris",)),
            message("t1", "s1", "b", "second", 1, parent_id="a"),
            message("t1", "s1", "c", "third", 2),
            message("t1", "s1", "d", "fourth", 3),
            message("t1", "s1", "e", "fifth", 4, entities=("Paris",)),
            message("t1", "s1", "f", "sixth", 5, parent_id="b"),
        ]
        await store.apply(records)
        by_id = {h.message_id: h for h in await store.neighbours("t1", "s1", ["a"])}
        # b: next turn and a reply to a; e: shares Paris. c..d, f: not adjacent to a.
        assert set(by_id) == {"b", "e"}
        assert by_id["b"].score > by_id["e"].score
        assert {h.message_id for h in await store.neighbours("t1", "s1", ["f"])} == {"b", "e"}

    async def test_entities_are_counted_per_session_and_tenant(self, store: GraphStore) -> None:
        await store.apply(conversation("ta", "s1", 4) + conversation("tb", "s1", 2))
        # conversation() cycles Paris, Berlin, Lisbon: turns 0 and 3 both mention Paris.
        assert await store.entities("ta", "s1") == {
            "Paris": 2,
            "Berlin": 1,
            "Lisbon": 1,
            "Alice": 2,
            "Bob": 2,
        }
        assert await store.entities("tb", "s1") == {"Paris": 1, "Berlin": 1, "Alice": 1, "Bob": 1}
        assert await store.neighbours("tc", "s1", ["m1"]) == []
