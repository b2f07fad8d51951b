"""One ``rehydrate`` call in progress: its deadlines, what each tier said, its candidates."""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable, Iterable, Mapping
from dataclasses import dataclass, field, replace
from typing import TypeVar

from projectors.store import Hit, MessageKey, StoredMessage
from rehydrator.context import TierReport
from rehydrator.deadlines import within

T = TypeVar("T")

FIRST_PHASE_SHARE = 0.7
"""Share of the deadline for the reads ranking needs; the rest is for the graph and texts."""


@dataclass(slots=True)
class Call:
    """One ``rehydrate`` in progress: its deadline and what each tier has said.

    Reads come in two phases: those that ranking needs, bounded by a share of the deadline,
    then those that need the ranking (graph neighbours, the texts of ranked turns), bounded
    by the deadline itself. A first-phase tier that hangs therefore still leaves time for
    the second phase.
    """

    started: float
    deadline_s: float
    tier_deadlines_s: Mapping[str, float]
    reports: list[TierReport] = field(default_factory=list)

    def left(self, tier: str, *, first_phase: bool = False) -> float:
        """Time left for a read of ``tier`` starting now."""
        share = FIRST_PHASE_SHARE if first_phase else 1.0
        left = max(0.0, self.started + self.deadline_s * share - time.perf_counter())
        return min(left, self.tier_deadlines_s.get(tier, left))

    async def within(
        self, tier: str, store: str | None, read: Callable[[], Awaitable[T]]
    ) -> T | None:
        """A first-phase read."""
        result, report = await within(tier, store, self.left(tier, first_phase=True), read)
        self.reports.append(report)
        return result

    def annotate(self, tier: str, detail: str) -> None:
        self.reports = [replace(r, detail=detail) if r.tier == tier else r for r in self.reports]

    def count(self, tier: str, candidates: int) -> None:
        self.reports = [
            replace(r, candidates=candidates) if r.tier == tier else r for r in self.reports
        ]

    def skipped(self, tier: str, why: str) -> None:
        self.reports.append(TierReport(tier=tier, store=None, status="skipped", ms=0, detail=why))


@dataclass(slots=True)
class Pool:
    """Candidate messages: texts known so far and where each was found."""

    stored: dict[MessageKey, StoredMessage] = field(default_factory=dict)
    found_by: dict[MessageKey, dict[str, float]] = field(default_factory=dict)

    def add(self, messages: Iterable[StoredMessage], tier: str) -> None:
        for m in messages:
            key = (m.message.session_id, m.message.id)
            self.stored.setdefault(key, m)
            self.found_by.setdefault(key, {})[tier] = 1.0

    def note(self, hits: Iterable[Hit], tier: str) -> None:
        for h in hits:
            self.found_by.setdefault(h.key, {})[tier] = h.score


def merged(reports: list[TierReport]) -> TierReport:
    """One report for a tier read several times (the first failure, else the total)."""
    failed = [r for r in reports if r.status != "ok"]
    ms = sum(r.ms for r in reports)
    return replace(
        failed[0] if failed else reports[0],
        ms=ms,
        detail=(failed[0].detail if failed else f"{len(reports)} reads"),
    )
