"""One process's handle on Atomic Memory, for the agent-facing surfaces to share.

:class:`Memory` holds the producer and the rehydrator of the configured stack open and
offers what agents ask of memory: remember (append), recall (rehydrate), read, list
sessions and forget (erase a session or redact a message). The MCP server, the OpenAI
Agents SDK session and the LangChain history are thin layers over it.

Its clients belong to the event loop it was opened on. A call from another loop or from a
thread without one (LangChain's synchronous ``invoke``) is carried to that loop:
:meth:`Memory.in_thread` opens a memory on a loop of its own for synchronous programs.
"""

from __future__ import annotations

import asyncio
import dataclasses
import hashlib
import threading
import uuid
from collections import OrderedDict
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator, Sequence
from contextlib import AsyncExitStack, asynccontextmanager, contextmanager
from datetime import UTC, datetime
from typing import TypeVar

import orjson

from producer import AppendResult, Producer
from projectors.store import SessionSummary, StoredMessage
from rehydrator.context import Context
from rehydrator.rehydrate import Rehydrator, ScopeName
from schemas.errors import AmemError, ConfigurationError
from schemas.events import Message
from stack.erasing import EraseReport, erase_sessions, redact_message
from stack.rehydration import open_rehydrator
from stack.settings import Settings

T = TypeVar("T")

READ_DEADLINE_MS = 2000
"""Reads of a whole history or of a tenant's sessions are not latency-bound contexts: they
get time to be whole (as the HTTP API's ``GET …/messages``)."""
ALL = 1 << 62
"""``read(limit=None)``: a limit no session reaches."""
FAILED_KEPT = 1024
"""Calls of :meth:`Memory.remember_fresh` that raised, remembered for their retry."""


class ErasePendingError(AmemError):
    """An erase (redaction) waited for is in the log, but not yet applied everywhere in
    time; it goes on. :attr:`report` names what is left."""

    def __init__(self, report: EraseReport) -> None:
        self.report = report
        left = "; ".join(f"{place}: {', '.join(what)}" for place, what in report.left.items())
        super().__init__(f"the erase is in the log but not applied everywhere in time ({left})")


class Memory:
    """The log and the projections of one stack, open for remember, recall, read and forget.

    Every method takes the tenant explicitly: the surfaces decide it (an API key, a command
    line option, a constructor argument), never the caller's input.
    """

    def __init__(
        self,
        *,
        settings: Settings,
        producer: Producer,
        rehydrator: Rehydrator,
        loop: asyncio.AbstractEventLoop,
    ) -> None:
        self.settings = settings
        self._producer = producer
        self._rehydrator = rehydrator
        self._loop = loop
        self._failed: OrderedDict[str, str] = OrderedDict()

    @classmethod
    @asynccontextmanager
    async def open(cls, settings: Settings | None = None) -> AsyncIterator[Memory]:
        """The memory of the stack ``settings`` names (default: from the environment,
        ``AMEM_HOME`` and the service URLs), closed on exit."""
        settings = settings or Settings.from_env()
        async with AsyncExitStack() as stack:
            producer = await stack.enter_async_context(
                Producer.from_url(settings.require_redis(), settings.producer)
            )
            rehydrator = await stack.enter_async_context(open_rehydrator(settings))
            yield cls(
                settings=settings,
                producer=producer,
                rehydrator=rehydrator,
                loop=asyncio.get_running_loop(),
            )

    @classmethod
    @contextmanager
    def in_thread(cls, settings: Settings | None = None) -> Iterator[Memory]:
        """A memory on an event loop of its own, in a background thread: for synchronous
        programs (its methods are still coroutines; :meth:`blocking` runs one)."""
        loop = asyncio.new_event_loop()
        thread = threading.Thread(target=loop.run_forever, name="amem-memory", daemon=True)
        thread.start()
        opened = cls.open(settings)
        try:
            memory = asyncio.run_coroutine_threadsafe(opened.__aenter__(), loop).result()
            try:
                yield memory
            finally:
                asyncio.run_coroutine_threadsafe(opened.__aexit__(None, None, None), loop).result()
        finally:
            loop.call_soon_threadsafe(loop.stop)
            thread.join()
            loop.close()

    def blocking(self, call: Callable[[], Awaitable[T]]) -> T:
        """Run ``call()`` to its end from synchronous code, on the memory's loop.

        Refused on the memory's own loop, which it would block forever: use the async
        variant there, or a memory opened with :meth:`in_thread`.
        """
        if _running_loop() is self._loop:
            raise ConfigurationError(
                "a synchronous call on the event loop the memory was opened on would block it:"
                " await the async variant, or open the memory with Memory.in_thread()"
            )
        return asyncio.run_coroutine_threadsafe(_awaited(call), self._loop).result()

    async def _on_loop(self, call: Callable[[], Awaitable[T]]) -> T:
        if _running_loop() is self._loop:
            return await call()
        return await asyncio.wrap_future(
            asyncio.run_coroutine_threadsafe(_awaited(call), self._loop)
        )

    async def remember(self, messages: Sequence[Message]) -> list[AppendResult]:
        """Append the messages, all or nothing, once per message id (a retry appends
        nothing twice); acknowledged means in the log, readable at once."""
        return await self._on_loop(lambda: self._producer.append_many(messages))

    async def remember_fresh(self, messages: Sequence[Message]) -> list[AppendResult]:
        """Append messages under ids made here (``<batch>-<n>``, whatever ids they carry):
        for frameworks whose items have no id of their own.

        Retrying a call that raised, with equal messages, reuses its ids, so whatever the
        failed attempt appended is not appended twice; equal messages in a later call that
        did not follow a failure are new messages (a user may say "yes" twice).
        """
        digest = hashlib.sha256(
            orjson.dumps(
                [dataclasses.replace(m, id="", created_at=_EPOCH) for m in messages],
                option=orjson.OPT_SORT_KEYS,
            )
        ).hexdigest()
        batch = self._failed.pop(digest, None) or uuid.uuid4().hex
        named = [dataclasses.replace(m, id=f"{batch}-{i}") for i, m in enumerate(messages)]
        try:
            return await self.remember(named)
        except BaseException:
            self._failed[digest] = batch
            while len(self._failed) > FAILED_KEPT:
                self._failed.popitem(last=False)
            raise

    async def recall(
        self,
        tenant_id: str,
        session_id: str,
        *,
        query: str | None = None,
        budget_tokens: int = 2000,
        scope: ScopeName = "session",
        user_id: str | None = None,
    ) -> Context:
        """The context to resume the session with, packed to ``budget_tokens``."""
        return await self._on_loop(
            lambda: self._rehydrator.rehydrate(
                tenant_id, session_id, query, budget_tokens, scope=scope, user_id=user_id
            )
        )

    async def read(
        self, tenant_id: str, session_id: str, *, limit: int | None = None
    ) -> list[StoredMessage]:
        """The session's last ``limit`` messages (None: all) in log order, those not
        projected yet included."""
        return await self._on_loop(
            lambda: self._rehydrator.history(
                tenant_id,
                session_id,
                limit=ALL if limit is None else limit,
                deadline_ms=READ_DEADLINE_MS,
            )
        )

    async def sessions(self, tenant_id: str, *, limit: int = 100) -> list[SessionSummary]:
        """The tenant's sessions with a message, the latest active first."""
        return await self._on_loop(
            lambda: self._rehydrator.sessions(tenant_id, limit=limit, deadline_ms=READ_DEADLINE_MS)
        )

    async def forget(
        self,
        tenant_id: str,
        session_id: str,
        *,
        message_id: str | None = None,
        reason: str | None = None,
        wait_s: float | None = None,
    ) -> EraseReport:
        """Erase the session, or redact one message of it: in the log at once (reads hide
        it), deleted from every store by the projectors. With ``wait_s``, wait that long
        for every store and the log server to be purged, else raise
        :class:`ErasePendingError`."""

        async def erase() -> EraseReport:
            if message_id is None:
                return await erase_sessions(
                    self.settings,
                    tenant_id,
                    [session_id],
                    reason=reason,
                    wait_s=wait_s,
                    producer=self._producer,
                )
            return await redact_message(
                self.settings,
                tenant_id,
                session_id,
                message_id,
                reason=reason,
                wait_s=wait_s,
                producer=self._producer,
            )

        report = await self._on_loop(erase)
        if report.waited and not report.done:
            raise ErasePendingError(report)
        return report


_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


def _running_loop() -> asyncio.AbstractEventLoop | None:
    try:
        return asyncio.get_running_loop()
    except RuntimeError:
        return None


async def _awaited(call: Callable[[], Awaitable[T]]) -> T:
    return await call()
