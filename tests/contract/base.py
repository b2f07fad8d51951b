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

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from projectors.records import Record
from projectors.store import (
    WHOLE_TENANT,
    GraphStore,
    HistoryStore,
    Projection,
    ProjectionStore,
    Scope,
    VectorStore,
)
from projectors.stores.cypher import COMMON_ENTITY
from schemas.digest import content_hash
from tests.records import conversation, erase, fake_vector, message, redact

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
    @given(
        seed=st.integers(0, 2**32 - 1),
        size=st.integers(1, 7),
        with_erase=st.booleans(),
        with_redaction=st.booleans(),
    )
    async def test_any_order_and_batching_gives_the_same_state(
        self, store: Projection, seed: int, size: int, with_erase: bool, with_redaction: bool
    ) -> None:
        records = conversation("t1", "s1", 5) + conversation("t1", "s2", 4)
        if with_erase:
            records += [erase("t1", "s1", 50), *conversation("t1", "s1", 3, start=60)]
        if with_redaction:
            # Two redactions of one message, one of a message the erase covers as well, and
            # one of the last turn of a session.
            records += [
                redact("t1", "s2", "m1", 40),
                redact("t1", "s2", "m1", 42),
                redact("t1", "s1", "m2", 45),
                redact("t1", "s2", "m3", 47),
            ]
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
        await store.apply([redact("ta", "s1", "m1", 90)])
        assert "m1" not in (await store.digest("ta"))[("ta", "s1")]
        assert len((await store.digest("tb"))[("tb", "s1")]) == len(b)
        await store.apply([erase("ta", "s1", 100)])
        assert await store.digest("ta") == {}
        assert len((await store.digest("tb"))[("tb", "s1")]) == len(b)

    async def test_a_redaction_leaves_the_state_as_if_the_message_never_was(
        self, store: Projection
    ) -> None:
        records = conversation("t1", "s1") + conversation("t1", "s2")
        kept = [r for r in records if r.address != ("t1", "s1", "m2")]
        await store.apply(kept)
        without = await self.observe(store, "t1", ["s1", "s2"])
        await store.reset()
        await store.apply(records)
        await store.apply([redact("t1", "s1", "m2", 100)])
        digest = await store.digest("t1")
        assert set(digest[("t1", "s1")]) == {"m0", "m1", "m3", "m4", "m5"}
        assert len(digest[("t1", "s2")]) == 6
        assert await store.count() == len(kept)
        assert await self.observe(store, "t1", ["s1", "s2"]) == without

    async def test_a_late_copy_from_before_the_redaction_stays_redacted(
        self, store: Projection
    ) -> None:
        records = [*conversation("t1", "s1", 3), message("t1", "s1", "m9", "later", 9)]
        await store.apply([redact("t1", "s1", "m1", 100), redact("t1", "s1", "m9", 5)])
        await store.apply(records)
        await store.apply(records[1:2])  # redelivered after the redaction
        digest = await store.digest("t1")
        # m9 sits after the redaction naming it: a later copy, which stays.
        assert set(digest[("t1", "s1")]) == {"m0", "m2", "m9"}

    async def test_reset_empties_the_store(self, store: Projection) -> None:
        await store.apply(conversation("t1", "s1"))
        await store.reset()
        assert await store.count() == 0
        assert await store.digest() == {}

    async def test_drop_removes_everything_and_start_makes_it_anew(self, store: Projection) -> None:
        await store.apply([*conversation("t1", "s1"), erase("t1", "s2", 100)])
        await store.drop()
        await store.start()
        assert await store.count() == 0
        assert await store.digest() == {}
        late = conversation("t1", "s2", 2, start=50)  # the dropped tombstone is gone too
        await store.apply(late)
        assert len((await store.digest("t1"))[("t1", "s2")]) == len(late)


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

    async def test_a_redaction_shrinks_the_summary(self, store: ProjectionStore) -> None:
        records = conversation("t1", "s1", 4)
        await store.apply([*records, redact("t1", "s1", "m1", 50), redact("t1", "s1", "m3", 51)])
        summary = await store.session("t1", "s1")
        assert summary is not None
        assert summary.message_count == 2
        assert summary.participants == {"user:Alice"}  # Bob spoke only in m1 and m3
        assert summary.last_at == records[2].message.message.created_at
        assert summary.last_position == records[2].position

    async def test_sessions_lists_the_tenants_latest_active_first(
        self, store: ProjectionStore
    ) -> None:
        await store.apply(
            [
                *conversation("t1", "old", 3),
                *conversation("t1", "new", 2, start=10),
                *conversation("t2", "other", 2, start=20),
                *conversation("t1", "redacted", 2, start=30),
                redact("t1", "redacted", "m30", 40),
                redact("t1", "redacted", "m31", 41),
                *conversation("t1", "erased", 2, start=50),
                erase("t1", "erased", 60),
            ]
        )
        listed = await store.sessions("t1", limit=10)
        assert [(s.session_id, s.message_count) for s in listed] == [("new", 2), ("old", 3)]
        assert listed[0] == await store.session("t1", "new")
        assert [s.session_id for s in await store.sessions("t1", limit=1)] == ["new"]
        assert await store.sessions("t3", limit=10) == []


class HistoryStoreContract(ProjectionContract):
    async def observe(self, store: Any, tenant: str, sessions: Sequence[str]) -> object:
        scanned = await store.scan(tenant, scope=WHOLE_TENANT)
        return (
            await store.digest(tenant),
            [[m.message for m in await store.recent(tenant, s, limit=100)] for s in sessions],
            sorted((t.turn.key, t.turn.position, sorted(t.terms.items())) for t in scanned),
        )

    async def test_recent_is_the_latest_turns_in_log_order(self, store: HistoryStore) -> None:
        records = conversation("t1", "s1", 6)
        await store.apply(list(reversed(records)))
        recent = await store.recent("t1", "s1", limit=3)
        assert [m.message.id for m in recent] == ["m3", "m4", "m5"]
        assert [m.position for m in recent] == [r.position for r in records[3:]]
        assert recent[0].message == records[3].message.message
        assert await store.recent("t2", "s1", limit=3) == []

    async def test_around_gives_each_turns_window_in_its_session(self, store: HistoryStore) -> None:
        await store.apply(conversation("t1", "s1", 8) + conversation("t1", "s2", 3))
        await store.apply(conversation("t2", "s1", 8))
        windows = await store.around(
            "t1", [("s1", "m1"), ("s1", "m7"), ("s2", "m0"), ("s1", "nope")], radius=2
        )
        assert {k: [t.key for t in w] for k, w in windows.items()} == {
            ("s1", "m1"): [("s1", "m0"), ("s1", "m1"), ("s1", "m2"), ("s1", "m3")],
            ("s1", "m7"): [("s1", "m5"), ("s1", "m6"), ("s1", "m7")],
            ("s2", "m0"): [("s2", "m0"), ("s2", "m1"), ("s2", "m2")],
        }
        first = windows[("s1", "m1")][1]
        assert (first.role, first.name, first.session_id) == ("assistant", "Bob", "s1")
        assert first.created_at == conversation("t1", "s1", 2)[1].message.message.created_at
        assert await store.around("t3", [("s1", "m1")], radius=2) == {}

    async def test_messages_by_key_in_log_order_unknown_keys_left_out(
        self, store: HistoryStore
    ) -> None:
        await store.apply(conversation("t1", "s1", 6) + conversation("t1", "s2", 2, start=10))
        found = await store.messages("t1", [("s1", "m4"), ("s1", "nope"), ("s2", "m10")])
        assert [m.message.id for m in found] == ["m4", "m10"]
        found = await store.messages("t1", [("s1", "m4"), ("s1", "m1")])
        assert [m.message.id for m in found] == ["m1", "m4"]
        assert await store.messages("t2", [("s1", "m1")]) == []

    async def test_lexical_ranks_a_rare_word_first_within_the_tenant(
        self, store: HistoryStore
    ) -> None:
        texts = ["we walked to the harbour", "the lighthouse keeper waved", "we walked home"]
        for tenant in ("t1", "t2"):
            await store.apply([message(tenant, "s1", f"m{i}", t, i) for i, t in enumerate(texts)])
        await store.apply([message("t3", "s1", "x", "a lighthouse, a lighthouse", 9)])
        one = Scope(session_id="s1")
        hits = await store.lexical(
            "t1", "Where is the lighthouse we walked to?", limit=10, scope=one
        )
        assert hits[0].message_id == "m1"  # the rarer word outweighs two common ones
        assert {h.message_id for h in hits} == {"m0", "m1", "m2"}
        assert all(h.session_id == "s1" and h.score > 0 for h in hits)
        assert await store.lexical("t1", "nothing matches zebra", limit=10, scope=one) == []
        assert await store.lexical("t1", "  ?! or ", limit=10, scope=one) == []

    async def test_lexical_matches_the_speaker_name(self, store: HistoryStore) -> None:
        await store.apply(conversation("t1", "s1", 4))
        hits = await store.lexical("t1", "what did bob say", limit=10, scope=Scope(session_id="s1"))
        assert {h.message_id for h in hits} == {"m1", "m3"}

    async def test_user_scope_reaches_the_users_sessions_and_nobody_elses(
        self, store: HistoryStore
    ) -> None:
        await store.apply(conversation("t1", "a1", 3, user_id="ada"))
        await store.apply(conversation("t1", "a2", 3, start=10, user_id="ada"))
        await store.apply(conversation("t1", "b1", 3, start=20, user_id="bob"))
        await store.apply(conversation("t1", "now", 2, start=30))  # no user yet
        await store.apply(conversation("t2", "a1", 3, user_id="ada"))  # another tenant
        query = "Alice Bob Paris Berlin Lisbon"
        hits = await store.lexical(
            "t1", query, limit=50, scope=Scope(session_id="now", user_id="ada")
        )
        assert {h.session_id for h in hits} == {"a1", "a2", "now"}
        hits = await store.lexical("t1", query, limit=50, scope=Scope(user_id="ada"))
        assert {h.session_id for h in hits} == {"a1", "a2"}
        scanned = await store.scan("t1", scope=Scope(session_id="now", user_id="ada"))
        assert {t.turn.session_id for t in scanned} == {"a1", "a2", "now"}
        assert {t.stored.message.user_id for t in scanned} == {"ada", None}
        assert {t.turn.session_id for t in await store.scan("t2", scope=Scope(user_id="bob"))} == (
            set()
        )

    async def test_scan_gives_the_terms_full_text_matches_on(self, store: HistoryStore) -> None:
        records = conversation("t1", "s1", 4)
        await store.apply(records)
        scanned = {
            t.turn.message_id: t for t in await store.scan("t1", scope=Scope(session_id="s1"))
        }
        assert set(scanned) == {"m0", "m1", "m2", "m3"}
        assert scanned["m1"].stored.message == records[1].message.message
        assert scanned["m1"].stored.position == records[1].position
        terms = await store.analyse("What did Bob say about Berlin?")
        assert terms
        hits = await store.lexical("t1", "What did Bob say about Berlin?", limit=10, scope=Scope())
        matching = {k for k, t in scanned.items() if set(t.terms) & set(terms)}
        assert {h.message_id for h in hits} == matching
        later = await store.scan("t1", scope=Scope(session_id="s1"), after=records[1].position)
        assert {t.turn.message_id for t in later} == {"m2", "m3"}
        assert await store.analyse(" ?! or ") == []

    async def test_erased_messages_are_never_read(self, store: HistoryStore) -> None:
        await store.apply([*conversation("t1", "s1", 4), erase("t1", "s1", 50)])
        await store.apply(conversation("t1", "s1", 2, start=60))
        one = Scope(session_id="s1")
        assert [m.message.id for m in await store.recent("t1", "s1", limit=10)] == ["m60", "m61"]
        assert await store.messages("t1", [("s1", "m0"), ("s1", "m1")]) == []
        assert await store.lexical("t1", "Berlin Paris", limit=10, scope=one) != []
        assert all(
            h.message_id in {"m60", "m61"}
            for h in await store.lexical("t1", "Alice Bob Paris Berlin", limit=10, scope=one)
        )
        assert {t.turn.message_id for t in await store.scan("t1", scope=one)} == {"m60", "m61"}
        assert await store.erased_since("t1", None) == {"s1": erase("t1", "s1", 50).position}
        assert await store.erased_since("t1", erase("t1", "s1", 50).position) == {}
        assert await store.erased_since("t2", None) == {}

    async def test_redacted_messages_are_never_read(self, store: HistoryStore) -> None:
        gone = redact("t1", "s1", "m2", 50)
        await store.apply([*conversation("t1", "s1", 4), gone])
        one = Scope(session_id="s1")
        recent = await store.recent("t1", "s1", limit=10)
        assert [m.message.id for m in recent] == ["m0", "m1", "m3"]
        assert await store.messages("t1", [("s1", "m2")]) == []
        assert "m2" not in {
            h.message_id for h in await store.lexical("t1", "Lisbon", limit=10, scope=one)
        }
        assert {t.turn.message_id for t in await store.scan("t1", scope=one)} == {"m0", "m1", "m3"}
        window = (await store.around("t1", [("s1", "m1")], radius=1))[("s1", "m1")]
        assert [t.message_id for t in window] == ["m0", "m1", "m3"]
        assert await store.redacted_since("t1", None) == {("s1", "m2"): gone.position}
        assert await store.redacted_since("t1", gone.position) == {}
        assert await store.redacted_since("t2", None) == {}
        assert await store.erased_since("t1", None) == {}


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
        only_s2 = await store.nearest("ta", probe, limit=50, scope=Scope(session_id="s2"))
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

    async def test_user_scope_reaches_the_users_sessions_and_nobody_elses(
        self, store: VectorStore
    ) -> None:
        await store.apply(conversation("t1", "a1", 3, user_id="ada"))
        await store.apply(conversation("t1", "a2", 3, start=10, user_id="ada"))
        await store.apply(conversation("t1", "b1", 3, start=20, user_id="bob"))
        await store.apply(conversation("t1", "now", 2, start=30))  # no user yet
        await store.apply(conversation("t2", "a1", 3, start=40, user_id="ada"))  # another tenant
        probe = fake_vector("Alice talks about Paris in turn 0")

        async def found(tenant: str, scope: Scope) -> set[tuple[str, str]]:
            return {h.key for h in await store.nearest(tenant, probe, limit=50, scope=scope)}

        ada = {("a1", "m0"), ("a1", "m1"), ("a1", "m2"), ("a2", "m10"), ("a2", "m11")}
        ada |= {("a2", "m12")}
        now = {("now", "m30"), ("now", "m31")}
        bob = {("b1", "m20"), ("b1", "m21"), ("b1", "m22")}
        assert await found("t1", Scope(user_id="ada")) == ada
        assert await found("t1", Scope(session_id="now", user_id="ada")) == ada | now
        assert await found("t1", Scope(session_id="b1", user_id="ada")) == ada | bob
        assert await found("t1", Scope(user_id="bob")) == bob
        assert await found("t1", Scope(session_id="now")) == now
        assert await found("t1", WHOLE_TENANT) == ada | now | bob
        assert await found("t1", Scope(user_id="eve")) == set()
        assert await found("t2", Scope(session_id="now", user_id="ada")) == {
            ("a1", "m40"),
            ("a1", "m41"),
            ("a1", "m42"),
        }
        assert await found("t3", Scope(user_id="ada")) == set()

    async def test_the_scope_filter_is_inside_the_query_not_applied_after_it(
        self, store: VectorStore
    ) -> None:
        # Exact matches of the probe crowd the tenant outside the scope (another user's
        # session, a session without a user, the same user and session in another tenant);
        # the scope holds a few distant texts: a store that took the top k and filtered
        # afterwards would return the scope little or nothing.
        probe_text = "Alice talks about Paris in turn 0"
        crowd = [
            *(message("t1", "b1", f"b{i}", probe_text, i, user_id="bob") for i in range(30)),
            *(message("t1", "x1", f"x{i}", probe_text, 40 + i) for i in range(30)),
            *(message("t2", "now", f"y{i}", probe_text, 80 + i, user_id="ada") for i in range(30)),
        ]
        few = [
            message("t1", "a1", "a0", "unrelated text number 0", 200, user_id="ada"),
            message("t1", "a2", "a1", "unrelated text number 1", 201, user_id="ada"),
            message("t1", "now", "n0", "unrelated text number 2", 202),
        ]
        await store.apply(crowd + few)
        probe = fake_vector(probe_text)
        union = Scope(session_id="now", user_id="ada")
        hits = await store.nearest("t1", probe, limit=3, scope=union)
        assert sorted(h.key for h in hits) == [("a1", "a0"), ("a2", "a1"), ("now", "n0")]
        hits = await store.nearest("t1", probe, limit=2, scope=Scope(user_id="ada"))
        assert sorted(h.key for h in hits) == [("a1", "a0"), ("a2", "a1")]
        hits = await store.nearest("t1", probe, limit=1, scope=Scope(session_id="now"))
        assert [h.key for h in hits] == [("now", "n0")]


class GraphStoreContract(ProjectionContract):
    async def observe(self, store: Any, tenant: str, sessions: Sequence[str]) -> object:
        views = []
        for s in sessions:
            seeds = [(s, "m1"), (s, "m4")]
            hits = await store.neighbours(tenant, seeds, scope=Scope(session_id=s))
            views.append((await store.entities(tenant, s), sorted(h.key for h in hits)))
        seeds = [(s, m) for s in sessions for m in ("m1", "m4")]
        everywhere = await store.neighbours(tenant, seeds, scope=WHOLE_TENANT)
        return (
            await store.digest(tenant),
            views,
            sorted((h.key, h.score) for h in everywhere),
        )

    async def test_a_redaction_takes_the_entities_only_its_message_mentioned(
        self, store: GraphStore
    ) -> None:
        await store.apply(
            [
                message("t1", "s1", "a", "first", 0, entities=("Paris",)),
                message(
                    "t1", "s1", "b", "second", 1, parent_id="a", entities=("Zanzibar", "Paris")
                ),
                message("t1", "s1", "c", "third", 2, parent_id="b"),
            ]
        )
        await store.apply([redact("t1", "s1", "b", 10)])
        assert await store.entities("t1", "s1") == {"Paris": 1}
        # The turns on either side of the redacted one are next to each other now.
        hits = await store.neighbours("t1", [("s1", "a")], scope=Scope(session_id="s1"))
        assert [h.message_id for h in hits] == ["c"]

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
        s1 = Scope(session_id="s1")
        by_id = {h.message_id: h for h in await store.neighbours("t1", [("s1", "a")], scope=s1)}
        # b: next turn and a reply to a; e: shares Paris. c..d, f: not adjacent to a.
        assert set(by_id) == {"b", "e"}
        assert by_id["b"].score > by_id["e"].score
        assert all(h.session_id == "s1" for h in by_id.values())
        hits = await store.neighbours("t1", [("s1", "f")], scope=s1)
        assert {h.message_id for h in hits} == {"b", "e"}
        assert await store.neighbours("t1", [("s1", "a")], scope=Scope(session_id="s2")) == []
        assert await store.neighbours("t1", [("s2", "a")], scope=s1) == []
        assert await store.neighbours("t1", [], scope=s1) == []
        only = await store.neighbours("t1", [("s1", "a")], scope=s1, limit=1)
        assert {h.message_id for h in only} == {"b", "e"}  # the best of each kind

    async def test_an_entity_too_common_to_relate_two_messages_is_not_followed(
        self, store: GraphStore
    ) -> None:
        n = COMMON_ENTITY + 1
        crowd = [message("t1", "s1", f"m{i}", f"turn {i}", i, entities=("Ada",)) for i in range(n)]
        await store.apply(crowd)
        hits = await store.neighbours("t1", [("s1", "m30")], scope=Scope(session_id="s1"))
        assert {h.message_id for h in hits} == {"m29", "m31"}  # the turns next to it only
        await store.apply([erase("t1", "s1", n), *crowd[:3]])  # re-sent after the erase: ignored
        await store.apply(
            [message("t1", "s1", f"x{i}", "x", n + 1 + i, entities=("Ada",)) for i in range(4)]
        )
        hits = await store.neighbours("t1", [("s1", "x0")], scope=Scope(session_id="s1"))
        assert {h.message_id for h in hits} == {"x1", "x2", "x3"}  # Ada is rare again

    async def test_an_entity_every_turn_mentions_returns_the_limit_not_every_turn(
        self, store: GraphStore
    ) -> None:
        crowd = [message("t1", "s1", f"m{i}", f"turn {i}", i, entities=("Ada",)) for i in range(60)]
        await store.apply(crowd)
        hits = await store.neighbours("t1", [("s1", "m30")], scope=Scope(session_id="s1"), limit=5)
        assert {"m29", "m31"} <= {h.message_id for h in hits}  # the turns next to it
        assert len(hits) <= 2 + 5  # and five of those sharing Ada, not 59

    async def test_user_scope_reaches_the_users_sessions_and_nobody_elses(
        self, store: GraphStore
    ) -> None:
        paris = ("Paris",)
        await store.apply(
            [
                # Ada's earlier sessions: a1 and a2 (a2 reuses the id "a").
                message("t1", "a1", "a", "first", 0, entities=paris, user_id="ada"),
                message("t1", "a1", "b", "second", 1, parent_id="a", user_id="ada"),
                message("t1", "a2", "a", "third", 10, entities=paris, user_id="ada"),
                message("t1", "a2", "c", "fourth", 11, user_id="ada"),
                # Bob's session, and the current one, which names no user yet.
                message("t1", "b1", "e", "fifth", 20, entities=paris, user_id="bob"),
                message("t1", "now", "f", "sixth", 30, entities=paris),
                message("t1", "now", "g", "seventh", 31),
                # Another tenant: the same user, sessions and entity.
                message("t2", "a1", "z1", "eighth", 40, entities=paris, user_id="ada"),
                message("t2", "now", "z2", "ninth", 41, entities=paris, user_id="ada"),
            ]
        )

        async def found(seeds: list[tuple[str, str]], scope: Scope) -> set[tuple[str, str]]:
            return {h.key for h in await store.neighbours("t1", seeds, scope=scope)}

        seed = [("now", "f")]
        assert await found(seed, Scope(user_id="ada")) == {("a1", "a"), ("a2", "a")}
        union = Scope(session_id="now", user_id="ada")
        assert await found(seed, union) == {("a1", "a"), ("a2", "a"), ("now", "g")}
        assert await found(seed, Scope(session_id="now")) == {("now", "g")}
        assert await found(seed, Scope(user_id="bob")) == {("b1", "e")}
        assert await found(seed, WHOLE_TENANT) == {
            ("a1", "a"),
            ("a2", "a"),
            ("b1", "e"),
            ("now", "g"),
        }
        # Seeds from several sessions; a seed is left out by its key, not its id alone; a
        # reply or next turn outside the scope is left out too.
        hits = await store.neighbours("t1", [("a1", "a"), ("now", "f")], scope=union)
        scores = {h.key: h.score for h in hits}
        # b: next to and reply to a1/a; a2/a: Paris with both seeds; g: next to f.
        assert scores == {("a1", "b"): 2.0, ("a2", "a"): 2.0, ("now", "g"): 1.0}
        assert await found([("a1", "a")], Scope(session_id="now")) == {("now", "f")}
        assert await store.neighbours("t2", seed, scope=union) == []  # no such seed there
        hits = await store.neighbours("t2", [("now", "z2")], scope=Scope(user_id="ada"))
        assert [h.key for h in hits] == [("a1", "z1")]
        assert await store.neighbours("t3", [("a1", "a")], scope=Scope(user_id="ada")) == []

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
        assert await store.neighbours("tc", [("s1", "m1")], scope=Scope(session_id="s1")) == []


class VectorSourceContract:
    """A vector store's rows in bulk: what the rehydrator's in-memory copy is loaded from."""

    async def test_vectors_of_a_scope_past_a_position(self, store: Any) -> None:
        await store.apply(conversation("t1", "a1", 3, user_id="ada"))
        await store.apply(conversation("t1", "now", 2, start=10))
        await store.apply(conversation("t1", "b1", 2, start=20, user_id="bob"))
        await store.apply(conversation("t2", "a1", 3, user_id="ada"))
        got = await store.vectors("t1", scope=Scope(session_id="now", user_id="ada"))
        assert sorted(got.keys) == [
            ("a1", "m0"),
            ("a1", "m1"),
            ("a1", "m2"),
            ("now", "m10"),
            ("now", "m11"),
        ]
        assert got.vectors.dtype == np.float32
        assert got.vectors.shape == (5, 384)
        row = got.keys.index(("a1", "m1"))
        expected = np.asarray(fake_vector("Bob talks about Berlin in turn 1"), np.float32)
        assert np.allclose(got.vectors[row], expected, atol=1e-6)
        assert got.positions[row] == conversation("t1", "a1", 3)[1].position
        later = await store.vectors("t1", scope=Scope(user_id="ada"), after=got.positions[row])
        assert later.keys == [("a1", "m2")]
        nothing = await store.vectors("t3", scope=WHOLE_TENANT)
        assert nothing.keys == []
        assert len(nothing.vectors) == 0

    async def test_erases_are_reported_after_a_position(self, store: Any) -> None:
        await store.apply([*conversation("t1", "s1", 2), erase("t1", "s1", 50)])
        at = erase("t1", "s1", 50).position
        assert await store.erased_since("t1", None) == {"s1": at}
        assert await store.erased_since("t1", at) == {}
        assert (await store.vectors("t1", scope=Scope(session_id="s1"))).keys == []

    async def test_redactions_are_reported_after_a_position(self, store: Any) -> None:
        gone = redact("t1", "s1", "m0", 50)
        await store.apply([*conversation("t1", "s1", 2), gone])
        assert await store.redacted_since("t1", None) == {("s1", "m0"): gone.position}
        assert await store.redacted_since("t1", gone.position) == {}
        assert (await store.vectors("t1", scope=Scope(session_id="s1"))).keys == [("s1", "m1")]
