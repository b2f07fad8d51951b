"""The MongoDB adapter against the embedded nx-27017 server and, when reachable, real MongoDB."""

from __future__ import annotations

import os
from collections.abc import AsyncIterator
from dataclasses import replace
from datetime import UTC, datetime, timedelta

import pytest
from hypothesis import given
from hypothesis import strategies as st

from projectors.position import Position
from projectors.stores.mongo import (
    Entry,
    MongoProjectionStore,
    _upto,
    escape,
    session_key,
    time_text,
    unescape,
)
from schemas.digest import content_hash
from stack.settings import Settings
from tests.contract.base import ProjectionStoreContract, emptied
from tests.records import conversation, erase, message

MONGO_URL_VAR = "AMEM_TEST_MONGO_URL"
TEST_DATABASE = "amem_contract"


@pytest.fixture(params=["nx-27017", "mongodb"])
def mongo_url(request: pytest.FixtureRequest, settings: Settings) -> str:
    """Each server the adapter must work on; real MongoDB only where one is reachable."""
    if request.param == "nx-27017":
        assert settings.mongo_url is not None
        return settings.mongo_url
    url = os.environ.get(MONGO_URL_VAR)
    if not url:
        pytest.skip(f"{MONGO_URL_VAR} is not set: MongoDB cannot run here (compose.yaml has it)")
    return url


@pytest.fixture
async def mongo_store(mongo_url: str) -> AsyncIterator[MongoProjectionStore]:
    async with emptied(MongoProjectionStore(url=mongo_url, database=TEST_DATABASE)) as store:
        yield store


class TestMongoProjectionStore(ProjectionStoreContract):
    @pytest.fixture
    def store(self, mongo_store: MongoProjectionStore) -> MongoProjectionStore:
        return mongo_store

    async def test_ids_with_path_characters_round_trip(self, store: MongoProjectionStore) -> None:
        ids = ["a.b", "x:y@z/w-v_u", "123", "0", "..", "m.1"]
        records = [
            message("org.eu:1", "chat/2026.01", ident, f"text {i}", i)
            for i, ident in enumerate(ids)
        ]
        await store.apply(records)
        digest = await store.digest("org.eu:1")
        assert digest == {
            ("org.eu:1", "chat/2026.01"): {i: content_hash(f"text {n}") for n, i in enumerate(ids)}
        }
        summary = await store.session("org.eu:1", "chat/2026.01")
        assert summary is not None
        assert summary.message_count == len(ids)
        await store.apply([erase("org.eu:1", "chat/2026.01", 2)])
        remaining = (await store.digest("org.eu:1"))[("org.eu:1", "chat/2026.01")]
        assert set(remaining) == {"0", "..", "m.1"}

    async def test_times_keep_their_microseconds(self, store: MongoProjectionStore) -> None:
        records = conversation("t1", "s1", 3)
        shifted = [
            replace(
                r,
                event=replace(
                    r.message,
                    message=replace(
                        r.message.message,
                        created_at=r.message.message.created_at + timedelta(microseconds=123_457),
                    ),
                ),
            )
            for r in records
        ]
        await store.apply(shifted)
        summary = await store.session("t1", "s1")
        assert summary is not None
        assert summary.first_at == shifted[0].message.message.created_at
        assert summary.last_at == shifted[-1].message.message.created_at

    async def test_a_summary_after_an_erase_is_that_of_the_later_messages(
        self, store: MongoProjectionStore
    ) -> None:
        early = [message("t1", "s1", f"e{i}", "early", i, role="system") for i in range(3)]
        late = conversation("t1", "s1", 2, start=60)
        # Late messages first: the early ones widen participants and first_at, then the
        # tombstone check after their write removes them and the aggregates shrink back.
        await store.apply(late)
        await store.apply([erase("t1", "s1", 50)])
        await store.apply(early)
        after = await store.session("t1", "s1")
        await store.reset()
        await store.apply(late)
        assert after == await store.session("t1", "s1")
        assert after is not None
        assert after.participants == {"user:Alice", "assistant:Bob"}

    async def test_an_erase_rewrite_never_loses_a_concurrent_write(
        self, store: MongoProjectionStore
    ) -> None:
        await store.apply(conversation("t1", "s1", 3))
        stale = await store._sessions.find_one({"_id": session_key("t1", "s1"), "tenant_id": "t1"})
        assert stale is not None
        # Another worker writes a later message between the eraser's read and its rewrite.
        later = conversation("t1", "s1", 1, start=80)
        await store.apply(later)
        assert not await store._rewrite(stale, _upto(Position(1_050, 0)))
        assert not await store._rewrite({**stale, "messages": {}}, _upto(Position(1_050, 0)))
        assert set((await store.digest("t1"))[("t1", "s1")]) == {"m0", "m1", "m2", "m80"}
        # The retrying path re-reads and succeeds.
        await store._delete_upto({("t1", "s1"): Position(1_050, 0)})
        assert set((await store.digest("t1"))[("t1", "s1")]) == {"m80"}

    async def test_entries_written_as_sub_documents_still_read_and_erase(
        self, store: MongoProjectionStore
    ) -> None:
        """Documents from before entries were one string: verify and erase still work."""
        records = conversation("t1", "s1", 3)
        await store.apply(records)
        doc = await store._sessions.find_one({"_id": session_key("t1", "s1")})
        assert doc is not None
        legacy = {
            escape(r.message.message.id): {
                "pos": r.position.key,
                "h": r.content_hash,
                "at": time_text(r.message.message.created_at),
                "role": r.message.message.role,
                "name": r.message.message.name,
            }
            for r in records
        }
        await store._sessions.replace_one({"_id": doc["_id"]}, {**doc, "messages": legacy})
        expected = {r.message.message.id: r.content_hash for r in records}
        assert await store.digest("t1") == {("t1", "s1"): expected}
        await store.apply([erase("t1", "s1", 0)])
        assert set((await store.digest("t1"))[("t1", "s1")]) == {"m1", "m2"}
        summary = await store.session("t1", "s1")
        assert summary is not None
        assert summary.participants == {"assistant:Bob", "user:Alice"}

    async def test_the_document_lists_its_users_in_any_order_and_after_an_erase(
        self, store: MongoProjectionStore
    ) -> None:
        records = [
            *conversation("t1", "s1", 2, user_id="ada"),
            message("t1", "s1", "x", "no user", 5),
            message("t1", "s1", "y", "later", 60, user_id="bob@example.com"),
        ]
        views = []
        for order in (records, list(reversed(records))):
            await store.reset()
            for record in order:
                await store.apply([record])
            doc = await store._sessions.find_one({"_id": session_key("t1", "s1")})
            assert doc is not None
            views.append(sorted(doc["users"]))  # a set, held in arrival order
            await store.apply([erase("t1", "s1", 50)])
            doc = await store._sessions.find_one({"_id": session_key("t1", "s1")})
            assert doc is not None
            views.append(sorted(doc["users"]))
        assert views == [["ada", "bob@example.com"], ["bob@example.com"]] * 2
        await store.apply(conversation("t1", "s2", 2))
        doc = await store._sessions.find_one({"_id": session_key("t1", "s2")})
        assert doc is not None
        assert doc["users"] == []

    async def test_count_sums_every_tenant(self, store: MongoProjectionStore) -> None:
        await store.apply(conversation("ta", "s1", 3) + conversation("tb", "s1", 2))
        await store.apply(conversation("ta", "s2", 4))
        assert await store.count() == 9


@given(st.text())
def test_escaping_is_reversible_and_leaves_no_path_characters(text: str) -> None:
    name = escape(text)
    assert unescape(name) == text
    assert "." not in name
    assert "$" not in name
    assert "|" not in name


@given(st.text(), st.text(), st.text(), st.text())
def test_session_keys_are_distinct_for_distinct_sessions(a: str, b: str, c: str, d: str) -> None:
    assert (session_key(a, b) == session_key(c, d)) == ((a, b) == (c, d))


@given(
    st.integers(0, 2**48),
    st.integers(0, 2**32),
    st.binary(min_size=32, max_size=32),
    st.datetimes(timezones=st.just(UTC)),
    st.text(),
    st.none() | st.from_regex(r"[A-Za-z0-9._:@/-]{1,128}", fullmatch=True),
)
def test_an_entry_reads_back_as_written(
    ms: int, seq: int, digest: bytes, at: datetime, who: str, user: str | None
) -> None:
    entry = Entry(Position(ms, seq), digest.hex(), at, who, user)
    assert Entry.parse(entry.text()) == entry
    if user is None:  # as entries were before messages named users
        assert entry.text().split(" ")[2].lstrip("-").isdigit()
