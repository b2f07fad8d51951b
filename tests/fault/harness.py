"""Worker processes, live traffic and end-to-end checks for the projector fault tests."""

from __future__ import annotations

import asyncio
import os
import random
import signal
import subprocess
import sys
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager, suppress
from pathlib import Path
from typing import Any

from redis.exceptions import ConnectionError as RedisConnectionError

from logserver import connect
from producer import LogUnavailableError, Producer
from projectors.enricher import embedded_total
from projectors.lag import group_states
from rehydrator.verify import Verdict
from schemas.events import Message
from stack.embedded import control
from stack.embedded.state import StackState
from stack.projections import reads_enriched, select
from stack.settings import Settings
from stack.verifying import run_verify
from stack.workers import WORKER_INDEX_VAR, share

FAULT_ENV = {
    "AMEM_RECLAIM_IDLE_MS": "1500",
    "AMEM_BATCH_SIZE": "128",
    "AMEM_MAX_WAIT_MS": "100",
    "AMEM_GRACEFUL_TIMEOUT_S": "10",
    "AMEM_EMBED_THREADS": "1",
    "HF_HUB_OFFLINE": "1",
    "TRANSFORMERS_OFFLINE": "1",
}
STARTUP_S = 120.0
"""A worker that has not started consuming by then is stuck (a start takes 5-15 s here)."""
STOP_S = 60.0
# Each phase has its own bound, within a test's timeout, so that a stuck phase fails with
# the stacks of where it waits (and its workers' logs) rather than by the timeout.
CATCH_UP_S = 300
VERIFY_S = 180
MAX_CRASHES = 2
"""Starts that may fail (and be restarted) per test: a failure more often is a bug."""
NAMES = ("Alice", "Bob", "Lisbon", "Kyoto", "Ada Lovelace", "Mount Fuji", "Paris")


def traffic(n: int, *, tenants: int = 2, sessions: int = 200, seed: int = 7) -> list[Message]:
    rng = random.Random(seed)
    out = []
    for i in range(n):
        a, b = rng.sample(NAMES, 2)
        out.append(
            Message(
                tenant_id=f"tenant-{i % tenants}",
                session_id=f"s{rng.randrange(sessions)}",
                id=f"m{i}",
                role=rng.choice(("user", "assistant")),
                content=f"{a} told me about {b} on day {i % 97}; note {rng.random():.6f}",
            )
        )
    return out


class Workers:
    """``count`` worker processes sharing the projectors as ``amem project run`` does."""

    def __init__(self, env: dict[str, str], logs: Path, count: int = 2) -> None:
        self.env = {**env, **FAULT_ENV}
        self.settings = Settings.from_env(self.env)
        self.plan = share(self.settings, select(self.settings), count)
        self.logs = logs
        self.procs: list[subprocess.Popen[bytes] | None] = [None] * count
        self.starts = 0
        self.current_log: list[Path] = [logs] * count
        self.kills = 0
        self.crashed: list[Path] = []
        """The logs of the starts that exited on their own, before consuming."""

    def start(self, index: int) -> None:
        env = {
            **self.env,
            "AMEM_PROJECTORS": ",".join(self.plan[index]),
            WORKER_INDEX_VAR: str(index),
        }
        self.starts += 1
        self.current_log[index] = self.logs / f"worker-{index}-{self.starts}.log"
        with self.current_log[index].open("ab") as log:
            self.procs[index] = subprocess.Popen(
                [sys.executable, "-m", "stack.workers"], env=env, stdout=log, stderr=log
            )

    async def running(self, index: int) -> None:
        """Wait until the worker consumes (it logs its consumer name once started)."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + STARTUP_S
        while b" runs " not in self.current_log[index].read_bytes():
            proc = self.procs[index]
            assert proc is not None
            if proc.poll() is not None:
                # As compose's `restart: unless-stopped` would; a worker that keeps failing
                # to start fails the test.
                self.crashed.append(self.current_log[index])
                assert len(self.crashed) <= MAX_CRASHES, (
                    f"worker {index} died {len(self.crashed)} times:\n" + self.tail()
                )
                self.start(index)
                deadline = loop.time() + STARTUP_S
            if loop.time() > deadline:
                self._dump_stacks(proc)
                raise AssertionError(
                    f"worker {index} did not start consuming in {STARTUP_S:.0f}s\n" + self.tail()
                )
            await asyncio.sleep(0.1)

    def start_all(self) -> None:
        for i in range(len(self.procs)):
            self.start(i)

    async def all_running(self) -> None:
        for i in range(len(self.procs)):
            await self.running(i)

    def index_of(self, consumer: str) -> int:
        """Which worker a consumer name (``host-pid-hex``) belongs to."""
        pid = int(consumer.rsplit("-", 2)[1])
        return next(i for i, p in enumerate(self.procs) if p is not None and p.pid == pid)

    def kill(self, index: int) -> None:
        proc = self.procs[index]
        assert proc is not None
        assert proc.poll() is None, f"worker {index} died on its own: see {self.logs}"
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        self.kills += 1

    def stop_all(self) -> list[int]:
        """SIGTERM every worker and wait: each finishes its batch in hand.

        A worker still alive after ``STOP_S`` has its stacks dumped to its log and is
        SIGKILLed (reported as -9), so no process outlives the test holding a store.
        """
        for proc in self.procs:
            if proc is not None and proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        return [self._reap(proc) for proc in self.procs if proc is not None]

    def _reap(self, proc: subprocess.Popen[bytes]) -> int:
        try:
            return proc.wait(STOP_S)
        except subprocess.TimeoutExpired:
            self._dump_stacks(proc)
            proc.kill()
            proc.wait()
            return -signal.SIGKILL

    @staticmethod
    def _dump_stacks(proc: subprocess.Popen[bytes]) -> None:
        """Have a live worker print every thread's stack into its log (stack.workers)."""
        if proc.poll() is None:
            proc.send_signal(signal.SIGUSR1)
            with suppress(subprocess.TimeoutExpired):
                proc.wait(1.0)

    def tail(self) -> str:
        """Each worker log's start (its error, if it failed to start) and end (its stacks)."""
        return "\n".join(
            f"--- {p.name}\n" + _ends(p.read_text(errors="replace"), 3000)
            for p in sorted(self.logs.glob("worker-*.log"))
        )


def _ends(text: str, each: int) -> str:
    if len(text) <= 2 * each:
        return text
    return f"{text[:each]}\n[... {len(text) - 2 * each} characters ...]\n{text[-each:]}"


@asynccontextmanager
async def bounded(what: str, seconds: float, workers: Workers) -> AsyncIterator[None]:
    """Fail with where every task of this process waits, instead of hanging past ``seconds``.

    The stacks are taken before the cancellation unwinds them: they show the stuck await.
    """
    task = asyncio.current_task()
    assert task is not None
    stacks: list[str] = []

    def expire() -> None:
        stacks.append(_task_stacks())
        task.cancel()

    timer = asyncio.get_running_loop().call_later(seconds, expire)
    try:
        yield
    except asyncio.CancelledError:
        if not stacks:
            raise
        task.uncancel()
        raise AssertionError(
            f"{what} took over {seconds:.0f}s; this process's tasks:\n" + stacks[0] + workers.tail()
        ) from None
    finally:
        timer.cancel()


def _task_stacks() -> str:
    """Each task's chain of awaits, outermost first, down to the one it waits on."""
    out = []
    for task in asyncio.all_tasks():
        out.append(f"{task.get_name()}:")
        awaited: Any = task.get_coro()
        while awaited is not None:
            frame = getattr(awaited, "cr_frame", None) or getattr(awaited, "gi_frame", None)
            if frame is not None:
                code = frame.f_code
                out.append(f"  {code.co_filename}:{frame.f_lineno} in {code.co_name}")
            awaited = getattr(awaited, "cr_await", None) or getattr(awaited, "gi_yieldfrom", None)
        out.append("")
    return "\n".join(out)


async def flow(
    settings: Settings, messages: Sequence[Message], *, per_second: float, batch: int = 50
) -> int:
    """Append at a steady rate, retrying through log outages (appends are idempotent)."""
    async with Producer.from_url(settings.require_redis()) as producer:
        for start in range(0, len(messages), batch):
            chunk = messages[start : start + batch]
            while True:
                try:
                    await producer.append_many(chunk)
                    break
                except (LogUnavailableError, RedisConnectionError, OSError):
                    await asyncio.sleep(0.2)
            await asyncio.sleep(len(chunk) / per_second)
    return len(messages)


async def caught_up(settings: Settings) -> None:
    """Wait until every projector has applied every entry of its stream (callers bound it)."""
    client = connect(settings.require_redis())
    try:
        while True:
            try:
                states = await group_states(
                    client, select(settings), settings.runtime.partitions, reads_enriched
                )
            except RedisConnectionError:  # the log server restarting (or still loading)
                await asyncio.sleep(0.5)
                continue
            if all((s.lag or 0) == 0 and s.pending == 0 for s in states):
                return
            await asyncio.sleep(0.5)
    finally:
        await client.aclose()


async def verify_all(settings: Settings) -> list[Verdict]:
    verdicts, _ = await run_verify(settings, select(settings), None)
    return verdicts


async def embedded(settings: Settings) -> int:
    client = connect(settings.require_redis())
    try:
        return await embedded_total(client, settings.runtime.partitions)
    finally:
        await client.aclose()


def assert_clean(verdicts: Sequence[Verdict], workers: Workers) -> None:
    bad = [
        f"{v.projection}: {v.error or [str(d) for d in v.differences[:5]]}"
        for v in verdicts
        if not v.ok
    ]
    assert not bad, "\n".join(bad) + "\n" + workers.tail()


def env_for(stack_env: dict[str, str]) -> dict[str, str]:
    return {**os.environ, **stack_env, **FAULT_ENV}


async def finish(pool: Workers, expected_messages: int | None = None) -> None:
    """Catch up, stop every worker cleanly, and prove every projection equals the log."""
    settings = pool.settings
    # A worker (re)started just as the log server was killed may have exited during its
    # start: restarted here, as compose's `restart: unless-stopped` would, or the projector
    # only it runs (Qdrant in local mode) never catches up.
    await pool.all_running()
    async with bounded("catching up", CATCH_UP_S, pool):
        await caught_up(settings)
    # A worker restarted just before the end may still be importing, before its SIGTERM
    # handler exists: the default action would kill it (it holds nothing yet).
    for i in range(len(pool.procs)):
        await pool.running(i)
    assert pool.stop_all() == [0] * len(pool.procs), "a worker did not exit cleanly on SIGTERM"
    async with bounded("verifying", VERIFY_S, pool):
        verdicts = await verify_all(settings)
        embedded_messages = await embedded(settings)
    assert_clean(verdicts, pool)
    if expected_messages is not None:
        assert embedded_messages == expected_messages


def kill_log_server(settings: Settings) -> None:
    """SIGKILL the embedded redis-server: no AOF fsync, no goodbye."""
    record = StackState.load(settings.home).services["redis"]
    assert record.pid is not None
    os.kill(record.pid, signal.SIGKILL)


async def restart_log_server(settings: Settings) -> None:
    """Kill the log server, and bring it back on the same port from its AOF."""
    kill_log_server(settings)
    await asyncio.sleep(1.0)
    control.up(settings)
