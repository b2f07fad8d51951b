"""Generations of a projection: how a rebuild happens beside the live data (blue/green).

A projection's data lives in one *generation* of its store: generation 1 under the store's
first names, generation ``n`` beside it under names of its own (a Postgres schema, a
Qdrant collection, a graph, a Mongo database; :func:`stack.projections.build_store` names
them). A registry hash on the log server says per projection which generation is live,
which one a rebuild is building and which one it replaced (retired, to be dropped); every
change bumps the registry's epoch.

``amem project rebuild NAME`` only announces the next generation. The workers running the
projection do the rest (:func:`follow_rebuilds`):

1. one worker, holding the projection's lease, empties the new generation and marks it
   *writing*: from then on every batch the workers apply goes to each active generation
   (the live one and the one being built), as the registry stands when the batch is
   applied;
2. once every consumer of the projection's group has seen that epoch (or has no entry in
   hand), the lease holder replays into the new generation everything appended before:
   each stream, then the archive (``Replay``). Stores are idempotent and
   order-insensitive, so what both the replay and the live batches bring is applied twice
   to the same effect;
3. it switches the new generation live in one script, if it still holds the lease;
4. once every consumer has seen the switch and readers had ``grace_s`` to move (they read
   the registry on every call), it drops the retired generation.

A worker killed at any step lets its lease expire; whichever worker takes it next redoes
that step (a replay from the start, onto what the generation holds). "Seen" is exact: a
consumer records the newest epoch only when no batch it is still applying started under an
older one.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import cast

import redis.asyncio as aioredis

from projectors.store import Projection
from projectors.tasks import raise_if_cancelled
from schemas.constants import (
    GENERATIONS_KEY,
    GENERATIONS_SEEN_KEY,
    generation_lease_key,
    generation_progress_key,
)

FIRST = 1
"""The generation a projection starts in: its store's first names."""

OpenGeneration = Callable[[int, str | None], Projection]
"""Builds (does not start) the store of one generation of a projection, in its embedding
model (None: the enricher's)."""

_log = logging.getLogger("projectors.generations")

# KEYS: registry. ARGV: projection, embedding model ('': the live generation's). The
# generation under construction (a new one past every generation in use, or the one already
# announced: -1 if that one has another model); 0 while a retired one awaits its drop.
ANNOUNCE_LUA = """
local building = redis.call('HGET', KEYS[1], ARGV[1] .. ':building')
local live = redis.call('HGET', KEYS[1], ARGV[1]) or '1'
local model = ARGV[2]
if model == '' then model = redis.call('HGET', KEYS[1], ARGV[1] .. ':model:' .. live) or '' end
if building then
  local current = redis.call('HGET', KEYS[1], ARGV[1] .. ':model:' .. building) or ''
  if current ~= model then return -1 end
  return tonumber(building)
end
if redis.call('HEXISTS', KEYS[1], ARGV[1] .. ':retired') == 1 then return 0 end
local next = tonumber(live) + 1
redis.call('HSET', KEYS[1], ARGV[1] .. ':building', next)
if model ~= '' then redis.call('HSET', KEYS[1], ARGV[1] .. ':model:' .. next, model) end
redis.call('HINCRBY', KEYS[1], 'epoch', 1)
return next
"""

# KEYS: registry, lease. ARGV: projection, generation, holder. The generation, emptied,
# starts taking every batch. 1: done; 0: not the one being built, or the lease is gone.
WRITE_LUA = """
if redis.call('HGET', KEYS[1], ARGV[1] .. ':building') ~= ARGV[2] then return 0 end
if redis.call('GET', KEYS[2]) ~= ARGV[3] then return 0 end
redis.call('HSET', KEYS[1], ARGV[1] .. ':writing', ARGV[2])
redis.call('HINCRBY', KEYS[1], 'epoch', 1)
return 1
"""

# KEYS: registry, lease. ARGV: projection, generation built, now (ms), holder. 1: switched;
# 0: that generation is not the one being built (any more), or the lease is gone (another
# worker may be replaying into it again).
SWITCH_LUA = """
if redis.call('HGET', KEYS[1], ARGV[1] .. ':building') ~= ARGV[2] then return 0 end
if redis.call('GET', KEYS[2]) ~= ARGV[4] then return 0 end
local live = redis.call('HGET', KEYS[1], ARGV[1]) or '1'
redis.call('HSET', KEYS[1], ARGV[1], ARGV[2], ARGV[1] .. ':retired', live .. ' ' .. ARGV[3])
redis.call('HDEL', KEYS[1], ARGV[1] .. ':building', ARGV[1] .. ':writing')
redis.call('HINCRBY', KEYS[1], 'epoch', 1)
return 1
"""

# KEYS: lease. ARGV: holder, ttl (ms). Extends the lease if the holder still has it.
RENEW_LUA = """
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('PEXPIRE', KEYS[1], ARGV[2])
end
return 0
"""

# KEYS: lease. ARGV: holder. Gives the lease back if the holder still has it.
RELEASE_LUA = """
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
"""


@dataclass(frozen=True, kw_only=True, slots=True)
class Retired:
    generation: int
    switched_ms: int


@dataclass(frozen=True, kw_only=True, slots=True)
class Registry:
    """The registry as read at one instant."""

    epoch: int = 0
    live: Mapping[str, int] = field(default_factory=dict)
    building: Mapping[str, int] = field(default_factory=dict)
    writing: Mapping[str, int] = field(default_factory=dict)
    """The generation being built once it is emptied and takes every batch."""
    retired: Mapping[str, Retired] = field(default_factory=dict)
    models: Mapping[tuple[str, int], str] = field(default_factory=dict)
    """The embedding model of each generation kept in another model than the enricher's."""

    def live_of(self, name: str) -> int:
        return self.live.get(name, FIRST)

    def model_of(self, name: str, generation: int) -> str | None:
        """The generation's embedding model; None: the enricher's."""
        return self.models.get((name, generation))

    def active(self, name: str) -> tuple[int, ...]:
        """The generations a batch of ``name`` goes to: the live one, then the one being
        built once it takes batches."""
        writing = self.writing.get(name)
        return (self.live_of(name),) if writing is None else (self.live_of(name), writing)


async def read_registry(redis: aioredis.Redis) -> Registry:
    fields = cast(dict[bytes, bytes], await redis.hgetall(GENERATIONS_KEY))
    live: dict[str, int] = {}
    building: dict[str, int] = {}
    writing: dict[str, int] = {}
    retired: dict[str, Retired] = {}
    models: dict[tuple[str, int], str] = {}
    epoch = 0
    for raw_key, raw_value in fields.items():
        key, value = raw_key.decode(), raw_value.decode()
        name, _, role = key.partition(":")
        if key == "epoch":
            epoch = int(value)
        elif role == "":
            live[name] = int(value)
        elif role == "building":
            building[name] = int(value)
        elif role == "writing":
            writing[name] = int(value)
        elif role.startswith("model:"):
            models[(name, int(role.removeprefix("model:")))] = value
        elif role == "retired":
            generation, switched = value.split()
            retired[name] = Retired(generation=int(generation), switched_ms=int(switched))
    return Registry(
        epoch=epoch, live=live, building=building, writing=writing, retired=retired, models=models
    )


async def announce(redis: aioredis.Redis, name: str, model: str | None = None) -> int:
    """Start building the next generation of ``name`` (or join the build under way), in
    ``model`` (None: the live generation's); 0 while the generation the last rebuild
    replaced is still to be dropped, -1 while one in another model is being built."""
    return int(await redis.eval(ANNOUNCE_LUA, 1, GENERATIONS_KEY, name, model or ""))


async def switch(redis: aioredis.Redis, name: str, generation: int, holder: str) -> bool:
    """Make ``generation``, built, the live one of ``name`` (the old one becomes retired),
    if ``holder`` still holds the projection's lease."""
    now_ms = int(time.time() * 1000)
    keys = (GENERATIONS_KEY, generation_lease_key(name))
    done = await redis.eval(SWITCH_LUA, 2, *keys, name, str(generation), str(now_ms), holder)
    return bool(done)


def seen_field(name: str, consumer: str) -> str:
    return f"{name}|{consumer}"


async def laggards(
    redis: aioredis.Redis, name: str, group: str, streams: list[str], epoch: int
) -> list[str]:
    """The consumers of ``group`` that may still apply a batch of ``name`` under a registry
    older than ``epoch``: those with entries in hand that have not recorded ``epoch``.

    A consumer with nothing pending reads the registry before it applies its next batch.
    """
    behind: set[str] = set()
    for stream in streams:
        try:
            consumers = await redis.xinfo_consumers(stream, group)
        except aioredis.ResponseError:  # no such stream or group yet: nobody applies
            continue
        for consumer in consumers:
            if int(consumer["pending"]) > 0:
                behind.add(_text(consumer["name"]))
    if not behind:
        return []
    names = sorted(behind)
    marks = cast(
        list[bytes | None],
        await redis.hmget(GENERATIONS_SEEN_KEY, [seen_field(name, c) for c in names]),
    )
    return [c for c, mark in zip(names, marks, strict=True) if mark is None or int(mark) < epoch]


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value


class Generations:
    """A worker's stores of one projection, one per active generation, and what it has seen.

    ``batch()`` reads the registry, opens a generation that is new to it, and hands out the
    stores a batch goes to; once no batch under an older registry is in flight, it records
    the epoch for this consumer and closes the stores of generations no longer active.
    """

    def __init__(self, name: str, open_generation: OpenGeneration, first: Projection) -> None:
        self.name = name
        self._open = open_generation
        self._stores: dict[int, Projection] = {FIRST: first}
        self._registry = Registry()
        self.live = FIRST
        self._started: set[int] = set()
        self._epoch = -1
        self._recorded = -1
        self._in_flight: Counter[int] = Counter()
        self._active: tuple[int, ...] = (FIRST,)
        self._consumer: str | None = None

    @property
    def store(self) -> Projection:
        """The live generation's store."""
        return self._stores[self.live]

    async def attach(self, redis: aioredis.Redis, consumer: str) -> None:
        """Before start: take the live generation as the registry has it now."""
        self._consumer = consumer
        registry = self._registry = await read_registry(redis)
        live = registry.live_of(self.name)
        if live != self.live or registry.model_of(self.name, live) is not None:
            self._stores = {live: self._open(live, registry.model_of(self.name, live))}
            self.live = live
            self._active = (live,)

    async def start(self) -> None:
        await self._start(self.live)

    async def close(self) -> None:
        stores, self._stores = dict(self._stores), {}
        for store in stores.values():
            await store.close()
        self._started.clear()

    async def store_of(self, generation: int) -> Projection:
        """The started store of ``generation`` (opened here if this worker had none)."""
        if generation not in self._stores:
            model = self._registry.model_of(self.name, generation)
            self._stores[generation] = self._open(generation, model)
        await self._start(generation)
        return self._stores[generation]

    async def _start(self, generation: int) -> None:
        if generation not in self._started:
            await self._stores[generation].start()
            self._started.add(generation)

    async def follow(self, redis: aioredis.Redis) -> list[Projection]:
        """Take the registry as it stands now; the started stores of the active generations,
        the live one first."""
        registry = await read_registry(redis)
        if registry.epoch > self._epoch:
            self._registry = registry
            self._epoch = registry.epoch
            self._active = registry.active(self.name)
            self.live = registry.live_of(self.name)
        return [await self.store_of(g) for g in self._active]

    @asynccontextmanager
    async def batch(self, redis: aioredis.Redis) -> AsyncIterator[list[Projection]]:
        """The stores one batch goes to, as the registry stands now."""
        stores = await self.follow(redis)
        epoch = self._epoch
        self._in_flight[epoch] += 1
        try:
            await self._record(redis)
            yield stores
        finally:
            self._in_flight[epoch] -= 1
            if not self._in_flight[epoch]:
                del self._in_flight[epoch]
            await self._record(redis)

    async def _record(self, redis: aioredis.Redis) -> None:
        newest = self._epoch
        if newest <= self._recorded or any(e < newest for e in self._in_flight):
            return
        if self._consumer is not None:
            await redis.hset(GENERATIONS_SEEN_KEY, seen_field(self.name, self._consumer), newest)
        self._recorded = newest
        for generation in list(self._stores):
            await self.release(generation)

    async def release(self, generation: int) -> None:
        """Close the store of ``generation`` unless a batch may still go to it."""
        if generation in self._active or generation not in self._stores:
            return
        self._started.discard(generation)
        await self._stores.pop(generation).close()

    async def forget(self, redis: aioredis.Redis) -> None:
        """At shutdown: this consumer applies nothing any more."""
        if self._consumer is not None:
            await redis.hdel(GENERATIONS_SEEN_KEY, seen_field(self.name, self._consumer))


Replay = Callable[[Projection, Callable[[int], Awaitable[None]]], Awaitable[int]]
"""Applies to a new generation's store everything appended before now (each stream, then
the archive), telling progress how many events it just applied; returns the count."""


@dataclass(frozen=True, kw_only=True, slots=True)
class RebuildPolicy:
    lease_s: float = 30.0
    """How long a worker's hold on a rebuild step lasts unless renewed (it renews it every
    third of that): how soon another worker takes over from a dead one."""
    grace_s: float = 10.0
    """How long readers have after a switch to stop using the retired generation."""
    poll_s: float = 1.0


DEFAULT_REBUILD_POLICY = RebuildPolicy()


async def follow_rebuilds(
    redis: aioredis.Redis,
    generations: Generations,
    *,
    group: str,
    streams: list[str],
    replay: Replay,
    holder: str,
    stopping: asyncio.Event,
    policy: RebuildPolicy = DEFAULT_REBUILD_POLICY,
) -> None:
    """A worker's part in the rebuilds of one projection, until ``stopping`` is set.

    A step that fails (a store or the log server away) gives its lease back and is tried
    again after a pause, by this worker or another.
    """
    steps = _Steps(redis, generations, group, streams, replay, holder, stopping, policy)
    while not stopping.is_set():
        try:
            if await steps.one():
                continue
        except Exception as exc:
            raise_if_cancelled()
            _log.warning(
                "%s: rebuild step failed, retrying: %s: %s",
                generations.name,
                type(exc).__name__,
                exc,
            )
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stopping.wait(), policy.poll_s)


@dataclass(frozen=True, slots=True)
class _Steps:
    redis: aioredis.Redis
    generations: Generations
    group: str
    streams: list[str]
    replay: Replay
    holder: str
    stopping: asyncio.Event
    policy: RebuildPolicy

    async def one(self) -> bool:
        """Build, or drop, under the projection's lease if there is work; whether there was."""
        redis, name, policy = self.redis, self.generations.name, self.policy
        await self.generations.follow(redis)  # the new generation's model, among others
        registry = await read_registry(redis)
        building = registry.building.get(name)
        retired = registry.retired.get(name)
        lease = generation_lease_key(name)
        ttl_ms = int(policy.lease_s * 1000)
        if not (building or retired) or not await redis.set(lease, self.holder, nx=True, px=ttl_ms):
            return False
        renewing = asyncio.create_task(_renew(redis, lease, self.holder, policy))
        try:
            if building is not None and registry.writing.get(name) != building:
                await self._prepare(building)
            elif not await self._until_seen(registry.epoch):
                return False
            elif building is not None:
                await _build(redis, self.generations, building, self.replay, self.holder)
            elif retired is not None:
                await _drop(redis, self.generations, retired, policy, self.stopping)
            return True
        finally:
            renewing.cancel()
            await redis.eval(RELEASE_LUA, 1, lease, self.holder)

    async def _prepare(self, generation: int) -> None:
        """Empty the new generation (names a test or an old deployment left behind may hold
        data), then let every batch reach it. Before that no batch does, so nothing that
        reached it is lost; a build resumed after its worker died keeps what it holds."""
        store = await self.generations.store_of(generation)
        await store.reset()
        keys = (GENERATIONS_KEY, generation_lease_key(self.generations.name))
        await self.redis.eval(
            WRITE_LUA, 2, *keys, self.generations.name, str(generation), self.holder
        )

    async def _until_seen(self, epoch: int) -> bool:
        """Wait until no consumer may apply a batch under a registry older than ``epoch``;
        False if the worker stops first."""
        name = self.generations.name
        while behind := await laggards(self.redis, name, self.group, self.streams, epoch):
            _log.debug("%s: waiting for %s to see epoch %d", name, ", ".join(behind), epoch)
            if self.stopping.is_set():
                return False
            await asyncio.sleep(self.policy.poll_s / 10)
        return True


async def _renew(redis: aioredis.Redis, lease: str, holder: str, policy: RebuildPolicy) -> None:
    while True:
        await asyncio.sleep(policy.lease_s / 3)
        await redis.eval(RENEW_LUA, 1, lease, holder, str(int(policy.lease_s * 1000)))


async def _build(
    redis: aioredis.Redis, generations: Generations, generation: int, replay: Replay, holder: str
) -> None:
    name = generations.name
    progress_key = generation_progress_key(name)
    store = await generations.store_of(generation)
    await redis.delete(progress_key)
    await redis.hset(progress_key, mapping={"generation": generation, "holder": holder})

    async def progress(applied: int) -> None:
        await redis.hincrby(progress_key, "applied", applied)

    started = time.perf_counter()
    applied = await replay(store, progress)
    switched = await switch(redis, name, generation, holder)
    _log.info(
        "%s: generation %d built from %d events in %.1f s%s",
        name,
        generation,
        applied,
        time.perf_counter() - started,
        "; switched live" if switched else "",
    )


async def _drop(
    redis: aioredis.Redis,
    generations: Generations,
    retired: Retired,
    policy: RebuildPolicy,
    stopping: asyncio.Event,
) -> None:
    wait_s = retired.switched_ms / 1000 + policy.grace_s - time.time()
    if wait_s > 0:
        try:
            await asyncio.wait_for(stopping.wait(), wait_s)
            return  # stopping: the next worker drops it
        except TimeoutError:
            pass
    store = await generations.store_of(retired.generation)
    await store.drop()
    await generations.release(retired.generation)
    name = generations.name
    await redis.hdel(GENERATIONS_KEY, f"{name}:retired", f"{name}:model:{retired.generation}")
    _log.info("%s: generation %d dropped", generations.name, retired.generation)
