"""How ``rehydrate`` reads: deadlines, hedging, candidate depths. Built at entry points only."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, kw_only=True, slots=True)
class RehydrateSettings:
    deadline_ms: int = 80
    """Every tier read must answer within this much of the call's start, or is left out."""
    hedge_after_ms: int = 10
    """A redundant store is asked too when the one asked before has not answered by then."""
    recent_turns: int = 4
    """The session's last turns, always in the context (when they fit the budget)."""
    candidates: int = 1000
    """Turns of a session ranked per call (its latest), and dense and full-text hits read."""
    log_tail_entries: int = 20_000
    """Most partition entries scanned for messages past the watermarks (read-your-writes)."""

    def __post_init__(self) -> None:
        for name in ("deadline_ms", "hedge_after_ms", "candidates", "log_tail_entries"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be at least 1, not {getattr(self, name)}")
        if self.recent_turns < 0:
            raise ValueError(f"recent_turns must be at least 0, not {self.recent_turns}")
