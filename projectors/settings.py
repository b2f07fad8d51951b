"""Runtime settings of the projector workers; built from ``AMEM_*`` at entry points only."""

from __future__ import annotations

from dataclasses import dataclass

from projectors.generations import DEFAULT_REBUILD_POLICY, RebuildPolicy
from projectors.retention import RetainWindow
from schemas.limits import DEFAULT_LIMITS, Limits

DEFAULT_RETAIN = RetainWindow(count=10_000)
"""Each partition's streams keep their newest 10,000 entries (about 35 MB of log-server
memory for 8 partitions); the archive holds everything."""


@dataclass(frozen=True, kw_only=True, slots=True)
class RuntimeSettings:
    partitions: int = 8
    batch_size: int = 256
    """Most entries read per XREADGROUP, applied as one batch."""
    max_wait_ms: int = 200
    """How long one read blocks waiting for entries."""
    reclaim_idle_ms: int = 30_000
    """Entries pending this long (their consumer died or is stuck) are claimed by others."""
    reclaim_poll_ms: int = 1_000
    max_deliveries: int = 5
    """A failing entry is dead-lettered with its last error on this delivery."""
    retry_initial_s: float = 0.1
    retry_max_s: float = 5.0
    """Back-off bounds while a store is unavailable: the batch in hand is retried in place."""
    graceful_timeout_s: float = 30.0
    """On SIGTERM, how long the batch in hand may take to finish."""
    lag_interval_s: float = 5.0
    retain: RetainWindow | None = DEFAULT_RETAIN
    """The hot window each stream keeps; None: nothing is ever trimmed."""
    trim_interval_s: float = 60.0
    """How often one of the workers trims the streams (0: workers never trim)."""
    limits: Limits = DEFAULT_LIMITS
    rebuild: RebuildPolicy = DEFAULT_REBUILD_POLICY
    """How workers take turns at rebuild steps, and how long readers have to move."""
