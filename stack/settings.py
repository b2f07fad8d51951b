"""All ``AMEM_*`` settings in one frozen object, read from the environment at entry points.

The table in ``docs/configuration.md`` documents every variable; keep the two in step.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from producer.settings import ProducerSettings, parse_durability
from schemas.errors import ConfigurationError
from schemas.limits import Limits
from stack.embedded.state import StackState

APPENDFSYNC_POLICIES = ("always", "everysec", "no")


@dataclass(frozen=True, kw_only=True, slots=True)
class Settings:
    home: Path = Path(".amem")
    redis_url: str | None = None
    postgres_url: str | None = None
    mongo_url: str | None = None
    producer: ProducerSettings = field(default_factory=ProducerSettings)
    redis_appendfsync: str = "everysec"
    redis_port: int = 0
    mongo_port: int = 0

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> Settings:
        env = os.environ if env is None else env
        home = Path(env.get("AMEM_HOME") or ".amem").expanduser().absolute()
        running = StackState.load(home).urls()
        appendfsync = env.get("AMEM_REDIS_APPENDFSYNC", "everysec")
        if appendfsync not in APPENDFSYNC_POLICIES:
            raise ConfigurationError(
                f"AMEM_REDIS_APPENDFSYNC is {appendfsync!r}; expected one of "
                + ", ".join(APPENDFSYNC_POLICIES)
            )
        limits = Limits(
            max_id_chars=_int(env, "AMEM_MAX_ID_CHARS", 128),
            max_content_bytes=_int(env, "AMEM_MAX_CONTENT_BYTES", 256 * 1024),
            max_metadata_bytes=_int(env, "AMEM_MAX_METADATA_BYTES", 16 * 1024),
            max_metadata_depth=_int(env, "AMEM_MAX_METADATA_DEPTH", 8),
        )
        producer = ProducerSettings(
            partitions=_int(env, "AMEM_PARTITIONS", 8),
            durability=parse_durability(env.get("AMEM_DURABILITY", "memory"), "AMEM_DURABILITY"),
            dedup_window_s=_int(env, "AMEM_DEDUP_WINDOW_S", 24 * 3600),
            fsync_timeout_ms=_int(env, "AMEM_FSYNC_TIMEOUT_MS", 2000),
            limits=limits,
        )
        return cls(
            home=home,
            redis_url=env.get("AMEM_REDIS_URL") or running.get("redis"),
            postgres_url=env.get("AMEM_POSTGRES_URL") or running.get("postgres"),
            mongo_url=env.get("AMEM_MONGO_URL") or running.get("mongo"),
            producer=producer,
            redis_appendfsync=appendfsync,
            redis_port=_int(env, "AMEM_REDIS_PORT", 0, minimum=0),
            mongo_port=_int(env, "AMEM_MONGO_PORT", 0, minimum=0),
        )

    def require_redis(self) -> str:
        if self.redis_url is None:
            raise ConfigurationError(
                f"no log server: run `amem up` (AMEM_HOME={self.home}) or set AMEM_REDIS_URL"
            )
        return self.redis_url


def _int(env: Mapping[str, str], name: str, default: int, *, minimum: int = 1) -> int:
    raw = env.get(name)
    if raw is None or raw == "":
        return default
    try:
        value = int(raw)
    except ValueError:
        raise ConfigurationError(f"{name} must be an integer, got {raw!r}") from None
    if value < minimum:
        raise ConfigurationError(f"{name} must be at least {minimum}, got {value}")
    return value
