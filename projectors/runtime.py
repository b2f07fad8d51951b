"""The worker: FastStream Redis stream subscribers plus what FastStream leaves to us.

Per projector and partition, one FastStream batch subscriber reads new entries through the
projector's consumer group, and a reclaim loop claims entries idle past a bound (their
consumer died) with ``XAUTOCLAIM``, a batch at a time (FastStream's own reclaiming
subscriber claims one entry per call, far too slow to drain what a killed worker held).
On top of that, this module adds what FastStream does not do for Redis streams: decoding
with dead-lettering, in-place retry while a store is down, isolation of a failing entry,
and dead-lettering after ``max_deliveries``.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import secrets
import socket
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from functools import partial
from typing import Any, cast

import orjson
import redis.asyncio as aioredis
from faststream import AckPolicy, FastStream
from faststream.redis import StreamSub
from faststream.redis.annotations import RedisBatchStreamMessage
from faststream.redis.parser import MessageFormat
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import ResponseError
from redis.exceptions import TimeoutError as RedisTimeoutError

from logserver import broker, connect
from projectors.deadletter import Refused, dead_letter, error_field
from projectors.errors import StoreUnavailableError
from projectors.generations import follow_rebuilds
from projectors.hooks import Hooks, Middleware
from projectors.lag import group_state
from projectors.projector import Entry, Projector, StoreProjector
from projectors.retention import Round, trim_forever
from projectors.settings import RuntimeSettings
from projectors.store import Projection
from projectors.tasks import raise_if_cancelled
from schemas.constants import ARCHIVE, backfill_key, digest_request_key, errors_key
from schemas.errors import ValidationError

LOG_SERVER_ERRORS: tuple[type[BaseException], ...] = (RedisConnectionError, RedisTimeoutError)


Backfill = Callable[[StoreProjector, int, aioredis.Redis], Awaitable[int]]
"""Applies to the projector's store what the archive holds of a partition; the count."""

Rebuild = Callable[
    [StoreProjector, aioredis.Redis, Projection, Callable[[int], Awaitable[None]]], Awaitable[int]
]
"""Applies to a new generation's store of the projector everything appended so far (each
stream, then the archive), telling the callback each count applied; the count."""


def consumer_name() -> str:
    """Unique per process, and says which host and pid a pending entry belongs to."""
    return f"{socket.gethostname()}-{os.getpid()}-{secrets.token_hex(3)}"


class OpaqueEntries(MessageFormat):
    """Leaves entries to the projector, which decodes them and dead-letters the bad ones.

    FastStream's own formats would parse each entry first, and fail on binary fields (the
    enriched stream's vectors) or on a poison entry before our handler could see it.
    """

    @classmethod
    async def encode(cls, **_: Any) -> bytes:
        raise NotImplementedError("projector subscribers only read")

    @classmethod
    def parse(cls, data: bytes) -> tuple[bytes, dict[str, Any]]:
        return b"", {}


async def _undecoded(msg: Any, original: Any = None) -> None:
    return None


class Worker:
    def __init__(
        self,
        *,
        redis_url: str,
        projectors: Sequence[Projector],
        settings: RuntimeSettings,
        middleware: Sequence[Middleware] = (),
        consumer: str | None = None,
        each_round: Round | None = None,
        backfill: Backfill | None = None,
        rebuild: Rebuild | None = None,
    ) -> None:
        """``each_round``: more work of each retention round, after the trim (stack.workers
        passes the purge of erased sessions). ``backfill``: how a new group on a
        trimmed stream gets what left it (stack.workers passes the archive's replay).
        ``rebuild``: how a new generation of a projection is filled, for the projectors that
        follow generations (without it, this worker builds none)."""
        self.settings = settings
        self.projectors = list(projectors)
        self.hooks = Hooks(middleware)
        self.consumer = consumer or consumer_name()
        self._redis_url = redis_url
        self._each_round = each_round
        self._backfill_from_archive = backfill
        self._rebuild = rebuild
        self._redis: aioredis.Redis | None = None
        self._stopping = asyncio.Event()
        self._tasks: list[asyncio.Task[None]] = []
        self._reclaimers: list[asyncio.Task[None]] = []
        self._log = logging.getLogger(f"{__name__}.{type(self).__name__}")
        self.broker = broker(
            redis_url,
            graceful_timeout=settings.graceful_timeout_s,
            log_level=logging.DEBUG,  # one line per batch is noise at INFO
        )
        for projector in self.projectors:
            for partition in range(settings.partitions):
                self._subscribe(projector, partition)
            if isinstance(projector, StoreProjector):
                self._serve_digests(projector)
        self.app = FastStream(
            self.broker,
            on_startup=[self._on_startup],
            after_startup=[self._after_startup],
            on_shutdown=[self._on_shutdown],
            after_shutdown=[self._after_shutdown],
        )

    @property
    def redis(self) -> aioredis.Redis:
        assert self._redis is not None, "the worker has not started"
        return self._redis

    # -- lifecycle ---------------------------------------------------------------------

    async def _on_startup(self) -> None:
        self._redis = connect(self._redis_url)
        for projector in self.projectors:
            for partition in range(self.settings.partitions):
                await self._until_log_answers(partial(self._create_group, projector, partition))
            await self._until_log_answers(partial(projector.attach, self.redis, self.consumer))
            await self._with_retry(projector, "start", projector.start)
            for partition in range(self.settings.partitions):
                await self._with_retry(
                    projector, "replay the archive", partial(self._backfill, projector, partition)
                )

    async def _create_group(self, projector: Projector, partition: int) -> None:
        # Groups start at 0, never "$": a new projector must see all history. FastStream
        # would create missing groups at "$", so they must exist before it starts.
        stream = projector.source_key(partition)
        try:
            await self.redis.xgroup_create(stream, projector.group, id="0", mkstream=True)
        except ResponseError as exc:
            if "BUSYGROUP" not in str(exc):
                raise
            return
        info = await self.redis.xinfo_stream(stream)
        if info.get("entries-added", 0) > info["length"]:
            # A new group on a stream entries have left sees only what is left: the rest
            # comes from the archive (_backfill). The group, at 0, pins the trim meanwhile;
            # the key says a backfill is due until one has finished.
            await self.redis.set(backfill_key(partition, projector.name), stream)

    async def _backfill(self, projector: Projector, partition: int) -> None:
        """Replay the archive into a new group's store, if its stream had been trimmed."""
        key = backfill_key(partition, projector.name)
        if not await self.redis.exists(key):
            return
        if self._backfill_from_archive is None or not isinstance(projector, StoreProjector):
            self._log.warning(
                "%s starts on a trimmed partition %d and cannot replay the archive here: run "
                "`amem project rebuild %s`",
                projector.name,
                partition,
                projector.name,
            )
            await self.redis.delete(key)
            return
        applied = await self._backfill_from_archive(projector, partition, self.redis)
        await self.redis.delete(key)
        self._log.info(
            "%s: replayed %d archived events of partition %d", projector.name, applied, partition
        )

    async def _with_retry(
        self, projector: Projector, what: str, call: Callable[[], Awaitable[object]]
    ) -> None:
        """``call`` until it succeeds, backing off while the store or the log is away."""
        transient = _transient(projector)
        delay = self.settings.retry_initial_s
        while True:
            try:
                await call()
                return
            except transient as exc:
                self._log.warning("%s could not %s (%s); retrying", projector.name, what, exc)
                await asyncio.sleep(delay)
                delay = min(delay * 2, self.settings.retry_max_s)

    async def _after_startup(self) -> None:
        self.hooks.after_startup()
        self._tasks.append(asyncio.create_task(self._watch_lag()))
        if self.settings.trim_interval_s > 0:
            archive = next((p for p in self.projectors if p.name == ARCHIVE), None)
            self._tasks.append(
                asyncio.create_task(
                    trim_forever(
                        self.redis,
                        self.settings,
                        holder=self.consumer,
                        hooks=self.hooks,
                        stopping=self._stopping,
                        archived=archive.store.positions
                        if isinstance(archive, StoreProjector)
                        else None,
                        each_round=self._each_round,
                        transient=LOG_SERVER_ERRORS,
                    )
                )
            )
        rebuild = self._rebuild
        for p in self.projectors:
            if isinstance(p, StoreProjector) and p.generations is not None and rebuild:
                self._tasks.append(
                    asyncio.create_task(
                        follow_rebuilds(
                            self.redis,
                            p.generations,
                            group=p.group,
                            streams=[p.source_key(n) for n in range(self.settings.partitions)],
                            replay=partial(rebuild, p, self.redis),
                            holder=self.consumer,
                            stopping=self._stopping,
                            policy=self.settings.rebuild,
                        )
                    )
                )
        self._reclaimers = [
            asyncio.create_task(self._reclaim_loop(p, n))
            for p in self.projectors
            for n in range(self.settings.partitions)
        ]
        self._log.info(
            "consumer %s runs %s on %d partitions",
            self.consumer,
            ", ".join(p.name for p in self.projectors),
            self.settings.partitions,
        )

    async def _on_shutdown(self) -> None:
        # Batches being applied finish (FastStream waits graceful_timeout); batches waiting
        # for a store stop waiting and stay pending for whoever runs next.
        self._stopping.set()
        if self._reclaimers:
            await asyncio.wait(self._reclaimers, timeout=self.settings.graceful_timeout_s)

    async def _after_shutdown(self) -> None:
        self.hooks.after_shutdown()
        loops = (*self._tasks, *self._reclaimers)
        for task in loops:
            task.cancel()
        if loops:
            await asyncio.wait(loops, timeout=self.settings.graceful_timeout_s)
        try:
            async with asyncio.timeout(self.settings.graceful_timeout_s):
                if self._redis is not None:
                    await self._drain_own_pending()
                for projector in self.projectors:
                    if isinstance(projector, StoreProjector) and projector.generations:
                        with contextlib.suppress(*LOG_SERVER_ERRORS):
                            await projector.generations.forget(self.redis)
                    await projector.close()
        except TimeoutError:  # what is left pending is reclaimed by the next worker
            self._log.warning(
                "shutdown took over %ss; exiting anyway", self.settings.graceful_timeout_s
            )
        if self._redis is not None:
            await self._redis.aclose()

    async def _drain_own_pending(self) -> None:
        """Apply what this consumer read but never handled, before exiting.

        A stopping FastStream subscriber drops the entries of a read that returns after the
        stop began; they sit in this consumer's pending list. Handling them here means a
        SIGTERM leaves nothing for a reclaim to wait for (unless a store is down).
        """
        for projector in self.projectors:
            for partition in range(self.settings.partitions):
                stream = projector.source_key(partition)
                try:
                    mine = await self.redis.xpending_range(
                        stream,
                        projector.group,
                        min="-",
                        max="+",
                        count=10_000,
                        consumername=self.consumer,
                    )
                    if not mine:
                        continue
                    ids = [cast(bytes, p["message_id"]) for p in mine]
                    claimed = cast(
                        list[tuple[bytes, dict[bytes, bytes] | None]],
                        await self.redis.xclaim(
                            stream,
                            projector.group,
                            self.consumer,
                            min_idle_time=0,
                            message_ids=list(ids),
                        ),
                    )
                except LOG_SERVER_ERRORS:
                    return  # the log server is gone: a reclaim will find them
                entries = [(i, f) for i, f in claimed if f is not None]
                if entries:
                    await self._consume(
                        projector,
                        partition,
                        stream,
                        [i for i, _ in entries],
                        [f for _, f in entries],
                    )

    async def _watch_lag(self) -> None:
        # Ends on the stop flag, not on cancellation alone: redis-py can turn a cancelled
        # command into a ConnectionError, which the loop would take for an outage.
        while not self._stopping.is_set():
            for p in self.projectors:
                for n in range(self.settings.partitions):
                    try:
                        state = await group_state(self.redis, p.name, n, enriched=p.reads_enriched)
                    except LOG_SERVER_ERRORS:
                        raise_if_cancelled()
                        continue
                    self.hooks.on_lag(p.name, n, state.lag or 0, state.pending)
            await asyncio.sleep(self.settings.lag_interval_s)

    # -- subscribers -------------------------------------------------------------------

    def _subscribe(self, projector: Projector, partition: int) -> None:
        stream = projector.source_key(partition)
        settings = self.settings

        async def on_batch(msg: RedisBatchStreamMessage) -> None:
            raw = msg.raw_message
            await self._consume(projector, partition, stream, raw["message_ids"], raw["data"])

        read = self.broker.subscriber(
            stream=StreamSub(
                stream,
                group=projector.group,
                consumer=self.consumer,
                batch=True,
                max_records=settings.batch_size,
                polling_interval=settings.max_wait_ms,
            ),
            ack_policy=AckPolicy.MANUAL,
            decoder=_undecoded,
            message_format=OpaqueEntries,
            title=f"{projector.name}:{stream}",
        )
        read(on_batch)

    def _serve_digests(self, projector: StoreProjector) -> None:
        async def on_request(body: dict[str, Any]) -> bytes:
            store = await projector.live_store(self.redis)
            digest = await store.digest(body.get("tenant_id"))
            return orjson.dumps([[t, s, ids] for (t, s), ids in digest.items()])

        self.broker.subscriber(
            list=digest_request_key(projector.name), title=f"{projector.name}:digest"
        )(on_request)

    async def _consume(
        self,
        projector: Projector,
        partition: int,
        stream: str,
        ids: Sequence[bytes],
        data: Sequence[Mapping[bytes, bytes]],
        *,
        reclaimed: bool = False,
    ) -> None:
        batch: list[Entry] = []
        refused: list[Refused] = []
        for entry_id, fields in zip(ids, data, strict=True):
            try:
                batch.append(
                    (entry_id, projector.decode(partition, entry_id, fields, self.settings.limits))
                )
            except ValidationError as exc:
                refused.append(Refused(entry_id, fields, str(exc)))
        if refused:
            await self._dead_letter(projector, stream, refused)
        if batch:
            await self._apply(projector, stream, batch, reclaimed=reclaimed)

    async def _dead_letter(
        self, projector: Projector, stream: str, refused: Sequence[Refused], deliveries: int = 1
    ) -> None:
        await self._until_log_answers(
            lambda: dead_letter(self.redis, projector.name, stream, refused, deliveries=deliveries)
        )
        self.hooks.after_dead_letter(projector.name, len(refused))
        for item in refused:
            self._log.warning(
                "%s: dead-lettered %s %s: %s",
                projector.name,
                stream,
                item.entry_id.decode(),
                item.reason,
            )

    async def _until_log_answers(self, call: Callable[[], Awaitable[object]]) -> None:
        delay = self.settings.retry_initial_s
        while True:
            try:
                await call()
                return
            except LOG_SERVER_ERRORS as exc:
                if self._stopping.is_set():
                    raise
                self._log.warning(
                    "log server unavailable (%s: %s); retrying in %.1fs",
                    type(exc).__name__,
                    exc,
                    delay,
                )
                await asyncio.sleep(delay)
                delay = min(delay * 2, self.settings.retry_max_s)

    async def _apply(
        self, projector: Projector, stream: str, batch: Sequence[Entry], *, reclaimed: bool
    ) -> None:
        transient = _transient(projector)
        delay = self.settings.retry_initial_s
        while True:
            started = time.perf_counter()
            try:
                await projector.apply(self.redis, stream, batch)
            except transient as exc:
                self.hooks.after_retry(projector.name, exc)
                if self._stopping.is_set():
                    return  # left pending: reclaimed by whoever runs next
                self._log.warning(
                    "%s: store unavailable (%s: %s); retrying %d entries in %.1fs",
                    projector.name,
                    type(exc).__name__,
                    exc,
                    len(batch),
                    delay,
                )
                await asyncio.sleep(delay)
                delay = min(delay * 2, self.settings.retry_max_s)
                continue
            except Exception as exc:
                await self._isolate(projector, stream, batch, exc, reclaimed=reclaimed)
                return
            self.hooks.after_apply(projector.name, len(batch), time.perf_counter() - started)
            if reclaimed:
                fields = [error_field(stream, entry_id) for entry_id, _ in batch]
                await self.redis.hdel(errors_key(projector.name), *fields)
            return

    async def _isolate(
        self,
        projector: Projector,
        stream: str,
        batch: Sequence[Entry],
        exc: Exception,
        *,
        reclaimed: bool,
    ) -> None:
        """Find the entries the store refuses; the others are applied and acknowledged."""
        if len(batch) > 1:
            for entry in batch:
                await self._apply(projector, stream, [entry], reclaimed=reclaimed)
            return
        entry_id = batch[0][0]
        error = f"{type(exc).__name__}: {exc}"
        self._log.error("%s: %s %s refused: %s", projector.name, stream, entry_id.decode(), error)
        # Left pending: the reclaimer retries it and dead-letters it after max_deliveries.
        await self.redis.hset(errors_key(projector.name), error_field(stream, entry_id), error)

    async def _reclaim_loop(self, projector: Projector, partition: int) -> None:
        stream = projector.source_key(partition)
        start: bytes | str = "0-0"
        while not self._stopping.is_set():
            try:
                next_start, claimed, *_ = await self.redis.xautoclaim(
                    stream,
                    projector.group,
                    self.consumer,
                    min_idle_time=self.settings.reclaim_idle_ms,
                    start_id=start,
                    count=self.settings.batch_size,
                )
                start = next_start
                if claimed:
                    ids = [entry_id for entry_id, _ in claimed]
                    data = [fields for _, fields in claimed]
                    await self._reclaimed(projector, partition, stream, ids, data)
            except LOG_SERVER_ERRORS as exc:
                raise_if_cancelled()
                self._log.warning("%s: reclaim paused, log server: %s", projector.name, exc)
                start = "0-0"
            if start in (b"0-0", "0-0"):  # a full pass found nothing more: wait
                await asyncio.sleep(self.settings.reclaim_poll_ms / 1000)

    async def _reclaimed(
        self,
        projector: Projector,
        partition: int,
        stream: str,
        ids: Sequence[bytes],
        data: Sequence[Mapping[bytes, bytes]],
    ) -> None:
        async with self.redis.pipeline(transaction=False) as pipe:
            for entry_id in ids:
                pipe.xpending_range(stream, projector.group, min=entry_id, max=entry_id, count=1)
            pending = await pipe.execute()
        fields = [error_field(stream, entry_id) for entry_id in ids]
        errors = cast(
            list[bytes | None], await self.redis.hmget(errors_key(projector.name), fields)
        )
        retry_ids, retry_data, refused = [], [], []
        for entry_id, entry, info, error in zip(ids, data, pending, errors, strict=True):
            deliveries = int(info[0]["times_delivered"]) if info else 1
            # Only entries the store refused are dead-lettered: an entry whose consumer died
            # or whose store was down is retried however often it is delivered.
            if error is not None and deliveries >= self.settings.max_deliveries:
                reason = f"refused on {deliveries} deliveries; last error: {error.decode()}"
                refused.append((Refused(entry_id, entry, reason), deliveries))
            else:
                retry_ids.append(entry_id)
                retry_data.append(entry)
        for item, deliveries in refused:
            await self._dead_letter(projector, stream, [item], deliveries)
        if retry_ids:
            await self._consume(projector, partition, stream, retry_ids, retry_data, reclaimed=True)


def _transient(projector: Projector) -> tuple[type[BaseException], ...]:
    """Errors meaning "the store or the log server is away": retried in place, never refused."""
    return (*projector.transient_errors, *LOG_SERVER_ERRORS, StoreUnavailableError)
