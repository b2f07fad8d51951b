"""Retention: each partition's log and enriched stream are a bounded hot window.

An entry leaves a stream only when it is below every bound at once:

- every consumer group's acknowledged position on that stream: its oldest pending entry,
  or just past its last delivered entry when nothing is pending;
- the archive's position: the enriched stream is held by the ``archive`` group itself,
  and the log by the least log entry named by an enriched entry the archive has not
  stored (the enriched stream is not in log order: a reclaimed entry is enriched late);
- the hot window (:class:`RetainWindow`): the newest ``count`` entries and those younger
  than ``age_s`` stay.

The groups' bounds are read and the stream trimmed in one server-side script
(``XINFO GROUPS``, ``XPENDING``, exact ``XTRIM … MINID``), so a group created or moved back
while trimming is seen, and it runs on Redis 8.2 and Dragonfly alike: no ``ACKED``
(``XTRIM … ACKED`` deletes nothing on 8.2.x), no ``XACKDEL``. A stream whose required
group (the enricher's on the log, the archive's on the enriched stream) does not exist is
not trimmed: nothing would bound it by the archive.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import re
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, cast

import redis.asyncio as aioredis

from logserver.nodes import used_memory
from projectors.hooks import Middleware
from projectors.position import Position
from projectors.streams import pages
from projectors.tasks import raise_if_cancelled
from schemas.constants import (
    ARCHIVE,
    ENRICHER,
    TRIM_LOCK_KEY,
    enriched_key,
    group_name,
    log_key,
)
from schemas.errors import ConfigurationError

if TYPE_CHECKING:
    from projectors.settings import RuntimeSettings

# KEYS: log stream, enriched stream. ARGV: enricher group, archive group, window bound of
# the log, of the enriched stream ('' = no window bound), dry run (1/0), most unarchived
# enriched entries read (more: the log is not trimmed this time).
# Returns per stream (log, then enriched): bound ('' = nothing may go), what set it, and
# how many entries were deleted.
TRIM_LUA = """
local INF = {1/0, 0}
local function parse(id)
  local d = string.find(id, '-', 1, true)
  return {tonumber(string.sub(id, 1, d - 1)), tonumber(string.sub(id, d + 1))}
end
local function less(a, b) return a[1] < b[1] or (a[1] == b[1] and a[2] < b[2]) end
local function fmt(p) return string.format('%.0f-%.0f', p[1], p[2]) end
local function field(flat, name)
  for i = 1, #flat, 2 do if flat[i] == name then return flat[i + 1] end end
end
local function groups_bound(key, required)
  local bound, holder, found = INF, '', false
  for _, g in ipairs(redis.call('XINFO', 'GROUPS', key)) do
    local name = field(g, 'name')
    if name == required then found = true end
    local b
    if tonumber(field(g, 'pending')) > 0 then
      b = parse(redis.call('XPENDING', key, name)[2])
    else
      local last = parse(field(g, 'last-delivered-id'))
      b = {last[1], last[2] + 1}
    end
    if less(b, bound) then bound, holder = b, name end
  end
  if not found then return nil, 'no group ' .. required end
  return bound, holder
end
local function trim(key, bound, holder, window)
  if bound == nil then return {'', holder, 0} end
  if window ~= '' and less(parse(window), bound) then bound, holder = parse(window), 'window' end
  if bound[1] == 1/0 then return {'', holder, 0} end
  local deleted = 0
  if ARGV[5] == '0' then deleted = redis.call('XTRIM', key, 'MINID', fmt(bound)) end
  return {fmt(bound), holder, deleted}
end
if redis.call('EXISTS', KEYS[1]) == 0 or redis.call('EXISTS', KEYS[2]) == 0 then
  return {'', 'no stream', 0, '', 'no stream', 0}
end
local eb, eh = groups_bound(KEYS[2], ARGV[2])
local lb, lh = groups_bound(KEYS[1], ARGV[1])
if lb ~= nil then
  if eb == nil then
    lb, lh = nil, eh
  else
    -- The enriched entries the archive lacks name the log entries it lacks. Not in log
    -- order (a reclaimed entry is enriched late): the log is bound by the least of them.
    local unarchived = redis.call('XRANGE', KEYS[2], fmt(eb), '+', 'COUNT', ARGV[6])
    if #unarchived >= tonumber(ARGV[6]) then
      lb, lh = nil, 'archive lag'
    else
      for _, entry in ipairs(unarchived) do
        local archived = parse(field(entry[2], 'src'))
        if less(archived, lb) then lb, lh = archived, ARGV[2] end
      end
    end
  end
end
local out = trim(KEYS[1], lb, lh, ARGV[3])
for _, v in ipairs(trim(KEYS[2], eb, eh, ARGV[4])) do out[#out + 1] = v end
return out
"""

UNARCHIVED_READ = 10_000
"""Enriched entries past the archive's position read per trim for the least log position
they name; an archive further behind than this leaves the log untrimmed until it catches
up."""

_WINDOW_PART = re.compile(r"^(count|age)=(\d+)([smhd]?)$")
_UNITS = {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400}


@dataclass(frozen=True, kw_only=True, slots=True)
class RetainWindow:
    """What stays in each stream whatever the archive holds: the newest ``count`` entries
    and every entry younger than ``age_s`` (either alone, or both: an entry stays if
    either keeps it)."""

    count: int | None = None
    age_s: float | None = None

    @classmethod
    def parse(cls, text: str) -> RetainWindow | None:
        """``off``, or ``count=N``, ``age=N[s|m|h|d]`` or both, comma-separated; None = off."""
        if text.strip().lower() in ("off", "none", ""):
            return None
        count, age = None, None
        for part in text.replace(" ", "").split(","):
            match = _WINDOW_PART.match(part)
            if match is None:
                raise ConfigurationError(
                    f"AMEM_LOG_RETAIN: cannot read {part!r}; expected off, count=N, "
                    "age=N[s|m|h|d], or count=N,age=N[s|m|h|d]"
                )
            kind, number, unit = match.groups()
            if kind == "count":
                if unit:
                    raise ConfigurationError(f"AMEM_LOG_RETAIN: a count takes no unit: {part!r}")
                count = int(number)
            else:
                age = float(int(number) * _UNITS[unit])
        return cls(count=count, age_s=age)

    def __str__(self) -> str:
        parts = []
        if self.count is not None:
            parts.append(f"count={self.count}")
        if self.age_s is not None:
            parts.append(f"age={self.age_s:.0f}s")
        return ",".join(parts)


@dataclass(frozen=True, kw_only=True, slots=True)
class StreamTrim:
    """One stream's trim: entries below ``bound`` went (or would go, in a dry run)."""

    stream: str
    bound: str | None
    """The MINID used; None when nothing may go."""
    held_by: str
    """What set the bound: a consumer group, ``window``, or why nothing may go."""
    trimmed: int
    hot: int
    """Entries left in the stream."""


@dataclass(frozen=True, kw_only=True, slots=True)
class PartitionTrim:
    partition: int
    log: StreamTrim
    enriched: StreamTrim


async def trim(
    redis: aioredis.Redis,
    partitions: int,
    window: RetainWindow,
    *,
    dry_run: bool = False,
    now_ms: int | None = None,
) -> list[PartitionTrim]:
    """Trim every partition's streams to what ``window`` and the bounds allow."""
    now_ms = int(time.time() * 1000) if now_ms is None else now_ms
    script = redis.register_script(TRIM_LUA)
    out = []
    for n in range(partitions):
        keys = [log_key(n), enriched_key(n)]
        windows = [await _window_bound(redis, key, window, now_ms) for key in keys]
        reply = cast(
            list[bytes],
            await script(
                keys=keys,
                args=[
                    group_name(ENRICHER),
                    group_name(ARCHIVE),
                    *windows,
                    int(dry_run),
                    UNARCHIVED_READ,
                ],
            ),
        )
        streams = []
        for i, key in enumerate(keys):
            bound, holder, removed = reply[3 * i : 3 * i + 3]
            stream_bound = bound.decode() or None
            deleted = int(removed)
            if dry_run and stream_bound is not None:
                deleted = await _count_below(redis, key, stream_bound)
            streams.append(
                StreamTrim(
                    stream=key,
                    bound=stream_bound,
                    held_by=holder.decode(),
                    trimmed=deleted,
                    hot=await redis.xlen(key) - (deleted if dry_run else 0),
                )
            )
        out.append(PartitionTrim(partition=n, log=streams[0], enriched=streams[1]))
    return out


async def _window_bound(redis: aioredis.Redis, key: str, window: RetainWindow, now_ms: int) -> str:
    """The id below which ``window`` keeps nothing of ``key`` ('' when it keeps nothing)."""
    bounds: list[tuple[int, int]] = []
    if window.age_s is not None:
        bounds.append((now_ms - int(window.age_s * 1000), 0))
    if window.count:  # count=0 keeps nothing by count
        bounds.append(await _start_of_newest(redis, key, window.count))
    if not bounds:
        return ""
    ms, seq = min(bounds)
    return f"{ms}-{seq}"


async def _start_of_newest(redis: aioredis.Redis, key: str, count: int) -> tuple[int, int]:
    """The id of the oldest of the newest ``count`` entries (0-0 when there are fewer).

    Streams index entries by id, not by rank: the entries before it are read once, in
    pages, on their way out.
    """
    skip = await redis.xlen(key) - count
    if skip <= 0:
        return (0, 0)
    async for page in pages(redis, key):
        if skip < len(page):
            return _id(page[skip][0])
        skip -= len(page)
    return (0, 0)


async def _count_below(redis: aioredis.Redis, key: str, bound: str) -> int:
    """Entries of ``key`` with an id below ``bound`` (what a trim there would delete)."""
    ms, seq = _id(bound.encode())
    if (ms, seq) == (0, 0):
        return 0
    # The id just below the bound (an exclusive end cannot be given at seq 0).
    last = f"{ms}-{seq - 1}" if seq else f"{ms - 1}-{2**64 - 1}"
    return sum([len(page) async for page in pages(redis, key, last=last)])


def _id(raw: bytes) -> tuple[int, int]:
    ms, seq = raw.split(b"-")
    return int(ms), int(seq)


@dataclass(frozen=True, kw_only=True, slots=True)
class StreamState:
    stream: str
    hot: int
    """Entries the stream holds."""
    oldest: str | None
    """Id of its oldest entry; None when empty."""


@dataclass(frozen=True, kw_only=True, slots=True)
class PartitionState:
    partition: int
    log: StreamState
    enriched: StreamState
    archived: Position | None
    """The furthest log entry of the partition the archive holds (None: unknown or none)."""


@dataclass(frozen=True, kw_only=True, slots=True)
class LogState:
    """What the log server holds now: per partition, and its memory."""

    memory_bytes: int
    partitions: list[PartitionState]


async def log_state(
    redis: aioredis.Redis, partitions: int, archived: Mapping[int, Position] | None = None
) -> LogState:
    """Hot entries and oldest id of every stream, and the server's ``used_memory``."""
    async with redis.pipeline(transaction=False) as pipe:
        for n in range(partitions):
            for key in (log_key(n), enriched_key(n)):
                pipe.xlen(key)
                pipe.xrange(key, count=1)
        replies = await pipe.execute()
    states = []
    for n in range(partitions):
        streams = []
        for i, key in enumerate((log_key(n), enriched_key(n))):
            hot, first = replies[4 * n + 2 * i], replies[4 * n + 2 * i + 1]
            oldest = first[0][0].decode() if first else None
            streams.append(StreamState(stream=key, hot=int(hot), oldest=oldest))
        states.append(
            PartitionState(
                partition=n,
                log=streams[0],
                enriched=streams[1],
                archived=(archived or {}).get(n),
            )
        )
    return LogState(memory_bytes=await used_memory(redis), partitions=states)


Round = Callable[[aioredis.Redis], Awaitable[object]]
"""More work of a retention round, after the trim (the purge of erased sessions)."""


async def trim_forever(
    redis: aioredis.Redis,
    settings: RuntimeSettings,
    *,
    holder: str,
    hooks: Middleware,
    stopping: asyncio.Event,
    archived: Callable[[], Awaitable[dict[int, Position]]] | None = None,
    each_round: Round | None = None,
    transient: tuple[type[BaseException], ...] = (),
) -> None:
    """A retention round every ``settings.trim_interval_s`` until ``stopping`` is set.

    Every worker runs this; a lock key lets one of them do a round's work: trim (unless
    retention is off), then ``each_round``. Each round ends by reporting the log's state to
    ``hooks`` (the worker's metrics).
    """
    window = settings.retain
    interval = settings.trim_interval_s
    log = logging.getLogger(f"{__name__}.trim_forever")
    while not stopping.is_set():
        # Jittered, so workers started together do not all ask for the lock at once.
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stopping.wait(), interval * random.uniform(0.8, 1.2))
            return
        try:
            if await redis.set(TRIM_LOCK_KEY, holder, nx=True, px=max(int(interval * 800), 1)):
                if window is not None:
                    done = await trim(redis, settings.partitions, window)
                    gone = sum(p.log.trimmed + p.enriched.trimmed for p in done)
                    if gone:
                        log.info("trimmed %d entries below the archive and the groups", gone)
                if each_round is not None:
                    await each_round(redis)
            hooks.after_trim(
                await log_state(redis, settings.partitions, await archived() if archived else None)
            )
        except transient as exc:
            raise_if_cancelled()
            log.warning("could not finish this round (%s: %s)", type(exc).__name__, exc)
