"""``rehydrate``: a session's context from every tier at once, packed to a token budget.

Reads, all concurrent and each bounded by the call's deadline:

- ``log``: every projector's watermark and the session's messages past the history store's
  watermark (read-your-writes);
- ``recent``: the last turns, from the history store or else from the log (hedged);
- ``outline``: the session's turns in log order (ids, speakers, positions) for fusion;
- ``dense``: the query's embedding against the vector stores (hedged: first good answer);
- ``lexical``: BM25 full-text hits from the history store;
- ``session``: the session document (participants, span, size) for the header;

then ``graph`` (neighbours of the best hits) and ``messages`` (the texts of the ranked
turns) while packing. A tier that fails or misses the deadline is reported as degraded and
left out; the recent window and the log tail are always tried first.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import replace
from typing import TypeVar

import redis.asyncio as aioredis

from projectors.position import Position
from projectors.store import (
    GraphStore,
    HistoryStore,
    Hit,
    ProjectionStore,
    SessionSummary,
    StoredMessage,
    Turn,
    VectorStore,
)
from rehydrator import log_tail
from rehydrator.call import Call, Pool
from rehydrator.context import Context, QuerySource
from rehydrator.deadlines import hedged, within
from rehydrator.errors import HistoryUnavailableError
from rehydrator.fusion import FusionWeights, fuse
from rehydrator.packing import pack
from rehydrator.query_embedding import QueryEmbedder
from rehydrator.settings import RehydrateSettings
from rehydrator.tokens import TokenCounter
from schemas.partitioning import partition_for
from schemas.validation import validate_id

T = TypeVar("T")

MAX_BUDGET = 1_000_000
GRAPH_SEEDS = 5
"""Best-ranked turns whose graph neighbourhood is read."""


class Rehydrator:
    """Holds the open stores and models; one instance serves any number of calls at once."""

    def __init__(
        self,
        *,
        redis: aioredis.Redis,
        partitions: int,
        projectors: Sequence[str],
        reads_enriched: Callable[[str], bool],
        history: HistoryStore | None,
        vectors: Sequence[VectorStore],
        graph: GraphStore | None,
        sessions: ProjectionStore | None,
        embedder: QueryEmbedder | None,
        counter: TokenCounter,
        settings: RehydrateSettings | None = None,
        weights: FusionWeights | None = None,
    ) -> None:
        self._redis = redis
        self._partitions = partitions
        self._projectors = tuple(projectors)
        self._reads_enriched = reads_enriched
        self._history = history
        self._vectors = tuple(vectors)
        self._graph = graph
        self._sessions = sessions
        self._embedder = embedder
        self._counter = counter
        self.settings = settings or RehydrateSettings()
        self._weights = weights or FusionWeights()
        self._turns = asyncio.Semaphore(self.settings.concurrency)
        self._log = logging.getLogger(f"{__name__}.{type(self).__name__}")

    async def rehydrate(
        self,
        tenant_id: str,
        session_id: str,
        query: str | None = None,
        budget_tokens: int = 2000,
        *,
        deadline_ms: int | None = None,
        recent_turns: int | None = None,
    ) -> Context:
        """The context to resume ``session_id`` with, within ``budget_tokens``.

        ``query`` defaults to the session's latest user turn. Raises ``ValidationError`` on
        bad ids and ``ValueError`` on a bad budget; a failing tier never raises.
        """
        validate_id("tenant_id", tenant_id)
        validate_id("session_id", session_id)
        if not 1 <= budget_tokens <= MAX_BUDGET:
            raise ValueError(f"budget_tokens must be between 1 and {MAX_BUDGET}")
        deadline = (deadline_ms or self.settings.deadline_ms) / 1000
        if deadline <= 0:
            raise ValueError("deadline_ms must be positive")
        arrived = time.perf_counter()
        async with self._turns:
            call = self._call(deadline)
            context = await self._rehydrate(
                call, tenant_id, session_id, query, budget_tokens, recent_turns
            )
        return replace(
            context,
            queued_ms=(call.started - arrived) * 1000,
            elapsed_ms=(time.perf_counter() - arrived) * 1000,
        )

    async def _rehydrate(
        self,
        call: Call,
        tenant_id: str,
        session_id: str,
        query: str | None,
        budget_tokens: int,
        recent_turns: int | None,
    ) -> Context:
        recent_n = self.settings.recent_turns if recent_turns is None else recent_turns
        partition = partition_for(tenant_id, session_id, self._partitions)
        pool = Pool()

        log_read = asyncio.ensure_future(
            call.within("log", "redis", lambda: self._read_log(tenant_id, session_id, partition))
        )
        recent_read = asyncio.ensure_future(
            self._recent(call, tenant_id, session_id, partition, recent_n)
        )
        outline_read = asyncio.ensure_future(self._outline(call, tenant_id, session_id))
        session_read = asyncio.ensure_future(self._session(call, tenant_id, session_id))

        query_source: QuerySource = "given" if query else "none"
        if not query:
            # The newest user turn may be in the log tail only; a log that is slow to
            # answer must not hold up the other tiers, though: wait for it briefly.
            await asyncio.wait({recent_read})
            await asyncio.wait({log_read}, timeout=self.settings.hedge_after_ms / 1000)
            tail_so_far = _tail_of(log_read.result()) if log_read.done() else []
            query = _latest_user_turn([*recent_read.result(), *tail_so_far])
            query_source = "latest user turn" if query else "none"
        dense_read = asyncio.ensure_future(self._dense(call, tenant_id, session_id, query))
        lexical_read = asyncio.ensure_future(self._lexical(call, tenant_id, session_id, query))
        await asyncio.wait({log_read, recent_read, outline_read, session_read})
        await asyncio.wait({dense_read, lexical_read})

        log_view = log_read.result()
        if log_view is not None:
            call.count("log", len(log_view.tail.messages))  # messages no projection had yet
            if log_view.tail.truncated:
                call.annotate("log", f"tail cut at {self.settings.log_tail_entries} entries")
        tail = _tail_of(log_view)
        erased_at = log_view.tail.erased_at if log_view is not None else None
        recent = _after(recent_read.result(), erased_at)
        turns = [t for t in outline_read.result() if erased_at is None or t.position > erased_at]
        known = {t.message_id for t in turns}
        turns += [_turn(m) for m in tail if m.message.id not in known]
        dense_hits, lexical_hits = dense_read.result(), lexical_read.result()
        pool.add(tail, "log")
        pool.add(recent, "recent")
        pool.note(dense_hits, "dense")
        pool.note(lexical_hits, "lexical")

        scores: dict[str, float] = {}
        if query:
            scores = fuse(
                turns,
                {h.message_id: h.score for h in dense_hits},
                {h.message_id: h.score for h in lexical_hits},
                query,
                self._weights,
            )
        ranked = sorted(scores, key=lambda i: -scores[i])  # stable: ties keep log order
        graph_read = asyncio.ensure_future(
            self._neighbours(call, tenant_id, session_id, ranked[:GRAPH_SEEDS])
        )
        # Read-your-writes and the recent window go first, newest first: when the tail is
        # longer than the budget (projectors far behind), the latest turns are kept.
        newest = sorted([*tail, *recent], key=lambda m: m.position, reverse=True)
        first = [m.message.id for m in newest]
        items, used, header = await pack(
            call,
            self._history,
            self._counter,
            tenant_id,
            session_id,
            budget_tokens,
            [*dict.fromkeys([*first, *ranked])],
            pool,
            scores,
            session_read.result(),
        )
        await asyncio.wait({graph_read})
        graph_hits = {h.message_id: h.score for h in graph_read.result()}
        items = [
            replace(i, found_by={**i.found_by, "graph": graph_hits[i.message.id]})
            if i.message.id in graph_hits
            else i
            for i in items
        ]
        items.sort(key=lambda i: i.position)
        return Context(
            tenant_id=tenant_id,
            session_id=session_id,
            query=query,
            query_source=query_source,
            budget_tokens=budget_tokens,
            tokens=used,
            items=tuple(items),
            header=header,
            tiers=tuple(call.reports),
            watermarks=log_view.watermarks if log_view is not None else {},
            from_log_tail=sum(1 for i in items if "log" in i.found_by),
            elapsed_ms=(time.perf_counter() - call.started) * 1000,
        )

    async def history(
        self, tenant_id: str, session_id: str, *, limit: int = 100, deadline_ms: int | None = None
    ) -> list[StoredMessage]:
        """The session's last ``limit`` messages in log order, read-your-writes included.

        The history store's rows plus the log tail past its watermark; the log alone when
        the history store does not answer in time. Raises ``ValidationError`` on bad ids and
        :class:`HistoryUnavailableError` when neither answers.
        """
        validate_id("tenant_id", tenant_id)
        validate_id("session_id", session_id)
        if limit < 1:
            raise ValueError("limit must be at least 1")
        call = self._call((deadline_ms or self.settings.deadline_ms) / 1000)
        partition = partition_for(tenant_id, session_id, self._partitions)
        view, recent = await asyncio.gather(
            call.within("log", "redis", lambda: self._read_log(tenant_id, session_id, partition)),
            self._recent(call, tenant_id, session_id, partition, limit),
        )
        if view is None and not any(r.tier == "recent" and r.status == "ok" for r in call.reports):
            raise HistoryUnavailableError(
                "neither the history store nor the log answered: "
                + "; ".join(f"{r.tier}: {r.detail}" for r in call.reports if r.status != "ok")
            )
        erased_at = view.tail.erased_at if view is not None else None
        merged = {m.message.id: m for m in _after(recent, erased_at)}
        for m in _tail_of(view):
            merged.setdefault(m.message.id, m)
        return sorted(merged.values(), key=lambda m: m.position)[-limit:]

    def _call(self, deadline_s: float) -> Call:
        tiers = {t: ms / 1000 for t, ms in self.settings.tier_deadline_ms.items()}
        return Call(started=time.perf_counter(), deadline_s=deadline_s, tier_deadlines_s=tiers)

    async def _read_log(self, tenant_id: str, session_id: str, partition: int) -> log_tail.LogView:
        marks = await log_tail.watermarks(
            self._redis, partition, self._projectors, self._reads_enriched
        )
        # Projector names are store names: the history store's group is its watermark.
        history = self._history.store if self._history is not None else None
        after = marks.get(history) if history is not None else None
        found = await log_tail.tail(
            self._redis,
            tenant_id,
            session_id,
            partition,
            after,
            max_entries=self.settings.log_tail_entries,
        )
        return log_tail.LogView(marks, found)

    async def _recent(
        self, call: Call, tenant_id: str, session_id: str, partition: int, limit: int
    ) -> list[StoredMessage]:
        if limit == 0:
            call.skipped("recent", "recent_turns is 0")
            return []
        reads: list[tuple[str, Callable[[], Awaitable[list[StoredMessage]]]]] = []
        if self._history is not None:
            history = self._history
            reads.append(
                (history.store, lambda: history.recent(tenant_id, session_id, limit=limit))
            )

        async def from_log() -> list[StoredMessage]:
            found = await log_tail.latest(
                self._redis,
                tenant_id,
                session_id,
                partition,
                limit=limit,
                max_entries=self.settings.log_tail_entries,
            )
            return found.messages

        reads.append(("log", from_log))
        result, report = await hedged(
            "recent",
            reads,
            deadline_s=call.left("recent", first_phase=True),
            hedge_after_s=self.settings.hedge_after_ms / 1000,
        )
        call.reports.append(report)
        return result or []

    async def _outline(self, call: Call, tenant_id: str, session_id: str) -> list[Turn]:
        history = self._history
        if history is None:
            call.skipped("outline", "no history store")
            return []
        limit = self.settings.candidates
        turns = await call.within(
            "outline", history.store, lambda: history.outline(tenant_id, session_id, limit=limit)
        )
        return turns or []

    async def _session(self, call: Call, tenant_id: str, session_id: str) -> SessionSummary | None:
        sessions = self._sessions
        if sessions is None:
            call.skipped("session", "no session store")
            return None
        return await call.within(
            "session", sessions.store, lambda: sessions.session(tenant_id, session_id)
        )

    async def _dense(
        self, call: Call, tenant_id: str, session_id: str, query: str | None
    ) -> list[Hit]:
        if not query:
            call.skipped("dense", "no query")
            return []
        embedder = self._embedder
        if embedder is None or not self._vectors:
            call.skipped("dense", "no vector store")
            return []
        started = time.perf_counter()
        vector = await call.within("embedding", "onnx", lambda: embedder.embed_async(query))
        call.reports[-1] = replace(call.reports[-1], candidates=0)  # a vector, not candidates
        if vector is None:
            return []
        embed_ms = (time.perf_counter() - started) * 1000
        limit = self.settings.candidates

        def search(store: VectorStore) -> Callable[[], Awaitable[list[Hit]]]:
            return lambda: store.nearest(tenant_id, vector, limit=limit, session_id=session_id)

        hits, report = await hedged(
            "dense",
            [(v.store, search(v)) for v in self._vectors],
            deadline_s=call.left("dense", first_phase=True),
            hedge_after_s=self.settings.hedge_after_ms / 1000,
        )
        call.reports.append(replace(report, ms=report.ms + embed_ms))
        return hits or []

    async def _lexical(
        self, call: Call, tenant_id: str, session_id: str, query: str | None
    ) -> list[Hit]:
        history = self._history
        if not query or history is None:
            call.skipped("lexical", "no query" if not query else "no history store")
            return []
        limit = self.settings.candidates
        hits = await call.within(
            "lexical",
            history.store,
            lambda: history.lexical(tenant_id, session_id, query, limit=limit),
        )
        return hits or []

    async def _neighbours(
        self, call: Call, tenant_id: str, session_id: str, seeds: Sequence[str]
    ) -> list[Hit]:
        graph = self._graph
        if graph is None or not seeds:
            call.skipped("graph", "no graph store" if graph is None else "nothing to expand")
            return []
        hits, report = await within(
            "graph",
            graph.store,
            call.left("graph"),
            lambda: graph.neighbours(tenant_id, session_id, seeds),
        )
        call.reports.append(report)
        return hits or []


def _tail_of(view: log_tail.LogView | None) -> list[StoredMessage]:
    return view.tail.messages if view is not None else []


def _after(messages: list[StoredMessage], erased_at: Position | None) -> list[StoredMessage]:
    if erased_at is None:
        return messages
    return [m for m in messages if m.position > erased_at]


def _turn(m: StoredMessage) -> Turn:
    return Turn(
        message_id=m.message.id, role=m.message.role, name=m.message.name, position=m.position
    )


def _latest_user_turn(messages: Sequence[StoredMessage]) -> str | None:
    """The content of the newest user message (else of the newest message)."""
    newest = sorted(messages, key=lambda m: m.position, reverse=True)
    for m in newest:
        if m.message.role == "user":
            return m.message.content
    return newest[0].message.content if newest else None
