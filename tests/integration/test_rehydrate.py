"""``rehydrate`` against the real embedded stack, with tiers made to hang one at a time.

A hung server is a real one stopped with SIGSTOP (it accepts nothing more and answers
nothing: what a dead or overloaded store looks like to a client), or a real table lock that
makes one tier's reads wait. Every case must answer within the deadline plus 10 ms, name
the degraded tier and still return the recent window: in both scopes (``session``,
``user``), and both with the scopes' in-memory copies (``memory``) and without (``stores``,
every read from the stores), since a warm copy changes which tiers a fault reaches.
"""

from __future__ import annotations

import asyncio
import os
import signal
import time
from collections.abc import AsyncIterator, Iterator, Sequence
from contextlib import asynccontextmanager, contextmanager
from dataclasses import replace
from pathlib import Path

import psutil
import pytest

from logserver import LogServerUrl, connect
from producer import Producer
from projectors.position import Position
from projectors.records import record_from_enriched
from projectors.stores.falkordb import FalkorDBGraphStore
from rehydrator.context import Context
from rehydrator.errors import HistoryUnavailableError
from rehydrator.query_embedding import QueryEmbedder
from rehydrator.rehydrate import SCOPES, Rehydrator, ScopeName
from rehydrator.tokens import TokenCounter
from schemas.constants import ARCHIVE, enriched_key
from schemas.events import Message, SessionErased
from schemas.partitioning import partition_for
from stack.embedded.redis_server import EmbeddedRedis
from stack.embedded.state import StackState
from stack.emptying import reset_everything
from stack.projections import reads_enriched, select
from stack.rehydration import open_rehydrator
from stack.settings import Settings
from tests.conftest import cluster_pids
from tests.fault.harness import Workers, caught_up, env_for

TENANT = "acme"
SESSION = "trip"
USER = "ada"
DEADLINE_MS = 150
SLACK_MS = 10
FACT = "I adopted a greyhound called Pixel last spring, she sleeps all day."
QUESTION = "What is the name of Ben's dog?"

pytestmark = pytest.mark.timeout(300)


def conversation(session: str, n: int = 40, *, user: str | None = USER) -> list[Message]:
    chatter = [
        "How was the drive to the coast?",
        "Long, but the view from the cliffs made up for it.",
        "Did you try the seafood place near the harbour?",
        "We did, the grilled sardines were great.",
        "I should plan a weekend there with my sister.",
    ]
    out = []
    for i in range(n):
        speaker, role = ("Ada", "user") if i % 2 == 0 else ("Ben", "assistant")
        text = FACT if i == 11 else f"{chatter[i % len(chatter)]} (turn {i})"
        out.append(
            Message(
                tenant_id=TENANT,
                session_id=session,
                id=f"t{i}",
                role=role,
                name=speaker,
                content=text,
                user_id=user,
            )
        )
    return out


@pytest.fixture(scope="module", params=["embedded-redis", "cluster"])
async def projected(
    stack_env: dict[str, str],
    tmp_path_factory: pytest.TempPathFactory,
    request: pytest.FixtureRequest,
) -> Settings:
    """Two sessions of one user appended and projected by a real worker, which is then
    stopped; beside them, the same texts in another user's session and another tenant's.
    The log on one server, or on a cluster of 3 masters."""
    env = env_for(stack_env)
    if request.param == "cluster":
        env["AMEM_REDIS_URL"] = request.getfixturevalue("cluster_url")
    settings = Settings.from_env(env)
    await reset_everything(settings)
    others = [
        *conversation("bob-trip", user="bob"),
        *(replace(m, tenant_id="other") for m in conversation("elsewhere")),
        # Erased by the erase test and redacted from by the redaction test, one per
        # rehydrator and scope.
        *(
            m
            for where in ("stores", "memory")
            for scope in SCOPES
            for kind in ("gone", "redacted")
            for m in conversation(f"{kind}-{where}-{scope}", 6, user="eve")
        ),
    ]
    async with Producer.from_url(settings.require_redis(), settings.producer) as producer:
        await producer.append_many([*conversation(SESSION), *conversation("later", 6), *others])
    workers = Workers(env, tmp_path_factory.mktemp("rehydrate-workers"), count=1)
    workers.start_all()
    try:
        async with asyncio.timeout(240):
            await workers.running(0)
            await caught_up(workers.settings)
    finally:
        assert workers.stop_all() == [0], workers.tail()
    return settings


@pytest.fixture(scope="module", params=["stores", "memory"])
async def rehydrator(
    projected: Settings, request: pytest.FixtureRequest
) -> AsyncIterator[Rehydrator]:
    memory = request.param == "memory"
    rows = projected.rehydrate.hot_rows if memory else 0
    settings = replace(projected, rehydrate=replace(projected.rehydrate, hot_rows=rows))
    async with open_rehydrator(settings) as opened:
        if memory:  # warm: each scope's copy loaded before the faults
            for scope in SCOPES:
                assert await opened.prepare(TENANT, SESSION, scope=scope, user_id=USER)
        yield opened


def uses_memory(rehydrator: Rehydrator) -> bool:
    return rehydrator.settings.hot_rows > 0 and rehydrator._hot is not None


@pytest.fixture(params=SCOPES)
def scope(request: pytest.FixtureRequest) -> ScopeName:
    name: ScopeName = request.param
    return name


async def timed(
    rehydrator: Rehydrator, scope: ScopeName = "session", query: str | None = QUESTION
) -> tuple[Context, float]:
    started = time.perf_counter()
    context = await rehydrator.rehydrate(
        TENANT,
        SESSION,
        query,
        budget_tokens=600,
        deadline_ms=DEADLINE_MS,
        scope=scope,
        user_id=USER if scope == "user" else None,
    )
    return context, (time.perf_counter() - started) * 1000


def ids(context: Context) -> list[str]:
    return [item.message.id for item in context.items]


def assert_degraded_in_time(context: Context, wall_ms: float, tiers: set[str]) -> None:
    assert wall_ms <= DEADLINE_MS + SLACK_MS, (wall_ms, context.tiers)
    assert set(context.degraded) == tiers, context.tiers
    recent = [i for i in context.items if "recent" in i.found_by]
    assert [i.message.id for i in recent] == ["t36", "t37", "t38", "t39"]


@contextmanager
def stopped(pids: Sequence[int]) -> Iterator[None]:
    """The processes frozen (SIGSTOP) for the block: connections open, nothing answered."""
    for pid in pids:
        os.kill(pid, signal.SIGSTOP)
    try:
        yield
    finally:
        for pid in pids:
            os.kill(pid, signal.SIGCONT)


def service_pids(settings: Settings, name: str) -> list[int]:
    """The processes of an embedded service; for the log server on a cluster, its nodes."""
    if name == "redis" and LogServerUrl.parse(settings.require_redis()).cluster:
        return cluster_pids(settings.require_redis())
    pid = StackState.load(settings.home).services[name].pid
    assert pid is not None
    return [pid, *(p.pid for p in psutil.Process(pid).children(recursive=True))]


async def test_every_tier_answers_and_the_fact_is_found(
    rehydrator: Rehydrator, projected: Settings, scope: ScopeName
) -> None:
    context, _ = await timed(rehydrator, scope)
    assert context.degraded == ()
    assert context.from_log_tail == 0  # everything is projected: no tail
    marks = context.watermarks
    assert set(marks) == set(select(projected)) - {ARCHIVE}  # the archive is no tier
    assert all(mark is not None for mark in marks.values()), marks
    by_tier = {t.tier: t for t in context.tiers}
    for tier in ("log", "recent", "window", "dense", "lexical", "graph", "session"):
        assert by_tier[tier].status == "ok", by_tier[tier]
    if uses_memory(rehydrator):
        assert {by_tier[t].store for t in ("dense", "lexical", "window")} == {"memory"}
    fact = next(i for i in context.items if i.key == (SESSION, "t11"))
    assert {"dense", "lexical"} <= set(fact.found_by)
    assert context.tokens <= 600
    assert context.header is not None
    assert "Ada" in context.header
    assert context.to_messages()[0]["role"] == "system"
    assert "Ben: " + FACT in context.to_text()
    assert (context.scope, context.user_id) == (scope, USER if scope == "user" else None)
    sessions = {i.message.session_id for i in context.items}
    assert sessions <= ({SESSION, "later"} if scope == "user" else {SESSION})
    assert all(i.message.tenant_id == TENANT for i in context.items)
    positions = [i.position for i in context.items if i.message.session_id == SESSION]
    assert positions == sorted(positions)


async def test_a_user_scope_reaches_the_users_other_sessions_only(
    rehydrator: Rehydrator,
) -> None:
    asked = "Remind me about the weekend with my sister and the coast"
    session = await rehydrator.rehydrate(TENANT, "new", asked, 2000, scope="session")
    assert session.items == ()
    mine = await rehydrator.rehydrate(TENANT, "new", asked, 2000, scope="user", user_id=USER)
    found = {i.message.session_id for i in mine.items}
    assert found == {SESSION, "later"}  # never bob's session, never the other tenant's
    assert all(i.message.user_id == USER for i in mine.items)
    assert mine.as_json()["items"][0]["session_id"] in found
    # Sessions by time, each in log order.
    keys = [(i.message.created_at, i.position) for i in mine.items]
    first = [k for k, i in zip(keys, mine.items, strict=True) if i.message.session_id == SESSION]
    assert first == sorted(first)
    bob = await rehydrator.rehydrate(TENANT, "new", asked, 2000, scope="user", user_id="bob")
    assert {i.message.session_id for i in bob.items} == {"bob-trip"}
    nobody = await rehydrator.rehydrate("other", "new", asked, 2000, scope="user", user_id="bob")
    assert nobody.items == ()


async def test_a_user_scope_without_a_user_is_refused_or_found(rehydrator: Rehydrator) -> None:
    with pytest.raises(ValueError, match="user_id"):
        await rehydrator.rehydrate(TENANT, "new", QUESTION, scope="user")
    found = await rehydrator.rehydrate(TENANT, SESSION, QUESTION, scope="user")
    assert found.user_id == USER


async def test_postgres_hung_recent_window_comes_from_the_log(
    rehydrator: Rehydrator, projected: Settings, scope: ScopeName
) -> None:
    await timed(rehydrator, scope)  # warm: every pool connection open before the freeze
    with stopped(service_pids(projected, "postgres")):
        context, wall_ms = await timed(rehydrator, scope)
    if uses_memory(rehydrator):
        # The copy serves all but the query's terms, which Postgres analyses.
        assert_degraded_in_time(context, wall_ms, {"lexical"})
        assert "t11" in ids(context)  # dense finds it
    else:
        assert_degraded_in_time(context, wall_ms, {"lexical", "dense"})
        assert next(t for t in context.tiers if t.tier == "recent").store == "log"


async def test_mongo_hung_loses_at_most_the_session_header(
    rehydrator: Rehydrator, projected: Settings, scope: ScopeName
) -> None:
    with stopped(service_pids(projected, "mongo")):
        context, wall_ms = await timed(rehydrator, scope)
    if uses_memory(rehydrator):  # the header comes from the copy: Mongo is not read
        assert_degraded_in_time(context, wall_ms, set())
        assert context.header is not None
    else:
        assert_degraded_in_time(context, wall_ms, {"session"})
        assert context.header is None
    assert "t11" in ids(context)


async def test_log_server_hung_projections_still_answer(
    rehydrator: Rehydrator, projected: Settings, scope: ScopeName
) -> None:
    # The embedded graph lives in the log's redis-server: both go. Without watermarks no
    # copy can be shown current: the stores answer.
    with stopped(service_pids(projected, "redis")):
        context, wall_ms = await timed(rehydrator, scope)
    assert_degraded_in_time(context, wall_ms, {"log", "graph"})
    assert "t11" in ids(context)
    assert next(t for t in context.tiers if t.tier == "dense").store != "memory"


async def test_history_with_its_two_sources_hung_says_so_in_time(
    rehydrator: Rehydrator, projected: Settings
) -> None:
    frozen = [*service_pids(projected, "postgres"), *service_pids(projected, "redis")]
    started = time.perf_counter()
    with stopped(frozen), pytest.raises(HistoryUnavailableError, match="neither"):
        await rehydrator.history(TENANT, SESSION, deadline_ms=DEADLINE_MS)
    assert (time.perf_counter() - started) * 1000 <= DEADLINE_MS + SLACK_MS
    assert len(await rehydrator.history(TENANT, SESSION, limit=5)) == 5


async def test_vector_table_locked_loses_only_the_dense_tier(
    rehydrator: Rehydrator, projected: Settings, scope: ScopeName
) -> None:
    import asyncpg

    conn = await asyncpg.connect(projected.require_postgres())
    try:
        async with conn.transaction():
            await conn.execute("LOCK TABLE amem_vectors IN ACCESS EXCLUSIVE MODE")
            context, wall_ms = await timed(rehydrator, scope)
    finally:
        await conn.close()
    # A current copy needs no read of the table: nothing is lost.
    assert_degraded_in_time(context, wall_ms, set() if uses_memory(rehydrator) else {"dense"})
    assert "t11" in ids(context)  # full text still finds it


@asynccontextmanager
async def separate_graph(settings: Settings, home: Path) -> AsyncIterator[tuple[int, str]]:
    """A second redis-server + FalkorDB holding the graph projection of the test sessions."""
    server = EmbeddedRedis(home)
    record = server.start(None)
    assert record.pid is not None
    assert record.url is not None
    store = FalkorDBGraphStore(url=record.url)
    await store.start()
    client = connect(settings.require_redis())
    try:
        partition = partition_for(TENANT, SESSION, settings.producer.partitions)
        entries: list[tuple[bytes, dict[bytes, bytes]]] = await client.xrange(  # type: ignore[assignment]
            enriched_key(partition)
        )
        await store.apply([record_from_enriched(partition, fields) for _, fields in entries])
        yield record.pid, record.url
    finally:
        await client.aclose()
        await store.close()
        server.stop(record)


async def test_graph_server_hung_loses_only_the_graph_tier(
    rehydrator: Rehydrator, projected: Settings, tmp_path: Path
) -> None:
    async with separate_graph(projected, tmp_path) as (pid, url):
        graph = FalkorDBGraphStore(url=url)
        await graph.start()
        try:
            on_its_own = Rehydrator(
                redis=rehydrator._redis,
                partitions=projected.producer.partitions,
                projectors=select(projected),
                reads_enriched=reads_enriched,
                history=rehydrator._history,
                vectors=rehydrator._vectors,
                graph=graph,
                sessions=rehydrator._sessions,
                embedder=rehydrator._embedder,
                counter=TokenCounter.load(),
            )
            healthy, _ = await timed(on_its_own)
            graph_tier = next(t for t in healthy.tiers if t.tier == "graph")
            assert graph_tier.status == "ok"
            assert graph_tier.candidates > 0
            with stopped([pid]):
                context, wall_ms = await timed(on_its_own)
        finally:
            await graph.close()
    assert_degraded_in_time(context, wall_ms, {"graph"})


def mode(rehydrator: Rehydrator) -> str:
    return "memory" if uses_memory(rehydrator) else "stores"


async def test_messages_appended_after_the_watermarks_are_in_the_context(
    rehydrator: Rehydrator, projected: Settings, scope: ScopeName
) -> None:
    """Every projector is stopped (the fixture stopped the worker): only the log has them."""
    session = f"ryw-{mode(rehydrator)}-{scope}"
    elsewhere = f"{session}-before"
    user = f"rya-{mode(rehydrator)}-{scope}"
    new = [
        Message(tenant_id=TENANT, session_id=session, id="n1", role="assistant", content="Noted."),
        Message(
            tenant_id=TENANT, session_id=session, id="n2", role="user", content="Book the ferry?"
        ),
    ]
    earlier = Message(
        tenant_id=TENANT,
        session_id=elsewhere,
        id="e1",
        role="user",
        content="Ferry to Skye.",
        user_id=user,
    )
    async with Producer.from_url(projected.require_redis(), projected.producer) as producer:
        appended = await producer.append_many([earlier, *(replace(m, user_id=user) for m in new)])
    context = await rehydrator.rehydrate(
        TENANT, session, budget_tokens=2000, scope=scope, user_id=user if scope == "user" else None
    )
    own = [i for i in context.items if i.message.session_id == session]
    assert [i.message.id for i in own] == ["n1", "n2"]
    assert all("log" in i.found_by for i in context.items)
    assert context.query == "Book the ferry?"
    assert context.query_source == "latest user turn"
    if scope == "user":  # the user's other session, not projected either, is reached too
        assert {i.key for i in context.items} == {
            (session, "n1"),
            (session, "n2"),
            (elsewhere, "e1"),
        }
    assert context.from_log_tail == len(context.items)
    mark = context.watermarks["postgres"]  # None: nothing of the partition applied
    assert mark is None or mark < Position.parse(appended[1].stream_id)


async def test_an_erase_not_yet_projected_hides_the_session_at_once(
    rehydrator: Rehydrator, projected: Settings, scope: ScopeName
) -> None:
    gone = f"gone-{mode(rehydrator)}-{scope}"
    user = "eve" if scope == "user" else None

    async def rehydrated() -> Context:
        return await rehydrator.rehydrate(TENANT, gone, "ferry", 2000, scope=scope, user_id=user)

    assert {i.message.session_id for i in (await rehydrated()).items} >= {gone}
    async with Producer.from_url(projected.require_redis(), projected.producer) as producer:
        await producer.append_events([SessionErased(tenant_id=TENANT, session_id=gone)])
        # Nothing after the erase yet: the projections still hold the session, the log says no.
        context = await rehydrated()
        assert gone not in {i.message.session_id for i in context.items}
        if scope == "user":  # the user's other sessions are untouched
            assert context.items
        assert await rehydrator.history(TENANT, gone) == []
        await producer.append_many(
            [
                Message(
                    tenant_id=TENANT,
                    session_id=gone,
                    id="n3",
                    role="user",
                    content="Hi",
                    user_id=user,
                )
            ]
        )
    context = await rehydrated()
    assert [i.message.id for i in context.items if i.message.session_id == gone] == ["n3"]
    assert [m.message.id for m in await rehydrator.history(TENANT, gone)] == ["n3"]


async def test_another_tenant_sees_nothing(rehydrator: Rehydrator) -> None:
    context = await rehydrator.rehydrate("other", SESSION, QUESTION, budget_tokens=2000)
    assert context.items == ()
    assert context.header is None


async def test_bad_arguments_are_refused(rehydrator: Rehydrator) -> None:
    from schemas.errors import ValidationError

    with pytest.raises(ValidationError, match="session_id"):
        await rehydrator.rehydrate(TENANT, "bad id!", QUESTION)
    with pytest.raises(ValueError, match="budget_tokens"):
        await rehydrator.rehydrate(TENANT, SESSION, QUESTION, budget_tokens=0)


def test_query_embedder_is_exported_once(projected: Settings) -> None:
    models = projected.home / "models"
    assert (models / "all-MiniLM-L6-v2.onnx").is_file()
    assert QueryEmbedder.load(models).embed("x")


async def test_a_redaction_not_yet_projected_hides_the_message_at_once(
    rehydrator: Rehydrator, projected: Settings, scope: ScopeName
) -> None:
    session = f"redacted-{mode(rehydrator)}-{scope}"
    user = "eve" if scope == "user" else None

    async def rehydrated() -> set[str]:
        context = await rehydrator.rehydrate(
            TENANT, session, "ferry", 2000, scope=scope, user_id=user
        )
        return {i.message.id for i in context.items if i.message.session_id == session}

    assert {"t0", "t1", "t2"} <= await rehydrated()
    async with Producer.from_url(projected.require_redis(), projected.producer) as producer:
        await producer.redact(TENANT, session, "t1")
    # The projections still hold it, the log says no; the rest of the session stays.
    after = await rehydrated()
    assert "t1" not in after
    assert {"t0", "t2"} <= after
    kept = [m.message.id for m in await rehydrator.history(TENANT, session)]
    assert kept == ["t0", "t2", "t3", "t4", "t5"]
