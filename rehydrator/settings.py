"""How ``rehydrate`` reads: deadlines, hedging, candidate depths. Built at entry points only."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field


@dataclass(frozen=True, kw_only=True, slots=True)
class RehydrateSettings:
    deadline_ms: int = 80
    """Every tier read must answer within this much of the call's start, or is left out."""
    tier_deadline_ms: Mapping[str, int] = field(default_factory=lambda: {"graph": 25})
    """Tighter deadlines of single tiers. The graph only adds provenance to what the other
    tiers ranked, and a hub entity (a speaker named in every turn) can make its query slow:
    it must not hold up the answer."""
    hedge_after_ms: int = 20
    """A redundant store is asked too when the one asked before has not answered by then."""
    recent_turns: int = 4
    """The session's last turns, always in the context (when they fit the budget)."""
    candidates: int = 200
    """Hits asked of each index (dense, full text) per call, over the whole scope: what
    bounds a call's work, whatever the history's length (never the age of a turn)."""
    log_tail_entries: int = 20_000
    """Most partition entries scanned for messages past the watermarks (read-your-writes)."""
    concurrency: int = 2
    """Calls served at once; more wait their turn. The tiers' deadlines start when a call's
    turn comes: under overload, calls queue instead of all missing their deadlines."""
    hot_rows: int = 200_000
    """Turns (and as many vectors) kept in memory for the scopes used last, about 1.7 KB
    each (see :mod:`rehydrator.hot_index`); 0: none, every call reads the stores."""

    def __post_init__(self) -> None:
        for name in (
            "deadline_ms",
            "hedge_after_ms",
            "candidates",
            "log_tail_entries",
            "concurrency",
        ):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be at least 1, not {getattr(self, name)}")
        for tier, ms in self.tier_deadline_ms.items():
            if ms < 1:
                raise ValueError(f"the deadline of tier {tier!r} must be at least 1 ms, not {ms}")
        if self.hot_rows < 0:
            raise ValueError(f"hot_rows must be at least 0, not {self.hot_rows}")
        if self.recent_turns < 0:
            raise ValueError(f"recent_turns must be at least 0, not {self.recent_turns}")
