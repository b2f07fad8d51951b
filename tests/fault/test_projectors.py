"""Projectors against the real embedded services while processes and servers die.

Each test starts from an empty log and empty stores, runs real worker processes
(``python -m stack.workers``) under live traffic, breaks something, and ends with every
projection proved equal to the log by ``verify``.

Workers SIGKILLed at random instants under 20,000 messages of traffic: ``test_cluster``,
with the log on a Redis Cluster (the same runtime under a harder log; one copy of a 3-minute
test is what the CI budget allows).
"""

from __future__ import annotations

import asyncio

import pytest

from logserver import connect
from projectors.deadletter import list_dead_letters
from projectors.lag import group_states
from schemas.constants import log_key
from stack.embedded import control
from stack.embedded.postgres_server import EmbeddedPostgres
from stack.embedded.state import StackState
from stack.projections import reads_enriched, select
from tests.fault.harness import (
    Workers,
    finish,
    flow,
    restart_log_server,
    traffic,
)

pytestmark = [pytest.mark.fault, pytest.mark.timeout(900)]


async def test_log_server_sigkill_and_restart_during_flow(workers: Workers) -> None:
    settings = workers.settings
    workers.start_all()
    producing = asyncio.create_task(flow(settings, traffic(4_000), per_second=400))
    await workers.all_running()
    await asyncio.sleep(2)
    await restart_log_server(settings)
    await producing
    await finish(workers)


async def test_postgres_down_for_30_seconds_during_flow(workers: Workers) -> None:
    settings = workers.settings
    workers.start_all()
    producing = asyncio.create_task(flow(settings, traffic(6_000), per_second=150))
    await workers.all_running()
    await asyncio.sleep(2)
    state = StackState.load(settings.home)
    EmbeddedPostgres(settings.home).stop(state.services["postgres"])
    await asyncio.sleep(30)
    control.up(settings)
    await producing
    await finish(workers)


async def test_poison_entries_land_in_the_dead_letter_streams_and_traffic_flows(
    workers: Workers,
) -> None:
    settings = workers.settings
    workers.start_all()
    producing = asyncio.create_task(flow(settings, traffic(5_000), per_second=500))
    big = "x" * (settings.runtime.limits.max_content_bytes + 1)
    kinds = {
        "bad JSON": b"{not json",
        "unknown version": b'{"type": "message.appended", "v": 99}',
        "missing fields": b'{"type": "message.appended", "v": 1, "tenant_id": "t"}',
        "oversized": (
            b'{"type":"message.appended","v":1,"event_id":"e","produced_at":'
            b'"2026-01-01T00:00:00Z","tenant_id":"t","session_id":"s","payload":{"id":"p",'
            b'"role":"user","created_at":"2026-01-01T00:00:00Z","content":"' + big.encode() + b'"}}'
        ),
    }
    expected = {
        "bad JSON": "not valid JSON",
        "unknown version": "99 is not supported",
        "missing fields": "is missing",
        "oversized": "bytes (limit",
    }
    client = connect(settings.require_redis())
    try:
        for i in range(1_000):
            await client.xadd(
                log_key(i % settings.runtime.partitions), {"event": list(kinds.values())[i % 4]}
            )
            if i % 100 == 0:
                await asyncio.sleep(0.05)
        await producing
        await finish(workers)
        for name in select(settings):
            letters = await list_dead_letters(client, name, count=5_000)
            if reads_enriched(name):  # the enricher stopped the poison before them
                assert letters == [], name
                continue
            assert len(letters) == 1_000, name
            for kind, raw in kinds.items():
                matching = [x for x in letters if x.fields.get(b"event") == raw]
                assert len(matching) == 250, (name, kind)
                assert all(expected[kind] in x.reason for x in matching), (name, kind)
    finally:
        await client.aclose()


async def test_sigterm_finishes_the_batch_in_hand_and_exits(workers: Workers) -> None:
    settings = workers.settings
    workers.start_all()
    await workers.all_running()
    producing = asyncio.create_task(flow(settings, traffic(3_000), per_second=1_000))
    await asyncio.sleep(1.5)
    assert workers.stop_all() == [0] * len(workers.procs)  # mid-flow, mid-batch
    client = connect(settings.require_redis())
    try:
        states = await group_states(
            client, select(settings), settings.runtime.partitions, reads_enriched
        )
    finally:
        await client.aclose()
    # Every batch a worker held was applied and acknowledged before it exited.
    assert [(s.projector, s.partition, s.pending) for s in states if s.pending] == []
    await producing
    workers.start_all()
    await finish(workers)
