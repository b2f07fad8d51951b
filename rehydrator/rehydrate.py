"""``rehydrate``: a session's context from every tier at once, packed to a token budget.

Scopes: ``session`` (the session's own turns) or ``user`` (the session's turns and every
turn of the same user in the tenant, all sessions, competing in one budget).

Reads, all concurrent and each bounded by the call's deadline:

- ``log``: every projector's watermark on the scope's partitions and the scope's messages
  past the history store's watermark (read-your-writes);
- ``recent``: the session's last turns, from the history store or else the log (hedged);
- ``session``: the session document (participants, span, size) for the header;
- ``memory``: the scope's in-memory copy (:mod:`rehydrator.hot_index`), brought up to the
  watermarks just read; when there is none yet, the stores answer the next two;
- ``dense``: the query's embedding's top hits over the scope (hedged over vector stores);
- ``lexical``: the top BM25 hits over the scope;
- ``window``: the turns around every hit, in log order;

then ``graph`` (neighbours of the best hits) and ``messages`` (the texts of the ranked
turns) while packing. A tier that fails or misses the deadline is reported as degraded and
left out; the recent window and the log tail are always tried first. Candidates are the
indexes' best hits over the whole scope and their neighbours: no turn is left out for its
age, and the work per call is bounded by the hits asked for, not by the history's length.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, replace
from datetime import datetime
from typing import Literal, Protocol

import numpy as np
import redis.asyncio as aioredis

from projectors.position import Position
from projectors.store import (
    GraphStore,
    HistoryStore,
    Hit,
    MessageKey,
    ProjectionStore,
    Scope,
    SessionSummary,
    StoredMessage,
    Turn,
    VectorSource,
    VectorStore,
    participant,
)
from rehydrator import log_tail
from rehydrator.call import Call, Pool, merged
from rehydrator.context import Context, Item, QuerySource, TierReport
from rehydrator.deadlines import hedged, within
from rehydrator.errors import HistoryUnavailableError, MissingUserError
from rehydrator.fusion import FusionWeights, fuse, without_names
from rehydrator.hot_index import HotIndex, HotIndexes
from rehydrator.packing import Texts, pack
from rehydrator.query_embedding import QueryEmbedder
from rehydrator.settings import RehydrateSettings
from rehydrator.tokens import TokenCounter
from schemas.partitioning import partition_for
from schemas.validation import validate_id

MAX_BUDGET = 1_000_000
GRAPH_SEEDS = 5
"""Best hits whose graph neighbourhood is read."""
SEED_RANK = 60
"""k of the reciprocal ranks that pick them (as in RRF)."""

ScopeName = Literal["session", "user"]
SCOPES: tuple[ScopeName, ...] = ("session", "user")


@dataclass(frozen=True, kw_only=True, slots=True)
class Tiers:
    """The stores calls read, each the live generation of its projection."""

    history: HistoryStore | None = None
    vectors: tuple[VectorStore, ...] = ()
    graph: GraphStore | None = None
    sessions: ProjectionStore | None = None
    source: VectorSource | None = None
    """Where the in-memory copies take their vectors from."""
    embedder: QueryEmbedder | None = None
    """Embeds queries in the vector stores' model."""


class TierSwitch(Protocol):
    """Tells a rehydrator, before each call, when a rebuild switched a projection live."""

    async def changed(self) -> Tiers | None:
        """The tiers to read from now on, or None when nothing changed since the last ask."""


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
        hot: HotIndexes | None = None,
        settings: RehydrateSettings | None = None,
        weights: FusionWeights | None = None,
        switch: TierSwitch | None = None,
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
        self._hot = hot
        self.settings = settings or RehydrateSettings()
        self._weights = weights or FusionWeights()
        self._turns = asyncio.Semaphore(self.settings.concurrency)
        self._switch = switch
        self._log = logging.getLogger(f"{__name__}.{type(self).__name__}")

    async def _follow_rebuilds(self) -> None:
        """Read the generations a rebuild just switched live, from this call on."""
        if self._switch is None:
            return
        tiers = await self._switch.changed()
        if tiers is None:
            return
        self._history = tiers.history
        self._vectors = tiers.vectors
        self._graph = tiers.graph
        self._sessions = tiers.sessions
        new_model = tiers.embedder is not None and tiers.embedder is not self._embedder
        if tiers.embedder is not None:
            self._embedder = tiers.embedder
        if self._hot is not None and tiers.history is not None:
            self._hot.use(tiers.history, tiers.source, vectors_changed=new_model)

    @property
    def redis(self) -> aioredis.Redis:
        """The log server this rehydrator reads the tail and the watermarks from."""
        return self._redis

    @property
    def partitions(self) -> int:
        return self._partitions

    async def rehydrate(
        self,
        tenant_id: str,
        session_id: str,
        query: str | None = None,
        budget_tokens: int = 2000,
        *,
        scope: ScopeName = "session",
        user_id: str | None = None,
        deadline_ms: int | None = None,
        recent_turns: int | None = None,
    ) -> Context:
        """The context to resume ``session_id`` with, within ``budget_tokens``.

        ``query`` defaults to the session's latest user turn. ``scope="user"`` adds every
        session of ``user_id`` (default: the user the session's latest turns name) in the
        tenant. Raises ``ValidationError`` on bad ids and ``ValueError`` on a bad budget,
        scope, or a user scope without a user; a failing tier never raises.
        """
        validate_id("tenant_id", tenant_id)
        validate_id("session_id", session_id)
        if user_id is not None:
            validate_id("user_id", user_id)
        if scope not in SCOPES:
            raise ValueError(f"scope must be one of {', '.join(SCOPES)}, not {scope!r}")
        if not 1 <= budget_tokens <= MAX_BUDGET:
            raise ValueError(f"budget_tokens must be between 1 and {MAX_BUDGET}")
        deadline = (deadline_ms or self.settings.deadline_ms) / 1000
        if deadline <= 0:
            raise ValueError("deadline_ms must be positive")
        arrived = time.perf_counter()
        await self._follow_rebuilds()
        async with self._turns:
            call = self._call(deadline)
            context = await self._rehydrate(
                call, tenant_id, session_id, query, budget_tokens, recent_turns, scope, user_id
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
        scope_name: ScopeName,
        user_id: str | None,
    ) -> Context:
        recent_n = self.settings.recent_turns if recent_turns is None else recent_turns
        partition = partition_for(tenant_id, session_id, self._partitions)
        pool = Pool()
        known_recent: list[StoredMessage] | None = None
        if scope_name == "user" and user_id is None:
            # Whose memory: the session's own latest turns say (one read before the rest).
            latest = await self._stores_recent(
                call, tenant_id, session_id, partition, max(recent_n, 1)
            )
            user_id = _latest_user(latest)
            if user_id is None:
                raise MissingUserError(
                    "user_id: scope 'user' needs one, and the session's latest turns name none"
                )
            known_recent = latest[len(latest) - recent_n :] if recent_n else []
        scope = Scope(session_id=session_id, user_id=user_id if scope_name == "user" else None)
        partitions = [partition] if scope.user_id is None else list(range(self._partitions))
        log_read = asyncio.ensure_future(
            call.within("log", "redis", lambda: self._read_log(tenant_id, scope, partitions))
        )
        hot_read = asyncio.ensure_future(self._hot_copy(call, tenant_id, scope, log_read))
        recent_read = asyncio.ensure_future(
            self._recent(call, tenant_id, session_id, partition, recent_n, hot_read, known_recent)
        )
        session_read = asyncio.ensure_future(self._session(call, tenant_id, session_id, hot_read))

        query_source: QuerySource = "given" if query else "none"
        if not query:
            # The newest user turn may be in the log tail only; a log that is slow to
            # answer must not hold up the other tiers, though: wait for it briefly.
            await asyncio.wait({recent_read})
            await asyncio.wait({log_read}, timeout=self.settings.hedge_after_ms / 1000)
            own = [m for m in _tail_of(log_read) if m.message.session_id == session_id]
            query = _latest_user_turn([*recent_read.result(), *own])
            query_source = "latest user turn" if query else "none"
        dense_read = asyncio.ensure_future(self._dense(call, tenant_id, scope, query, hot_read))
        lexical_read = asyncio.ensure_future(self._lexical(call, tenant_id, scope, query, hot_read))
        channels = [dense_read, lexical_read]
        graph_read = asyncio.ensure_future(self._neighbours(call, tenant_id, scope, channels))
        windows_read = asyncio.ensure_future(self._windows(call, tenant_id, channels, hot_read))
        await asyncio.wait({log_read, recent_read, session_read, windows_read})

        view = log_read.result()
        tail = _tail_of(log_read)
        if view is not None:
            call.count("log", len(tail))  # messages no projection had yet
            if view.tail.truncated:
                call.annotate("log", f"tail cut at {self.settings.log_tail_entries} entries")
        erased = view.tail if view is not None else log_tail.ScopeLog()
        recent = [
            m
            for m in recent_read.result()
            if not erased.hides((session_id, m.message.id), m.position)
        ]
        dense_hits = [h for h in dense_read.result() if not erased.hides_hit(h.key)]
        lexical_hits = [h for h in lexical_read.result() if not erased.hides_hit(h.key)]
        windows = windows_read.result()
        if erased.erased or erased.redacted:
            windows = {
                k: [t for t in w if not erased.hides(t.key, t.position)] for k, w in windows.items()
            }
        pool.add(tail, "log")
        pool.add(recent, "recent")
        pool.note(dense_hits, "dense")
        pool.note(lexical_hits, "lexical")

        scores: dict[MessageKey, float] = {}
        if query:
            scores = fuse(
                windows,
                {h.key: h.score for h in dense_hits},
                {h.key: h.score for h in lexical_hits},
                query,
                self._weights,
            )
        ranked = list(scores)  # best first
        # Read-your-writes and the recent window go first, newest first: when the tail is
        # longer than the budget (projectors far behind), the latest turns are kept.
        newest = sorted([*tail, *recent], key=lambda m: m.position, reverse=True)
        first = [(m.message.session_id, m.message.id) for m in newest]
        copy = hot_read.result()
        items, used, header = await pack(
            call,
            self._texts(tenant_id, copy),
            self._counter,
            tenant_id,
            budget_tokens,
            [*dict.fromkeys([*first, *ranked])],
            pool,
            scores,
            session_read.result(),
        )
        await asyncio.wait({graph_read})
        graph_hits = {h.key: h.score for h in graph_read.result()}
        items = [
            replace(i, found_by={**i.found_by, "graph": graph_hits[i.key]})
            if i.key in graph_hits
            else i
            for i in items
        ]
        own_marks = view.watermarks.get(partition, {}) if view is not None else {}
        return Context(
            tenant_id=tenant_id,
            session_id=session_id,
            scope=scope_name,
            user_id=scope.user_id,
            query=query,
            query_source=query_source,
            budget_tokens=budget_tokens,
            tokens=used,
            items=tuple(_in_time_order(items)),
            header=header,
            tiers=tuple(call.reports),
            watermarks=own_marks,
            from_log_tail=sum(1 for i in items if "log" in i.found_by),
            elapsed_ms=(time.perf_counter() - call.started) * 1000,
        )

    async def prepare(
        self,
        tenant_id: str,
        session_id: str,
        *,
        scope: ScopeName = "session",
        user_id: str | None = None,
    ) -> bool:
        """Load the scope's in-memory copy now and wait until it is loaded, so that the
        next calls are served from it (an agent about to resume, a benchmark's warm-up).
        True when a copy is ready; False when there are no copies or no log to check one
        against."""
        validate_id("tenant_id", tenant_id)
        validate_id("session_id", session_id)
        if scope == "user" and user_id is None:
            raise MissingUserError("user_id: prepare(scope='user') needs one")
        await self._follow_rebuilds()
        hot = self._hot
        if hot is None:
            return False
        chosen = Scope(session_id=session_id, user_id=user_id if scope == "user" else None)
        partition = partition_for(tenant_id, session_id, self._partitions)
        partitions = [partition] if chosen.user_id is None else list(range(self._partitions))
        marks = await log_tail.watermarks(
            self._redis, partitions, self._projectors, self._reads_enriched
        )
        wanted = {n: {p: m.get(n) for p, m in marks.items()} for n in hot.projectors}
        if await hot.current(tenant_id, chosen, wanted) is None:
            await hot.settle()
        return await hot.current(tenant_id, chosen, wanted) is not None

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
        await self._follow_rebuilds()
        call = self._call((deadline_ms or self.settings.deadline_ms) / 1000)
        partition = partition_for(tenant_id, session_id, self._partitions)
        scope = Scope(session_id=session_id)
        view, recent = await asyncio.gather(
            call.within("log", "redis", lambda: self._read_log(tenant_id, scope, [partition])),
            # The log backwards is a whole answer only within its scan limit: past that, a
            # long session's history comes from the store alone.
            self._stores_recent(
                call,
                tenant_id,
                session_id,
                partition,
                limit,
                from_log=limit <= self.settings.log_tail_entries,
            ),
        )
        if view is None and not any(r.tier == "recent" and r.status == "ok" for r in call.reports):
            raise _unavailable("history", call)
        tail = view.tail if view is not None else log_tail.ScopeLog()
        if tail.truncated and not _latest_from_log(call, recent, limit):
            # The projectors are further behind than the scan reaches: the session's newest
            # messages are past what was scanned. Read them backwards from the log's end.
            entries = self.settings.log_tail_entries
            asked = f"last {limit} messages" if limit <= entries else "history"
            behind = HistoryUnavailableError(
                f"more than {entries} log entries are past the history store's watermark (the"
                f" projectors are behind: amem status shows the lag), so the session's {asked}"
                " cannot be read whole now; retry once they caught up, or raise"
                " AMEM_REHYDRATE_LOG_TAIL_ENTRIES"
            )
            if limit > entries:
                raise behind
            newest = await log_tail.latest(
                self._redis, tenant_id, session_id, partition, limit=limit, max_entries=entries
            )
            if newest.truncated:
                raise behind
            return newest.messages
        merged = {
            m.message.id: m
            for m in recent
            if not tail.hides((session_id, m.message.id), m.position)
        }
        for m in tail.messages:
            merged.setdefault(m.message.id, m)
        return sorted(merged.values(), key=lambda m: m.position)[-limit:]

    async def sessions(
        self, tenant_id: str, *, limit: int = 100, deadline_ms: int | None = None
    ) -> list[SessionSummary]:
        """The tenant's sessions with a message, the latest active first, read-your-writes
        included: the session store's summaries, corrected by the log past the history
        store's watermark (sessions erased there left out, messages appended there counted).

        Raises ``ValidationError`` on a bad tenant and :class:`HistoryUnavailableError` when
        neither the store nor the log answers.
        """
        validate_id("tenant_id", tenant_id)
        if limit < 1:
            raise ValueError("limit must be at least 1")
        await self._follow_rebuilds()
        call = self._call((deadline_ms or self.settings.deadline_ms) / 1000)
        # The history store shares the log tail's watermark: its summaries and the tail
        # meet without a gap. The session store only stands in for it.
        store = self._history if isinstance(self._history, ProjectionStore) else self._sessions
        partitions = list(range(self._partitions))

        async def stored() -> list[SessionSummary]:
            if store is None:
                return []
            # The log may erase some of them: ask for more than will be shown.
            return await store.sessions(tenant_id, limit=limit * 2)

        view, summaries = await asyncio.gather(
            call.within("log", "redis", lambda: self._read_log(tenant_id, Scope(), partitions)),
            call.within("session", store.store if store else None, stored),
        )
        if view is None and summaries is None:
            raise _unavailable("session", call)
        tail = view.tail if view is not None else log_tail.ScopeLog()
        found = {
            s.session_id: s
            for s in summaries or []
            if (erased := tail.erased_at(s.session_id)) is None or s.last_position > erased
        }
        for m in tail.messages:
            known = found.get(m.message.session_id)
            if known is not None and m.position <= known.last_position:
                continue
            found[m.message.session_id] = _with(known, m)
        ranked = sorted(found.values(), key=lambda s: (s.last_at, s.session_id), reverse=True)
        return ranked[:limit]

    def _call(self, deadline_s: float) -> Call:
        tiers = {t: ms / 1000 for t, ms in self.settings.tier_deadline_ms.items()}
        return Call(started=time.perf_counter(), deadline_s=deadline_s, tier_deadlines_s=tiers)

    async def _read_log(
        self, tenant_id: str, scope: Scope, partitions: Sequence[int]
    ) -> log_tail.LogView:
        marks = await log_tail.watermarks(
            self._redis, partitions, self._projectors, self._reads_enriched
        )
        # Projector names are store names: the history store's group is its watermark.
        history = self._history.store if self._history is not None else None
        after = {p: (marks[p].get(history) if history is not None else None) for p in partitions}
        found = await log_tail.tail(
            self._redis, tenant_id, scope, after, max_entries=self.settings.log_tail_entries
        )
        return log_tail.LogView(marks, found)

    async def _recent(
        self,
        call: Call,
        tenant_id: str,
        session_id: str,
        partition: int,
        limit: int,
        hot_read: asyncio.Future[HotIndex | None],
        known: list[StoredMessage] | None,
    ) -> list[StoredMessage]:
        """The recent window: already read, or from the copy, or from the stores."""
        if known is not None:
            return known
        await asyncio.wait({hot_read})
        copy = hot_read.result()
        if copy is not None and limit:
            started = time.perf_counter()
            found = copy.recent(session_id, limit)
            call.reports.append(_memory_report("recent", started, found))
            return found
        return await self._stores_recent(call, tenant_id, session_id, partition, limit)

    async def _stores_recent(
        self,
        call: Call,
        tenant_id: str,
        session_id: str,
        partition: int,
        limit: int,
        *,
        from_log: bool = True,
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

        async def read_log() -> list[StoredMessage]:
            found = await log_tail.latest(
                self._redis,
                tenant_id,
                session_id,
                partition,
                limit=limit,
                max_entries=self.settings.log_tail_entries,
            )
            return found.messages

        if from_log or not reads:
            reads.append(("log", read_log))
        result, report = await hedged(
            "recent",
            reads,
            deadline_s=call.left("recent", first_phase=True),
            hedge_after_s=self.settings.hedge_after_ms / 1000,
        )
        call.reports.append(report)
        return result or []

    async def _session(
        self,
        call: Call,
        tenant_id: str,
        session_id: str,
        hot_read: asyncio.Future[HotIndex | None],
    ) -> SessionSummary | None:
        await asyncio.wait({hot_read})
        copy = hot_read.result()
        if copy is not None:
            started = time.perf_counter()
            summary = copy.summary(session_id)
            call.reports.append(_memory_report("session", started, []))
            return summary
        sessions = self._sessions
        if sessions is None:
            call.skipped("session", "no session store")
            return None
        return await call.within(
            "session", sessions.store, lambda: sessions.session(tenant_id, session_id)
        )

    def _texts(self, tenant_id: str, copy: HotIndex | None) -> Texts | None:
        """Where packing reads the texts of ranked turns: the copy, else the history store."""
        if copy is not None:

            async def from_memory(keys: list[MessageKey]) -> list[StoredMessage]:
                return copy.messages(keys)

            return Texts(store="memory", read=from_memory)
        history = self._history
        if history is None:
            return None

        async def from_store(keys: list[MessageKey]) -> list[StoredMessage]:
            return await history.messages(tenant_id, keys)

        return Texts(store=history.store, read=from_store)

    async def _hot_copy(
        self,
        call: Call,
        tenant_id: str,
        scope: Scope,
        log_read: asyncio.Future[log_tail.LogView | None],
    ) -> HotIndex | None:
        """The scope's in-memory copy, current at the watermarks this call read."""
        hot = self._hot
        if hot is None:
            return None
        # The copy is only used once shown current against the watermarks; a log slow to
        # give them must not eat the time the stores need to answer instead.
        await asyncio.wait({log_read}, timeout=self.settings.hedge_after_ms / 1000)
        view = log_read.result() if log_read.done() else None
        if view is None:
            call.skipped("memory", "no watermarks to check the copy against: stores answer")
            return None
        marks = {
            projector: {p: m.get(projector) for p, m in view.watermarks.items()}
            for projector in hot.projectors
        }
        copy = await call.within("memory", "memory", lambda: hot.current(tenant_id, scope, marks))
        if copy is None:
            call.annotate("memory", "loading: the stores answer meanwhile")
        else:
            call.count("memory", copy.rows)
        return copy

    async def _dense(
        self,
        call: Call,
        tenant_id: str,
        scope: Scope,
        query: str | None,
        hot_read: asyncio.Future[HotIndex | None],
    ) -> list[Hit]:
        if not query:
            call.skipped("dense", "no query")
            return []
        embedder = self._embedder
        if embedder is None or not self._vectors:
            call.skipped("dense", "no vector store")
            return []
        started = time.perf_counter()
        # Speaker names tell step 3 of the fusion whose turns to favour, not what the turn
        # is about: the vector is of the query without them (the names the scope's copy has
        # seen, known at once; none before it is loaded).
        names = self._hot.names(tenant_id, scope) if self._hot is not None else set()
        asked = without_names(query, names)
        vector = await call.within(
            "embedding", embedder.model_name, lambda: embedder.embed_async(asked)
        )
        call.count("embedding", 0)  # a vector, not candidates
        if vector is None:
            return []
        limit = self.settings.candidates
        await asyncio.wait({hot_read})
        copy = hot_read.result()
        if copy is not None and copy.vectors.live:
            hits = await copy.nearest(np.asarray(vector, dtype=np.float32), limit)
            call.reports.append(_memory_report("dense", started, hits))
            return hits

        def search(store: VectorStore) -> Callable[[], Awaitable[list[Hit]]]:
            return lambda: store.nearest(tenant_id, vector, limit=limit, scope=scope)

        found, report = await hedged(
            "dense",
            [(v.store, search(v)) for v in self._vectors],
            deadline_s=call.left("dense", first_phase=True),
            hedge_after_s=self.settings.hedge_after_ms / 1000,
        )
        call.reports.append(replace(report, ms=(time.perf_counter() - started) * 1000))
        return found or []

    async def _lexical(
        self,
        call: Call,
        tenant_id: str,
        scope: Scope,
        query: str | None,
        hot_read: asyncio.Future[HotIndex | None],
    ) -> list[Hit]:
        history = self._history
        if not query or history is None:
            call.skipped("lexical", "no query" if not query else "no history store")
            return []
        limit = self.settings.candidates
        await asyncio.wait({hot_read})
        copy = hot_read.result()
        if copy is None:
            hits = await call.within(
                "lexical",
                history.store,
                lambda: history.lexical(tenant_id, query, limit=limit, scope=scope),
            )
            return hits or []
        # The query's terms as the history store analyses words, then BM25 in memory.
        started = time.perf_counter()
        terms, report = await within(
            "lexical",
            history.store,
            call.left("lexical", first_phase=True),
            lambda: history.analyse(query),
        )
        if terms is None:
            call.reports.append(report)
            return []
        hits = copy.lexical(terms, limit)
        call.reports.append(_memory_report("lexical", started, hits))
        return hits

    async def _windows(
        self,
        call: Call,
        tenant_id: str,
        hit_reads: Sequence[asyncio.Future[list[Hit]]],
        hot_read: asyncio.Future[HotIndex | None],
    ) -> dict[MessageKey, list[Turn]]:
        """The turns around each hit, read as soon as each channel's hits are in: one
        channel that is slow or fails does not hold up the other's windows (the last read
        ranking needs; the header and the recent window are not needed for it)."""
        reads: list[asyncio.Future[tuple[dict[MessageKey, list[Turn]] | None, TierReport]]] = []
        asked: set[MessageKey] = set()
        waiting: set[asyncio.Future[list[Hit]]] = set(hit_reads)
        while waiting:
            done, waiting = await asyncio.wait(waiting, return_when=asyncio.FIRST_COMPLETED)
            keys = [h.key for f in done for h in f.result() if h.key not in asked]
            asked.update(keys)
            if keys:
                reads.append(
                    asyncio.ensure_future(self._window_read(call, tenant_id, keys, hot_read))
                )
        if not reads:
            return {}
        found: dict[MessageKey, list[Turn]] = {}
        reports = []
        for windows, report in await asyncio.gather(*reads):
            found.update(windows or {})
            reports.append(report)
        call.reports.append(merged(reports) if len(reports) > 1 else reports[0])
        return found

    async def _window_read(
        self,
        call: Call,
        tenant_id: str,
        keys: Sequence[MessageKey],
        hot_read: asyncio.Future[HotIndex | None],
    ) -> tuple[dict[MessageKey, list[Turn]] | None, TierReport]:
        radius = self._weights.radius
        copy = hot_read.result() if hot_read.done() else None
        if copy is not None:
            started = time.perf_counter()
            windows = copy.around(keys, radius)
            return windows, _memory_report("window", started, windows)
        history = self._history
        if history is None:
            return None, TierReport(
                tier="window", store=None, status="skipped", ms=0, detail="no history store"
            )
        return await within(
            "window",
            history.store,
            call.left("window", first_phase=True),
            lambda: history.around(tenant_id, keys, radius=radius),
        )

    async def _neighbours(
        self,
        call: Call,
        tenant_id: str,
        scope: Scope,
        channels: Sequence[asyncio.Future[list[Hit]]],
    ) -> list[Hit]:
        """The graph neighbourhood of the best hits of the first channel to answer (by
        reciprocal rank when both are in), read while the rest of the ranking and the
        packing go on: it adds provenance, and full text, with no query to embed, usually
        answers first."""
        graph = self._graph
        if graph is None:
            call.skipped("graph", "no graph store")
            return []
        rank: dict[MessageKey, float] = {}
        waiting: set[asyncio.Future[list[Hit]]] = set(channels)
        while waiting and not rank:
            done, waiting = await asyncio.wait(waiting, return_when=asyncio.FIRST_COMPLETED)
            for channel in done:
                for i, hit in enumerate(channel.result()):
                    rank[hit.key] = rank.get(hit.key, 0.0) + 1 / (SEED_RANK + i)
        seeds = sorted(rank, key=lambda k: -rank[k])[:GRAPH_SEEDS]
        if not seeds:
            call.skipped("graph", "nothing to expand")
            return []
        hits, report = await within(
            "graph",
            graph.store,
            call.left("graph"),
            lambda: graph.neighbours(tenant_id, seeds, scope=scope),
        )
        call.reports.append(report)
        return hits or []


def _latest_from_log(call: Call, recent: Sequence[StoredMessage], limit: int) -> bool:
    """Whether the recent read came from the log's end and holds ``limit`` messages: then
    it has the session's newest, whatever a truncated forward scan missed."""
    from_log = any(
        r.tier == "recent" and r.store == "log" and r.status == "ok" for r in call.reports
    )
    return from_log and len(recent) >= limit


def _unavailable(store: str, call: Call) -> HistoryUnavailableError:
    failed = "; ".join(f"{r.tier}: {r.detail}" for r in call.reports if r.status != "ok")
    return HistoryUnavailableError(f"neither the {store} store nor the log answered: {failed}")


def _with(summary: SessionSummary | None, m: StoredMessage) -> SessionSummary:
    """``summary`` with one more message, read from the log past what the store holds."""
    at, who = m.message.created_at, participant(m.message.role, m.message.name)
    if summary is None:
        return SessionSummary(
            tenant_id=m.message.tenant_id,
            session_id=m.message.session_id,
            message_count=1,
            participants=frozenset({who}),
            first_at=at,
            last_at=at,
            last_position=m.position,
        )
    return replace(
        summary,
        message_count=summary.message_count + 1,
        participants=summary.participants | {who},
        first_at=min(summary.first_at, at),
        last_at=max(summary.last_at, at),
        last_position=max(summary.last_position, m.position),
    )


def _memory_report(
    tier: str, started: float, found: Sequence[object] | Mapping[MessageKey, object]
) -> TierReport:
    """A tier answered from the in-memory copy."""
    return TierReport(
        tier=tier,
        store="memory",
        status="ok",
        ms=(time.perf_counter() - started) * 1000,
        candidates=len(found),
    )


def _tail_of(log_read: asyncio.Future[log_tail.LogView | None]) -> list[StoredMessage]:
    view = log_read.result() if log_read.done() else None
    return view.tail.messages if view is not None else []


def _latest_user(messages: Sequence[StoredMessage]) -> str | None:
    for m in sorted(messages, key=lambda m: m.position, reverse=True):
        if m.message.user_id is not None:
            return m.message.user_id
    return None


def _latest_user_turn(messages: Sequence[StoredMessage]) -> str | None:
    """The content of the newest user message (else of the newest message)."""
    newest = sorted(messages, key=lambda m: m.position, reverse=True)
    for m in newest:
        if m.message.role == "user":
            return m.message.content
    return newest[0].message.content if newest else None


def _in_time_order(items: Sequence[Item]) -> list[Item]:
    """Sessions by time (their earliest item's), each session's items in log order."""
    starts: dict[str, tuple[datetime, Position]] = {}
    for i in items:
        at = (i.message.created_at, i.position)
        s = i.message.session_id
        if s not in starts or at < starts[s]:
            starts[s] = at
    return sorted(
        items, key=lambda i: (starts[i.message.session_id], i.message.session_id, i.position)
    )
