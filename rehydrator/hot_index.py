"""A hot in-memory copy of a scope's turns, words and vectors, kept exact by the watermarks.

At 50,000 turns Postgres needs about 60 ms for a BM25 query and pgvector about 18 ms for an
exact scan of one session: more than a whole call may take. So the rehydrator keeps, per
scope it serves, a copy of what those two stores hold of the scope, and answers the
``dense`` and ``lexical`` top-K and the neighbour window from memory:

- dense: one matrix-vector product over the scope's unit vectors (cosine = dot product);
- lexical: Okapi BM25 over the history store's own terms (its english lexemes, read with
  the rows), with its statistics over the scope: the same scores as its SQL;
- neighbours: each session's turns in log order;
- the recent window, the texts of the packed turns and the session's summary (the header):
  the history store's rows themselves.

**Exactness.** A copy is only used once it is shown current. Each call reads every
projector's watermark on the scope's partitions (it does anyway, for read-your-writes);
a copy records the watermarks it was built at, and everything at or before a watermark was
applied (hence in the store) before that watermark was read. When a watermark has moved,
the rows past the lowest recorded one and the erases and redactions past it are read from
the store
before the copy answers (a few rows, under live traffic); when one went backwards (a
rebuild), the copy is dropped and loaded again. Rows the store applied past a watermark
(a batch not yet acknowledged) may be in the copy early: the store would return them too.
Messages past the history store's watermark come from the log tail, as without a copy.
A copy that cannot be shown current is not used: the call reads the stores instead, or
reports the tier degraded. Tenant isolation: a copy holds one tenant's scope, loaded
through the store's tenant-filtered reads, and is looked up by tenant and scope.

**Cost.** About 2.5 KB of memory a turn (the vector is 1.5 KB, the message and its terms
the rest); loading costs about one second per 50,000 turns, in the background: until a
copy is loaded, calls read the stores.
Copies are kept for the scopes used last, up to ``max_rows`` turns in all.
"""

from __future__ import annotations

import asyncio
import bisect
import logging
import math
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np
import numpy.typing as npt

from projectors.position import Position
from projectors.store import (
    HistoryStore,
    Hit,
    IndexedTurn,
    MessageKey,
    Scope,
    SessionSummary,
    StoredMessage,
    StoredVectors,
    Turn,
    VectorSource,
    participant,
)
from rehydrator.vector_scan import MIN_ROWS, Int8Segment, best_rows, top

Marks = Mapping[int, Position | None]
"""Partition → a projector's watermark there."""

_GROW = 1.5
_COMPACT_SHARE = 0.5
"""Rebuild a copy's arrays once this share of its rows is dead (erased or replaced)."""


class _Column:
    """A numpy array that grows in place (amortised appends)."""

    def __init__(self, dtype: type) -> None:
        self._values: npt.NDArray[Any] = np.zeros(64, dtype=dtype)
        self.size = 0

    def extend(self, values: Sequence[float] | Sequence[bool]) -> None:
        end = self.size + len(values)
        if end > len(self._values):
            grown = np.zeros(max(end, int(len(self._values) * _GROW)), dtype=self._values.dtype)
            grown[: self.size] = self._values[: self.size]
            self._values = grown
        self._values[self.size : end] = values
        self.size = end

    @property
    def view(self) -> npt.NDArray[Any]:
        return self._values[: self.size]


Postings = tuple[npt.NDArray[np.intp], npt.NDArray[np.float64]]
"""Rows holding a term (dead ones included) and the term's count in each."""


@dataclass(slots=True)
class _Turns:
    """The history store's side of a scope: turns, their terms, each session's order."""

    k1: float
    b: float
    turns: list[Turn] = field(default_factory=list)
    stored: list[StoredMessage] = field(default_factory=list)
    row: dict[MessageKey, int] = field(default_factory=dict)
    alive: _Column = field(default_factory=lambda: _Column(bool))
    lengths: _Column = field(default_factory=lambda: _Column(np.float64))
    postings: dict[str, Postings] = field(default_factory=dict)
    order: dict[str, list[tuple[int, int, int]]] = field(default_factory=dict)
    """Session → (position ms, seq, row) of its live turns, sorted."""
    place: dict[int, int] = field(default_factory=dict)
    """Row → its index in its session's order, for sessions not in ``moved``."""
    moved: set[str] = field(default_factory=set)
    """Sessions whose order changed other than at its end: ``place`` is remade on use."""
    live: int = 0
    live_length: float = 0.0
    summaries: dict[str, SessionSummary | None] = field(default_factory=dict)
    """Session → its summary, made when first asked after a change."""
    names: set[str] = field(default_factory=set)
    """Every speaker name seen in the scope (never shrinks: a hint, not a fact)."""

    def add(self, indexed: Iterable[IndexedTurn]) -> None:
        new: dict[str, tuple[list[int], list[int]]] = {}
        alive: list[bool] = []
        lengths: list[float] = []
        for item in indexed:
            turn = item.turn
            old = self.row.get(turn.key)
            if old is not None:
                if self.alive.view[old] and self.turns[old].position == turn.position:
                    continue  # read again (past the lowest watermark): already here
                self._kill([old])
            row = len(self.turns)
            self.turns.append(turn)
            self.stored.append(item.stored)
            self.row[turn.key] = row
            if turn.name:
                self.names.add(turn.name)
            self.summaries.pop(turn.session_id, None)
            alive.append(True)
            lengths.append(float(len(item.terms)))
            for term, count in item.terms.items():
                rows, counts = new.setdefault(term, ([], []))
                rows.append(row)
                counts.append(count)
            entry = (turn.position.ms, turn.position.seq, row)
            ordered = self.order.setdefault(turn.session_id, [])
            if ordered and entry < ordered[-1]:
                bisect.insort(ordered, entry)
                self.moved.add(turn.session_id)
            else:
                self.place[row] = len(ordered)
                ordered.append(entry)
            self.live += 1
            self.live_length += len(item.terms)
        self.alive.extend(alive)
        self.lengths.extend(lengths)
        for term, (rows, counts) in new.items():
            added: Postings = (np.asarray(rows, dtype=np.intp), np.asarray(counts, np.float64))
            have = self.postings.get(term)
            if have is not None:
                added = (np.concatenate([have[0], added[0]]), np.concatenate([have[1], added[1]]))
            self.postings[term] = added

    def erase(self, erased: Mapping[str, Position]) -> None:
        for session, upto in erased.items():
            bound = (upto.ms, upto.seq)
            self._kill([e[2] for e in self.order.get(session, []) if e[:2] <= bound])

    def redact(self, redacted: Mapping[MessageKey, Position]) -> None:
        alive = self.alive.view
        self._kill(
            [
                row
                for key, upto in redacted.items()
                if (row := self.row.get(key)) is not None
                and alive[row]
                and self.turns[row].position <= upto
            ]
        )

    def _kill(self, rows: Sequence[int]) -> None:
        gone = set(rows)
        if not gone:
            return
        alive, lengths = self.alive.view, self.lengths.view
        for row in gone:
            alive[row] = False
            self.live -= 1
            self.live_length -= float(lengths[row])
        for session in {self.turns[r].session_id for r in gone}:
            self.order[session] = [e for e in self.order[session] if e[2] not in gone]
            self.summaries.pop(session, None)
            self.moved.add(session)

    def recent(self, session_id: str, limit: int) -> list[StoredMessage]:
        """The session's last ``limit`` live messages, log order."""
        ordered = self.order.get(session_id, [])
        return [self.stored[e[2]] for e in ordered[max(0, len(ordered) - limit) :]]

    def messages(self, keys: Iterable[MessageKey]) -> list[StoredMessage]:
        """The given live messages, in log order (as the store gives them)."""
        alive = self.alive.view
        rows = [self.row.get(k) for k in keys]
        found = [self.stored[r] for r in rows if r is not None and alive[r]]
        return sorted(found, key=lambda m: (m.position, m.message.session_id))

    def summary(self, tenant_id: str, session_id: str) -> SessionSummary | None:
        """What the session's document says of it: made once per change of the session."""
        if session_id not in self.summaries:
            ordered = self.order.get(session_id, [])
            found = [self.stored[e[2]].message for e in ordered]
            self.summaries[session_id] = (
                SessionSummary(
                    tenant_id=tenant_id,
                    session_id=session_id,
                    message_count=len(found),
                    participants=frozenset(participant(m.role, m.name) for m in found),
                    first_at=min(m.created_at for m in found),
                    last_at=max(m.created_at for m in found),
                    last_position=Position(*ordered[-1][:2]),
                )
                if found
                else None
            )
        return self.summaries[session_id]

    def needs_compaction(self) -> bool:
        dead = len(self.turns) - self.live
        return dead > 1000 and dead > _COMPACT_SHARE * len(self.turns)

    def lexical(self, terms: Sequence[str], limit: int) -> list[tuple[MessageKey, float]]:
        """Okapi BM25 of ``terms`` over the live turns: the history store's own scores."""
        if not terms or not self.live:
            return []
        alive, lengths = self.alive.view, self.lengths.view
        n = float(self.live)
        average = max(self.live_length / n, 1.0)
        scores = np.zeros(len(self.turns), dtype=np.float64)
        for term in dict.fromkeys(terms):
            if term not in self.postings:
                continue
            rows, counts = self.postings[term]
            keep = alive[rows]
            rows, counts = rows[keep], counts[keep]
            df = float(len(rows))
            if not df:
                continue
            idf = math.log(1 + (n - df + 0.5) / (df + 0.5))
            norm = self.k1 * (1 - self.b + self.b * lengths[rows] / average)
            scores[rows] += idf * counts * (self.k1 + 1) / (counts + norm)
        scores[scores <= 0] = -np.inf
        # The store orders ties by key; so do we, on the few rows returned.
        return sorted(
            (
                (self.turns[r].key, float(scores[r]))
                for r in best_rows(scores, np.flatnonzero(np.isfinite(scores)), limit)
            ),
            key=lambda h: (-h[1], h[0]),
        )

    def around(self, keys: Iterable[MessageKey], radius: int) -> dict[MessageKey, list[Turn]]:
        """Each given live turn's window of ``radius`` live turns either side, log order."""
        windows: dict[MessageKey, list[Turn]] = {}
        alive = self.alive.view
        for key in keys:
            row = self.row.get(key)
            if row is None or not alive[row]:
                continue
            session = key[0]
            if session in self.moved:
                self.place.update((e[2], i) for i, e in enumerate(self.order[session]))
                self.moved.discard(session)
            i = self.place[row]
            window = self.order[session][max(0, i - radius) : i + radius + 1]
            windows[key] = [self.turns[e[2]] for e in window]
        return windows


@dataclass(slots=True)
class _Vectors:
    """The vector store's side of a scope: one unit row per message."""

    keys: list[MessageKey] = field(default_factory=list)
    positions: list[Position] = field(default_factory=list)
    row: dict[MessageKey, int] = field(default_factory=dict)
    matrix: npt.NDArray[np.float32] = field(default_factory=lambda: np.zeros((0, 0), np.float32))
    alive: npt.NDArray[np.bool_] = field(default_factory=lambda: np.zeros(0, bool))
    by_session: dict[str, list[int]] = field(default_factory=dict)
    live: int = 0
    segment: Int8Segment | None = None
    """The first rows quantised for a fast first pass (rows never change once written)."""

    def add(self, stored: StoredVectors) -> None:
        fresh: list[int] = []
        for i, (key, position) in enumerate(zip(stored.keys, stored.positions, strict=True)):
            old = self.row.get(key)
            if old is not None:
                if self.alive[old] and self.positions[old] == position:
                    continue
                self._kill(old)
            fresh.append(i)
        if not fresh:
            return
        start = len(self.keys)
        self._reserve(start + len(fresh), stored.vectors.shape[1])
        self.matrix[start : start + len(fresh)] = stored.vectors[fresh]
        self.alive[start : start + len(fresh)] = True
        for offset, i in enumerate(fresh):
            key = stored.keys[i]
            self.keys.append(key)
            self.positions.append(stored.positions[i])
            self.row[key] = start + offset
            self.by_session.setdefault(key[0], []).append(start + offset)
        self.live += len(fresh)

    def _reserve(self, rows: int, width: int) -> None:
        if self.matrix.shape[1] not in (0, width):
            raise ValueError(f"vectors of {width} dimensions beside {self.matrix.shape[1]}")
        if rows <= len(self.matrix) and self.matrix.shape[1] == width:
            return
        capacity = max(rows, int(len(self.matrix) * _GROW), 64)
        grown = np.zeros((capacity, width), dtype=np.float32)
        alive = np.zeros(capacity, dtype=bool)
        used = len(self.keys)
        if used:
            grown[:used] = self.matrix[:used]
            alive[:used] = self.alive[:used]
        self.matrix, self.alive = grown, alive

    def erase(self, erased: Mapping[str, Position]) -> None:
        for session, upto in erased.items():
            for row in self.by_session.get(session, []):
                if self.alive[row] and self.positions[row] <= upto:
                    self._kill(row)

    def redact(self, redacted: Mapping[MessageKey, Position]) -> None:
        for key, upto in redacted.items():
            row = self.row.get(key)
            if row is not None and self.alive[row] and self.positions[row] <= upto:
                self._kill(row)

    def _kill(self, row: int) -> None:
        self.alive[row] = False
        self.live -= 1

    def needs_compaction(self) -> bool:
        dead = len(self.keys) - self.live
        return dead > 1000 and dead > _COMPACT_SHARE * len(self.keys)

    def search(
        self, limit: int
    ) -> Callable[[npt.NDArray[np.float32]], list[tuple[MessageKey, float]]]:
        """A search of the vectors as they are now, safe to run on another thread while
        this copy takes new rows: written rows never change, and keys only grow."""
        matrix, used, alive, segment, keys = (
            self.matrix,
            len(self.keys),
            self.alive,
            self.segment,
            self.keys,
        )

        def nearest(vector: npt.NDArray[np.float32]) -> list[tuple[MessageKey, float]]:
            if not used or matrix.shape[1] != len(vector):
                return []
            rows, scores = top(matrix, used, alive, vector, limit, segment)
            return [(keys[r], s) for r, s in zip(rows.tolist(), scores.tolist(), strict=True)]

        return nearest

    def unsegmented(self) -> int:
        """Rows past the quantised segment (all of them without one)."""
        return len(self.keys) - (len(self.segment) if self.segment is not None else 0)


@dataclass(slots=True)
class HotIndex:
    """What two stores hold of one tenant's scope, in memory, with the watermarks it is
    exact at (per part: ``turns`` from the history store, ``vectors`` from the vector
    source)."""

    tenant_id: str
    scope: Scope
    turns: _Turns
    vectors: _Vectors
    marks: dict[str, dict[int, Position | None]]
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)

    @property
    def rows(self) -> int:
        """Turns held (with as many vectors): what the copies' budget counts."""
        return max(len(self.turns.turns), len(self.vectors.keys))

    def lexical(self, terms: Sequence[str], limit: int) -> list[Hit]:
        return [
            Hit(session_id=s, message_id=m, score=score)
            for (s, m), score in self.turns.lexical(terms, limit)
        ]

    async def nearest(self, vector: npt.NDArray[np.float32], limit: int) -> list[Hit]:
        """The exact top ``limit`` by cosine; the scan runs off the event loop (milliseconds
        at 50,000 turns), which goes on meanwhile."""
        found = await asyncio.to_thread(self.vectors.search(limit), vector)
        return [Hit(session_id=s, message_id=m, score=score) for (s, m), score in found]

    def around(self, keys: Iterable[MessageKey], radius: int) -> dict[MessageKey, list[Turn]]:
        return self.turns.around(keys, radius)

    def recent(self, session_id: str, limit: int) -> list[StoredMessage]:
        return self.turns.recent(session_id, limit)

    def messages(self, keys: Iterable[MessageKey]) -> list[StoredMessage]:
        return self.turns.messages(keys)

    def summary(self, session_id: str) -> SessionSummary | None:
        return self.turns.summary(self.tenant_id, session_id)


class Stale(Exception):
    """A copy moved backwards (its store was rebuilt): it must be loaded again."""


class _Part(Protocol):
    """One store's side of a copy: what a feed's rows, erases and redactions are applied to."""

    def add(self, rows: Any) -> None: ...

    def erase(self, erased: Mapping[str, Position]) -> None: ...

    def redact(self, redacted: Mapping[MessageKey, Position]) -> None: ...

    def needs_compaction(self) -> bool: ...


@dataclass(frozen=True, slots=True)
class _Feed:
    """Where one part of every copy is read from, and whose watermarks say it is current."""

    projector: str
    rows: Callable[[str, Scope, Position | None], Awaitable[Any]]
    """The scope's rows past a position (None: all of them)."""
    erased_since: Callable[[str, Position | None], Awaitable[dict[str, Position]]]
    redacted_since: Callable[[str, Position | None], Awaitable[dict[MessageKey, Position]]]
    part: Callable[[HotIndex], _Part]
    """The part of a copy this feed keeps."""


class HotIndexes:
    """The copies of the scopes used last, loaded in the background and kept current.

    ``current`` gives a copy shown exact at the given watermarks, or None when there is no
    loaded copy yet (a load starts; the caller reads the stores meanwhile).
    """

    def __init__(
        self,
        history: HistoryStore,
        vectors: VectorSource | None,
        *,
        max_rows: int,
    ) -> None:
        self._max_rows = max_rows
        self._copies: OrderedDict[tuple[str, Scope], HotIndex] = OrderedDict()
        self._loading: dict[tuple[str, Scope], asyncio.Task[None]] = {}
        self._segmenting: dict[tuple[str, Scope], asyncio.Task[None]] = {}
        self._log = logging.getLogger(f"{__name__}.{type(self).__name__}")
        self.use(history, vectors)

    def use(
        self, history: HistoryStore, vectors: VectorSource | None, *, vectors_changed: bool = False
    ) -> None:
        """Copy from these stores from now on (a rebuild switched a generation live).

        The copies made so far stay: a new generation holds what the old one held for the
        same log positions, so their watermarks mean the same there. Unless its vectors are
        another model's (``vectors_changed``): then they go, and load anew.
        """
        if vectors_changed:
            self._copies.clear()
            for loading in self._loading.values():  # from the old vectors
                loading.cancel()
        self._history = history
        self._feeds = [
            _Feed(
                history.store,
                lambda tenant, scope, after: history.scan(tenant, scope=scope, after=after),
                history.erased_since,
                history.redacted_since,
                lambda copy: copy.turns,
            )
        ]
        if vectors is not None:
            self._feeds.append(
                _Feed(
                    vectors.store,
                    lambda tenant, scope, after: vectors.vectors(tenant, scope=scope, after=after),
                    vectors.erased_since,
                    vectors.redacted_since,
                    lambda copy: copy.vectors,
                )
            )

    @property
    def projectors(self) -> list[str]:
        """The projectors whose watermarks the copies follow (one per store copied)."""
        return [feed.projector for feed in self._feeds]

    async def current(
        self, tenant_id: str, scope: Scope, marks: Mapping[str, Marks]
    ) -> HotIndex | None:
        """The scope's copy brought up to ``marks`` (part's projector → partition →
        watermark, read just now), or None while there is none loaded."""
        key = (tenant_id, scope)
        copy = self._copies.get(key)
        if copy is None:
            self._start_loading(key, marks)
            return None
        self._copies.move_to_end(key)
        try:
            async with copy.lock:
                await self._refresh(copy, marks)
        except Stale:
            self._copies.pop(key, None)
            self._start_loading(key, marks)
            return None
        return copy

    async def settle(self) -> None:
        """Wait for the loads (and quantisations) under way: warm-ups of benchmarks."""
        while self._loading or self._segmenting:
            await asyncio.wait({*self._loading.values(), *self._segmenting.values()})

    def names(self, tenant_id: str, scope: Scope) -> set[str]:
        """The speaker names the scope's copy has seen, current or not (empty without a
        copy): what the query is stripped of before it is embedded, known at once."""
        copy = self._copies.get((tenant_id, scope))
        return copy.turns.names if copy is not None else set()

    def _start_loading(self, key: tuple[str, Scope], marks: Mapping[str, Marks]) -> None:
        if key in self._loading or self._max_rows == 0:
            return
        task = asyncio.create_task(self._load(key, {p: dict(m) for p, m in marks.items()}))
        self._loading[key] = task
        task.add_done_callback(lambda _: self._loading.pop(key, None))

    async def _load(
        self, key: tuple[str, Scope], marks: dict[str, dict[int, Position | None]]
    ) -> None:
        tenant_id, scope = key
        try:
            copy = HotIndex(
                tenant_id=tenant_id,
                scope=scope,
                turns=_Turns(k1=self._history.bm25_k1, b=self._history.bm25_b),
                vectors=_Vectors(),
                marks=marks,
            )
            for feed in self._feeds:
                feed.part(copy).add(await feed.rows(tenant_id, scope, None))
        except Exception as exc:  # a failed load only means the stores are read meanwhile
            self._log.warning("loading the copy of %s %s failed: %r", tenant_id, scope, exc)
            return
        self._copies[key] = copy
        self._evict()
        self._start_segmenting(copy)

    def _start_segmenting(self, copy: HotIndex) -> None:
        """Quantise the copy's vectors again, off the loop, when enough rows are past the
        segment (a tenth of them, and at least :data:`MIN_ROWS`)."""
        vectors = copy.vectors
        key = (copy.tenant_id, copy.scope)
        waiting = vectors.unsegmented()
        if key in self._segmenting or waiting < max(MIN_ROWS, len(vectors.keys) // 10):
            return

        async def build() -> None:
            rows = vectors.matrix[: len(vectors.keys)]  # written rows never change
            try:
                vectors.segment = await asyncio.to_thread(Int8Segment, rows)
            except Exception as exc:  # the float32 scan goes on answering
                self._log.warning("quantising %s %s failed: %r", *key, exc)

        task = asyncio.create_task(build())
        self._segmenting[key] = task
        task.add_done_callback(lambda _: self._segmenting.pop(key, None))

    def _evict(self) -> None:
        total = sum(c.rows for c in self._copies.values())
        while total > self._max_rows and len(self._copies) > 1:
            _, dropped = self._copies.popitem(last=False)
            total -= dropped.rows

    async def _refresh(self, copy: HotIndex, marks: Mapping[str, Marks]) -> None:
        for feed in self._feeds:
            now = marks[feed.projector]
            then = copy.marks[feed.projector]
            if all(now.get(p) == then.get(p) for p in {*now, *then}):
                continue
            if any(_behind(now.get(p), then.get(p)) for p in then):
                raise Stale(feed.projector)
            moved = [then.get(p) for p in now if now.get(p) != then.get(p)]
            after = None if any(m is None for m in moved) else min(m for m in moved if m)
            part = feed.part(copy)
            rows = await feed.rows(copy.tenant_id, copy.scope, after)
            erased = await feed.erased_since(copy.tenant_id, after)
            redacted = await feed.redacted_since(copy.tenant_id, after)
            part.add(rows)
            part.erase(erased)
            part.redact(redacted)
            if part.needs_compaction():
                raise Stale(feed.projector)
            copy.marks[feed.projector] = dict(now)
        self._evict()
        self._start_segmenting(copy)


def _behind(now: Position | None, then: Position | None) -> bool:
    if then is None:
        return False
    return now is None or now < then
