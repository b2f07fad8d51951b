"""The append API: validate, partition, append idempotently, optionally wait for fsync."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from types import TracebackType
from typing import Any, Self

import redis.asyncio as aioredis
from redis.asyncio.retry import Retry
from redis.backoff import ExponentialWithJitterBackoff
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import NoScriptError, RedisError, ResponseError
from redis.exceptions import TimeoutError as RedisTimeoutError

from logserver.client import connect, is_cluster
from logserver.nodes import NodeClients, Route, SlotMovedError, is_redirect
from producer.errors import (
    DurabilityError,
    LogUnavailableError,
    PartitionMismatchError,
    ProducerError,
)
from producer.script import APPEND_LUA, APPEND_SHA
from producer.settings import Durability, ProducerSettings
from schemas.codec import encode
from schemas.constants import (
    ENTRY_FIELD,
    LOG_FORMAT,
    META_FORMAT_FIELD,
    META_KEY,
    META_PARTITIONS_FIELD,
    dedup_key,
    log_key,
)
from schemas.events import Event, Message, MessageAppended, MessageRedacted, SessionErased
from schemas.partitioning import partition_for
from schemas.validation import validate_event


@dataclass(frozen=True, slots=True)
class AppendResult:
    stream_id: str
    """The entry's id in its partition stream; for a duplicate, the id of the first append."""
    partition: int
    duplicate: bool


@dataclass(frozen=True, slots=True)
class _Prepared:
    index: int
    partition: int
    dedup_key: str
    payload: bytes


def _retry(retries: int) -> Retry:
    return Retry(ExponentialWithJitterBackoff(base=0.05, cap=2.0), retries)


def connect_redis(url: str, *, retries: int = 8) -> aioredis.Redis:
    """A client that reconnects with jittered exponential backoff on connection errors."""
    return connect(
        url,
        retry=_retry(retries),
        retry_on_error=[RedisConnectionError, RedisTimeoutError],
        health_check_interval=30,
    )


class Producer:
    """Appends events to the partitioned log, once per ``(tenant, session, message id)``."""

    def __init__(self, client: aioredis.Redis, settings: ProducerSettings | None = None) -> None:
        self._client = client
        self.settings = settings or ProducerSettings()
        self._log = logging.getLogger(f"{__name__}.{type(self).__name__}")
        self._checked = False
        # On a cluster each partition's calls go to its master's own connection, so that
        # WAITAOF and WAIT there confirm them (logserver.nodes).
        self._nodes = (
            NodeClients(client, retry=_retry(1), retry_on_error=[RedisConnectionError])
            if is_cluster(client)
            else None
        )

    @classmethod
    def from_url(cls, url: str, settings: ProducerSettings | None = None) -> Self:
        settings = settings or ProducerSettings()
        return cls(connect_redis(url, retries=settings.reconnect_retries), settings)

    async def __aenter__(self) -> Self:
        await self.check_log()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()

    async def close(self) -> None:
        if self._nodes is not None:
            await self._nodes.close()
        await self._client.aclose()

    async def check_log(self) -> None:
        """Record the partition count on first use; refuse a log created with another one."""
        if self._checked:
            return
        wanted = self.settings.partitions
        try:
            async with self._client.pipeline(transaction=False) as pipe:
                pipe.hsetnx(META_KEY, META_PARTITIONS_FIELD, wanted)
                pipe.hsetnx(META_KEY, META_FORMAT_FIELD, LOG_FORMAT)
                pipe.hget(META_KEY, META_PARTITIONS_FIELD)
                *_, recorded = await pipe.execute()
        except (RedisConnectionError, RedisTimeoutError) as exc:
            raise LogUnavailableError(f"log server unreachable: {exc}") from exc
        if int(recorded) != wanted:
            raise PartitionMismatchError(
                f"the log has {int(recorded)} partitions but this producer is set to {wanted}"
                f" (AMEM_PARTITIONS); the partition count is fixed when the log is created"
            )
        self._checked = True

    async def append(
        self, message: Message, *, durability: Durability | None = None
    ) -> AppendResult:
        """Append one message; retries of the same id return the first append's stream id."""
        (result,) = await self.append_many((message,), durability=durability)
        return result

    async def append_many(
        self, messages: Iterable[Message], *, durability: Durability | None = None
    ) -> list[AppendResult]:
        """Append many messages in one pipelined round trip, results in input order.

        Every message is validated before anything is sent: one invalid message raises its
        :class:`~schemas.errors.ValidationError` and nothing is appended.
        """
        return await self.append_events(
            [MessageAppended(message=m) for m in messages], durability=durability
        )

    async def redact(
        self,
        tenant_id: str,
        session_id: str,
        message_id: str,
        *,
        reason: str | None = None,
        durability: Durability | None = None,
    ) -> AppendResult:
        """Append a ``message.redacted``: the message is forgotten everywhere (its copies
        before this point of the log), the rest of its session kept."""
        event = MessageRedacted(
            tenant_id=tenant_id, session_id=session_id, message_id=message_id, reason=reason
        )
        (result,) = await self.append_events([event], durability=durability)
        return result

    async def append_events(
        self, events: Sequence[Event], *, durability: Durability | None = None
    ) -> list[AppendResult]:
        """Append any events (``session.erased`` and ``message.redacted`` included),
        deduplicated per event kind."""
        limits = self.settings.limits
        for event in events:
            validate_event(event, limits)
        if not events:
            return []
        await self.check_log()
        prepared = [self._prepare(i, event) for i, event in enumerate(events)]
        replies = await self._send(prepared, durability or self.settings.durability)
        return self._results(prepared, replies)

    def _prepare(self, index: int, event: Event) -> _Prepared:
        partition = partition_for(event.tenant_id, event.session_id, self.settings.partitions)
        if isinstance(event, MessageAppended):
            kind, ident = "msg", event.message.id
        elif isinstance(event, SessionErased):
            kind, ident = "erase", event.event_id
        else:
            kind, ident = "redact", event.event_id
        key = dedup_key(partition, kind, event.tenant_id, event.session_id, ident)
        return _Prepared(index, partition, key, encode(event))

    def _calls(self, prepared: list[_Prepared]) -> list[list[_Prepared]]:
        """Group by partition (one script call touches one slot), in chunks of bounded size."""
        by_partition: dict[int, list[_Prepared]] = defaultdict(list)
        for item in prepared:
            by_partition[item.partition].append(item)
        size = self.settings.script_batch
        return [
            group[start : start + size]
            for group in by_partition.values()
            for start in range(0, len(group), size)
        ]

    async def _send(
        self, prepared: list[_Prepared], durability: Durability
    ) -> list[tuple[list[_Prepared], Any]]:
        calls = self._calls(prepared)
        if self._nodes is None:
            return await self._send_to(self._client, calls, durability, replicas=0)
        return await self._send_on_cluster(
            calls, durability, time.monotonic() + self.settings.failover_wait_s
        )

    async def _send_on_cluster(
        self, calls: list[list[_Prepared]], durability: Durability, deadline: float
    ) -> list[tuple[list[_Prepared], Any]]:
        """Send each master's calls down its own connection, all masters at once; a master's
        calls that fail for a failover or a moved slot are grouped and sent again (resending
        is safe: the script appends each event once)."""
        nodes = self._nodes
        assert nodes is not None
        delay = 0.05
        while True:
            try:
                by_master: dict[str, tuple[Route, list[list[_Prepared]]]] = {}
                for call in calls:
                    route = nodes.route(log_key(call[0].partition))
                    by_master.setdefault(route.node, (route, []))[1].append(call)
                if len(by_master) > 1:
                    sent = await asyncio.gather(
                        *(self._send_on_cluster(group, durability, deadline)
                          for _, group in by_master.values())
                    )  # fmt: skip
                    return [pair for replies in sent for pair in replies]
                ((route, _),) = by_master.values()
                return await self._send_to(
                    route.client, calls, durability, replicas=min(route.replicas, 1)
                )
            except (LogUnavailableError, SlotMovedError) as exc:
                if time.monotonic() > deadline:
                    raise LogUnavailableError(
                        f"partition {calls[0][0].partition} still unserved after"
                        f" {self.settings.failover_wait_s} s: {exc}"
                    ) from exc
                self._log.info("%s; resending after a topology refresh", exc)
            await asyncio.sleep(delay)
            delay = min(delay * 2, 1.0)
            with contextlib.suppress(RedisError):
                await nodes.refresh()

    async def _send_to(
        self,
        client: aioredis.Redis,
        calls: list[list[_Prepared]],
        durability: Durability,
        *,
        replicas: int,
    ) -> list[tuple[list[_Prepared], Any]]:
        ttl = self.settings.dedup_window_s
        timeout_ms = self.settings.fsync_timeout_ms
        commands: list[tuple[Any, ...]] = []
        for call in calls:
            keys = [log_key(call[0].partition), *(item.dedup_key for item in call)]
            args = [ttl, ENTRY_FIELD, *(item.payload for item in call)]
            commands.append(("EVALSHA", APPEND_SHA, len(keys), *keys, *args))
        if durability == "fsync":
            commands.append(("WAITAOF", 1, 0, timeout_ms))
            if replicas:
                commands.append(("WAIT", replicas, timeout_ms))
        try:
            try:
                replies = await self._execute(client, commands)
            except NoScriptError:
                # First use on this server (or after a restart without the script cache):
                # load and resend; resending is safe because the script is idempotent.
                await client.script_load(APPEND_LUA)
                replies = await self._execute(client, commands)
        except (RedisConnectionError, RedisTimeoutError) as exc:
            raise LogUnavailableError(f"log server unreachable after retries: {exc}") from exc
        except ResponseError as exc:
            if is_redirect(exc):
                raise SlotMovedError(str(exc)) from exc
            if durability == "fsync" and "WAITAOF" in str(exc).upper():
                raise DurabilityError(f"the log server cannot confirm fsync: {exc}") from exc
            raise ProducerError(f"the log server refused the append: {exc}") from exc
        except RedisError as exc:
            raise ProducerError(f"append failed: {exc}") from exc
        if durability == "fsync":
            confirmed = int(replies.pop()) if replicas else replicas
            local, _replicas = replies.pop()
            if int(local) < 1:
                raise DurabilityError(
                    f"the log server did not confirm fsync within {timeout_ms}"
                    " ms (is appendonly on?); retrying the same messages is safe"
                )
            if confirmed < replicas:
                raise DurabilityError(
                    f"no replica confirmed the append within {timeout_ms} ms; retrying the"
                    " same messages is safe"
                )
        return list(zip(calls, replies, strict=True))

    @staticmethod
    async def _execute(client: aioredis.Redis, commands: list[tuple[Any, ...]]) -> list[Any]:
        if len(commands) == 1:
            # A lone command skips the pipeline's bookkeeping: this is the latency path.
            return [await client.execute_command(*commands[0])]  # type: ignore[no-untyped-call]
        async with client.pipeline(transaction=False) as pipe:
            for command in commands:
                pipe.execute_command(*command)
            return await pipe.execute()

    @staticmethod
    def _results(
        prepared: list[_Prepared], replies: list[tuple[list[_Prepared], Any]]
    ) -> list[AppendResult]:
        results: list[AppendResult | None] = [None] * len(prepared)
        for call, reply in replies:
            for n, item in enumerate(call):
                added, stream_id = reply[2 * n], reply[2 * n + 1]
                results[item.index] = AppendResult(
                    stream_id=stream_id.decode(), partition=item.partition, duplicate=not added
                )
        return [r for r in results if r is not None]
