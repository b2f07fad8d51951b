"""Producer settings: frozen, keyword-only, built from the environment at entry points only."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from schemas.errors import ConfigurationError
from schemas.limits import Limits

Durability = Literal["memory", "fsync"]
DURABILITIES: tuple[Durability, ...] = ("memory", "fsync")


def parse_durability(value: str, source: str) -> Durability:
    """``value`` as a :data:`Durability`; ``source`` names the setting or flag in the error."""
    for durability in DURABILITIES:
        if value == durability:
            return durability
    raise ConfigurationError(f"{source} is {value!r}; expected one of {', '.join(DURABILITIES)}")


@dataclass(frozen=True, kw_only=True, slots=True)
class ProducerSettings:
    partitions: int = 8
    durability: Durability = "memory"
    dedup_window_s: int = 24 * 3600
    fsync_timeout_ms: int = 2000
    script_batch: int = 256
    """Entries sent in one script call by ``append_many``; bounds how long the server blocks."""
    reconnect_retries: int = 8
    failover_wait_s: float = 30.0
    """On a cluster: how long an append waits for its partition's slot to be served again
    (a replica taking over a dead master) before it fails with ``LogUnavailableError``."""
    limits: Limits = field(default_factory=Limits)
