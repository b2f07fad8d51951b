"""Retention while processes and the log server die: trimming and rebuilding stay exact.

Workers trim every second to a 50-entry window, so most of each test's log is trimmed
while they are killed; every test ends with ``verify`` (which reads the archive, then the
streams) proving every projection equal to the whole log.
"""

from __future__ import annotations

import asyncio
import random
import subprocess
import sys

import pytest

from logserver import connect
from projectors.generations import read_registry
from schemas.constants import generation_progress_key
from stack.embedded import control
from stack.settings import Settings
from tests.fault.harness import (
    Workers,
    bounded,
    finish,
    flow,
    kill_log_server,
    restart_log_server,
    traffic,
)

pytestmark = [pytest.mark.fault, pytest.mark.timeout(900)]
WORKER_ENV = {
    "AMEM_LOG_RETAIN": "count=50",
    "AMEM_LOG_TRIM_INTERVAL_S": "1",
    # A killed worker's rebuild step is taken over within seconds.
    "AMEM_REBUILD_LEASE_S": "3",
    "AMEM_REBUILD_GRACE_S": "1",
}
KILLING_S = 300


async def kill_workers(workers: Workers, producing: asyncio.Task[int], *, kills: int) -> None:
    rng = random.Random(5)
    async with bounded("killing workers while they trim", KILLING_S, workers):
        while workers.kills < kills or not producing.done():
            victim = rng.randrange(len(workers.procs))
            await workers.running(victim)
            await asyncio.sleep(rng.uniform(0.5, 2.5))
            workers.kill(victim)
            workers.start(victim)
        await producing


async def test_sigkill_of_workers_while_they_trim_loses_nothing(workers: Workers) -> None:
    messages = traffic(6_000)
    workers.start_all()
    producing = asyncio.create_task(flow(workers.settings, messages, per_second=300))
    await kill_workers(workers, producing, kills=10)
    await finish(workers, expected_messages=len(messages))


async def test_log_server_sigkill_while_workers_trim(workers: Workers) -> None:
    settings = workers.settings
    workers.start_all()
    producing = asyncio.create_task(flow(settings, traffic(5_000), per_second=400))
    await workers.all_running()
    await asyncio.sleep(6)  # a few trim rounds first
    await restart_log_server(settings)
    await producing
    await finish(workers)


def rebuild(env: dict[str, str], name: str) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [sys.executable, "-m", "stack.cli", "project", "rebuild", name, "--json"],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )


async def finished(proc: subprocess.Popen[bytes]) -> tuple[int, str]:
    """Exit code and stderr of a rebuild, once it ends."""
    _, err = await asyncio.to_thread(proc.communicate)
    return proc.returncode, err.decode(errors="replace")


async def test_rebuilds_under_worker_and_log_server_kills_end_equal_to_the_log(
    workers: Workers,
) -> None:
    settings = workers.settings
    workers.start_all()
    producing = asyncio.create_task(flow(settings, traffic(5_000), per_second=400))
    await workers.all_running()
    await asyncio.sleep(8)  # most of what is appended by now is trimmed: rebuilds need the archive

    # The worker building pgvector's next generation killed mid-way: another worker (or
    # the restarted one) takes the step over once its lease lapses and replays again.
    rebuilding = rebuild(workers.env, "pgvector")
    builder = workers.index_of(await building_holder(settings, "pgvector"))
    workers.kill(builder)
    workers.start(builder)
    code, err = await finished(rebuilding)
    assert code == 0, err

    # The log server killed while postgres rebuilds: the command may fail; run again, it
    # joins the rebuild under way (or starts one, if the announce was lost) and ends right.
    rebuilding = rebuild(workers.env, "postgres")
    await building_holder(settings, "postgres")
    kill_log_server(settings)
    await finished(rebuilding)
    control.up(settings)
    again = rebuild(workers.env, "postgres")
    code, err = await finished(again)
    assert code == 0, err
    await producing
    await finish(workers)
    # postgres: 2, or 3 if the first rebuild was through before the log server died.
    pgvector, postgres = await live_generations(settings, ["pgvector", "postgres"])
    assert pgvector == 2
    assert postgres >= 2


async def building_holder(settings: Settings, name: str) -> str:
    """The consumer name of the worker building ``name``'s next generation, once one is."""
    redis = connect(settings.require_redis())
    try:
        async with asyncio.timeout(60):
            while True:
                holder = await redis.hget(generation_progress_key(name), "holder")
                if holder:
                    break
                await asyncio.sleep(0.05)
    finally:
        await redis.aclose()
    return holder.decode() if isinstance(holder, bytes) else holder


async def live_generations(settings: Settings, names: list[str]) -> list[int]:
    redis = connect(settings.require_redis())
    try:
        registry = await read_registry(redis)
    finally:
        await redis.aclose()
    return [registry.live_of(name) for name in names]
