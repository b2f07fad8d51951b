"""Blue/green rebuilds under a steady rehydrate load: no call sees the rebuild.

Real worker processes and the embedded services. Two rehydrators read all along, one
through its in-memory copies and one straight from the stores (no copies), while
``amem project rebuild`` builds pgvector, the graph and Qdrant anew beside the live ones,
switches and drops the old ones. Every call must report as many dense candidates as the
same call before the rebuild, and no degraded tier. (The graph tier's candidates are not
compared: they vary from call to call without any rebuild, with the order the seeds'
reads finish in.) The call deadline is generous on
purpose: the property is that the switch is invisible to readers, not how fast two cores
serve reads while they also replay a projection.
"""

from __future__ import annotations

import asyncio
import json
from contextlib import AsyncExitStack
from dataclasses import replace
from pathlib import Path

import asyncpg
import pytest

from logserver import connect
from projectors.enrichment.models import INT8_MODEL
from projectors.generations import Registry, read_registry
from rehydrator.context import Context
from rehydrator.rehydrate import Rehydrator
from schemas.constants import model_embedded_key
from stack.rehydration import open_rehydrator
from stack.settings import Settings
from tests.integration.test_cli import amem
from tests.integration.test_project_cli import (
    LOCOMO_MESSAGES,
    embedded,
    fresh,
    locomo_projected,
    run_ok,
    verified,
)

__all__ = ["fresh"]  # the fixture, imported to be used here

QUESTIONS = (
    ("conv-26", "When did Caroline go to the LGBTQ support group?"),
    ("conv-26", "What did Melanie paint recently?"),
    ("conv-30", "Why did Jon decide to start his own dance studio?"),
)
Shape = dict[tuple[str, str], int]
"""Per rehydrator and question: the dense candidates of a call."""
Models = dict[str, str]
"""Per rehydrator: the model its last call embedded the query with."""


@pytest.fixture
def env(fresh: dict[str, str]) -> dict[str, str]:
    return {
        **fresh,
        "AMEM_REHYDRATE_DEADLINE_MS": "5000",
        "AMEM_REHYDRATE_TIER_DEADLINES": "graph=5000",
        "AMEM_REBUILD_GRACE_S": "2",
    }


def shape(context: Context) -> int:
    degraded = [r for r in context.tiers if r.status not in ("ok", "skipped")]
    assert not degraded, degraded
    counts = {r.tier: r.candidates for r in context.tiers}
    assert "graph" in counts, context.tiers
    return counts["dense"]  # from the in-memory copy or from a vector store, the same hits


async def ask_all(rehydrators: list[Rehydrator], models: Models | None = None) -> Shape:
    shapes: Shape = {}
    for i, rehydrator in enumerate(rehydrators):
        for session, question in QUESTIONS:
            context = await rehydrator.rehydrate("default", session, question, 1000)
            shapes[(f"{i}:{session}", question)] = shape(context)
            if models is not None:
                models[str(i)] = next(r.store or "" for r in context.tiers if r.tier == "embedding")
    return shapes


async def under_load(
    env: dict[str, str], rebuilds: list[tuple[str, ...]], models: Models | None = None
) -> tuple[int, Registry]:
    """Run each rebuild (``amem project rebuild`` arguments) in turn while the rehydrators
    read; calls made, and the registry at the end. ``models`` gets the query model of each
    rehydrator's last call."""
    settings = Settings.from_env(env)
    async with AsyncExitStack() as stack:
        rehydrators = [
            await stack.enter_async_context(open_rehydrator(settings)),
            await stack.enter_async_context(
                open_rehydrator(
                    replace(settings, rehydrate=replace(settings.rehydrate, hot_rows=0))
                )
            ),
        ]
        for rehydrator in rehydrators:
            for session, _ in QUESTIONS:
                await rehydrator.prepare("default", session)
        baseline = await ask_all(rehydrators)
        assert all(dense > 0 for dense in baseline.values()), baseline
        calls = 0
        stop = asyncio.Event()

        async def load() -> None:
            nonlocal calls
            while not stop.is_set():
                assert await ask_all(rehydrators, models) == baseline
                calls += 1

        reading = asyncio.create_task(load())
        try:
            for arguments in rebuilds:
                done = await asyncio.to_thread(
                    amem, env, "project", "rebuild", *arguments, "--json"
                )
                assert done.returncode == 0, done.stderr
                assert not reading.done()
            # Calls after the last drop read only the new generations.
            await asyncio.sleep(1)
        finally:
            stop.set()
            await reading
        await ask_all(rehydrators, models)  # after the last drop: the new generations only
        redis = connect(settings.require_redis())
        try:
            return calls, await read_registry(redis)
        finally:
            await redis.aclose()


@pytest.mark.timeout(900)
def test_rebuilds_switch_generations_without_a_reader_noticing(env: dict[str, str]) -> None:
    locomo_projected(env)

    calls, registry = asyncio.run(under_load(env, [("pgvector",), ("graph",), ("qdrant",)]))
    assert calls > 3, calls  # the load ran across every rebuild
    assert [registry.live_of(n) for n in ("pgvector", "graph", "qdrant")] == [2, 2, 2]
    asyncio.run(old_generations_dropped(Settings.from_env(env)))
    counts = verified(env)
    assert set(counts.values()) == {LOCOMO_MESSAGES}, counts
    assert embedded(env) == LOCOMO_MESSAGES  # no rebuild embedded anything


async def old_generations_dropped(settings: Settings) -> None:
    redis = connect(settings.require_redis())
    try:
        graphs = await redis.execute_command("GRAPH.LIST")  # type: ignore[no-untyped-call]
        assert graphs == [b"amem_g2"]
    finally:
        await redis.aclose()
    conn = await asyncpg.connect(settings.require_postgres())
    try:  # the first generation lives in public, shared: dropping it empties its tables
        assert await conn.fetchval("SELECT count(*) FROM public.amem_vectors") == 0
        assert await conn.fetchval("SELECT count(*) FROM amem_pgvector_g2.amem_vectors") == (
            LOCOMO_MESSAGES
        )
    finally:
        await conn.close()


async def model_rows(settings: Settings, model: str) -> tuple[int, int]:
    """Messages archived with a vector of ``model``, and the count of those embedded."""
    conn = await asyncpg.connect(settings.require_postgres())
    try:
        rows = await conn.fetchval("SELECT count(*) FROM amem_enrichments WHERE model = $1", model)
    finally:
        await conn.close()
    redis = connect(settings.require_redis())
    try:
        embedded = int(await redis.get(model_embedded_key(model)) or 0)
    finally:
        await redis.aclose()
    return int(rows), embedded


@pytest.mark.timeout(900)
def test_a_model_swap_embeds_each_message_once_and_rehydrate_reads_it(
    env: dict[str, str], tmp_path: Path
) -> None:
    locomo_projected(env)
    settings = Settings.from_env(env)

    models: Models = {}
    calls, registry = asyncio.run(under_load(env, [("pgvector", "--model", INT8_MODEL)], models))
    assert calls > 0
    assert registry.model_of("pgvector", registry.live_of("pgvector")) == INT8_MODEL
    assert models == {"0": INT8_MODEL, "1": INT8_MODEL}  # both rehydrators query with it
    assert asyncio.run(model_rows(settings, INT8_MODEL)) == (LOCOMO_MESSAGES, LOCOMO_MESSAGES)

    # Messages appended after the swap: the enricher embeds them with its model, pgvector's
    # generation with the new one, each once.
    later = tmp_path / "later.jsonl"
    later.write_text(
        "".join(
            json.dumps({"session_id": "after-swap", "role": "user", "content": f"note {i}"}) + "\n"
            for i in range(20)
        )
    )
    run_ok(env, "import", str(later))
    run_ok(env, "project", "wait", "--timeout", "400")
    total = LOCOMO_MESSAGES + 20
    assert asyncio.run(model_rows(settings, INT8_MODEL)) == (total, total)
    assert set(verified(env).values()) == {total}
    assert embedded(env) == total  # the enricher's own count: once per message
