"""All ``AMEM_*`` settings in one frozen object, read from the environment at entry points.

The table in ``docs/configuration.md`` documents every variable; keep the two in step.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import unquote, urlsplit, urlunsplit

from producer.settings import ProducerSettings, parse_durability
from projectors.generations import RebuildPolicy
from projectors.retention import RetainWindow
from projectors.settings import DEFAULT_RETAIN, RuntimeSettings
from rehydrator.http_keys import parse_api_keys
from rehydrator.settings import RehydrateSettings
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
    qdrant_url: str | None = None
    """Qdrant server; unset: Qdrant local mode under ``$AMEM_HOME/qdrant`` (one owning process)."""
    neo4j_url: str | None = None
    """Neo4j for the graph projection; unset: FalkorDB inside the log's redis-server."""
    neo4j_user: str = "neo4j"
    neo4j_password: str | None = None
    weaviate_url: str | None = None
    """Weaviate; unset: no Weaviate projection."""
    weaviate_api_key: str | None = None
    projectors: tuple[str, ...] | None = None
    embed_threads: int | None = None
    """torch threads of the enricher (None: torch's default, every core)."""
    metrics_port: int = 0
    """Prometheus metrics of worker i on this port + i (0: none)."""
    """Projectors to run (None: every one whose store is configured)."""
    runtime: RuntimeSettings = field(default_factory=RuntimeSettings)
    rehydrate: RehydrateSettings = field(default_factory=RehydrateSettings)
    rehydrate_threads: int = 1
    """onnxruntime threads of the query embedding (one query at a time: 1 keeps a core free)."""
    redis_appendfsync: str = "everysec"
    redis_port: int = 0
    cluster_node_timeout_ms: int = 5000
    """``cluster-node-timeout`` of an embedded cluster: how long a master may be unreachable
    before its replica takes over."""
    mongo_port: int = 0
    api_keys: Mapping[str, str] = field(default_factory=dict, repr=False)
    """HTTP API key → tenant (``AMEM_API_KEYS``); empty: local mode, on loopback only."""
    http_host: str = "127.0.0.1"
    http_port: int = 8080
    erase_wait_s: float = 30.0
    """How long ``DELETE …?wait=true`` waits for an erase to reach everything (then 504)."""

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
            failover_wait_s=_int(env, "AMEM_FAILOVER_WAIT_S", 30),
            limits=limits,
        )
        runtime = RuntimeSettings(
            partitions=producer.partitions,
            batch_size=_int(env, "AMEM_BATCH_SIZE", 256),
            max_wait_ms=_int(env, "AMEM_MAX_WAIT_MS", 200),
            reclaim_idle_ms=_int(env, "AMEM_RECLAIM_IDLE_MS", 30_000),
            max_deliveries=_int(env, "AMEM_MAX_DELIVERIES", 5),
            graceful_timeout_s=_int(env, "AMEM_GRACEFUL_TIMEOUT_S", 30),
            limits=limits,
            retain=RetainWindow.parse(env.get("AMEM_LOG_RETAIN", str(DEFAULT_RETAIN))),
            trim_interval_s=_int(env, "AMEM_LOG_TRIM_INTERVAL_S", 60, minimum=0),
            rebuild=RebuildPolicy(
                lease_s=_int(env, "AMEM_REBUILD_LEASE_S", 30),
                grace_s=_int(env, "AMEM_REBUILD_GRACE_S", 10, minimum=0),
            ),
        )
        rehydrate = RehydrateSettings(
            deadline_ms=_int(env, "AMEM_REHYDRATE_DEADLINE_MS", 80),
            hedge_after_ms=_int(env, "AMEM_REHYDRATE_HEDGE_MS", 20),
            recent_turns=_int(env, "AMEM_REHYDRATE_RECENT_TURNS", 4, minimum=0),
            candidates=_int(env, "AMEM_REHYDRATE_CANDIDATES", 200),
            log_tail_entries=_int(env, "AMEM_REHYDRATE_LOG_TAIL_ENTRIES", 20_000),
            concurrency=_int(env, "AMEM_REHYDRATE_CONCURRENCY", 2),
            hot_rows=_int(env, "AMEM_REHYDRATE_HOT_ROWS", 200_000, minimum=0),
            tier_deadline_ms=_tier_deadlines(env.get("AMEM_REHYDRATE_TIER_DEADLINES", "graph=25")),
        )
        names = env.get("AMEM_PROJECTORS") or ""
        neo4j_url, neo4j_user, neo4j_password = _credentials(env.get("AMEM_NEO4J_URL") or None)
        return cls(
            home=home,
            qdrant_url=env.get("AMEM_QDRANT_URL") or None,
            neo4j_url=neo4j_url,
            neo4j_user=env.get("AMEM_NEO4J_USER") or neo4j_user or "neo4j",
            neo4j_password=env.get("AMEM_NEO4J_PASSWORD") or neo4j_password,
            weaviate_url=env.get("AMEM_WEAVIATE_URL") or None,
            weaviate_api_key=env.get("AMEM_WEAVIATE_API_KEY") or None,
            projectors=tuple(n.strip() for n in names.split(",") if n.strip()) or None,
            embed_threads=_int(env, "AMEM_EMBED_THREADS", 0, minimum=0) or None,
            metrics_port=_int(env, "AMEM_METRICS_PORT", 0, minimum=0),
            runtime=runtime,
            rehydrate=rehydrate,
            rehydrate_threads=_int(env, "AMEM_REHYDRATE_THREADS", 1),
            redis_url=env.get("AMEM_REDIS_URL") or running.get("redis"),
            postgres_url=env.get("AMEM_POSTGRES_URL") or running.get("postgres"),
            mongo_url=env.get("AMEM_MONGO_URL") or running.get("mongo"),
            producer=producer,
            redis_appendfsync=appendfsync,
            redis_port=_int(env, "AMEM_REDIS_PORT", 0, minimum=0),
            cluster_node_timeout_ms=_int(env, "AMEM_CLUSTER_NODE_TIMEOUT_MS", 5000, minimum=100),
            mongo_port=_int(env, "AMEM_MONGO_PORT", 0, minimum=0),
            api_keys=parse_api_keys(env.get("AMEM_API_KEYS") or ""),
            http_host=env.get("AMEM_HTTP_HOST") or "127.0.0.1",
            http_port=_int(env, "AMEM_HTTP_PORT", 8080),
            erase_wait_s=_int(env, "AMEM_ERASE_WAIT_S", 30),
        )

    @property
    def qdrant_path(self) -> Path:
        return self.home / "qdrant"

    def require_redis(self) -> str:
        if self.redis_url is None:
            raise ConfigurationError(
                f"no log server: run `amem up` (AMEM_HOME={self.home}) or set AMEM_REDIS_URL"
            )
        return self.redis_url

    def require_postgres(self) -> str:
        if self.postgres_url is None:
            raise ConfigurationError(
                f"no Postgres: run `amem up` (AMEM_HOME={self.home}) or set AMEM_POSTGRES_URL"
            )
        return self.postgres_url

    def require_mongo(self) -> str:
        if self.mongo_url is None:
            raise ConfigurationError(
                f"no MongoDB: run `amem up` (AMEM_HOME={self.home}) or set AMEM_MONGO_URL"
            )
        return self.mongo_url


def _credentials(url: str | None) -> tuple[str | None, str | None, str | None]:
    """Split ``bolt://user:password@host`` into a URL the driver takes and the credentials."""
    if url is None:
        return None, None, None
    parts = urlsplit(url)
    if parts.username is None:
        return url, None, None
    host = parts.hostname or ""
    netloc = f"{host}:{parts.port}" if parts.port else host
    bare = urlunsplit((parts.scheme, netloc, parts.path, parts.query, parts.fragment))
    password = unquote(parts.password) if parts.password is not None else None
    return bare, unquote(parts.username), password


def _tier_deadlines(raw: str) -> dict[str, int]:
    """``tier=ms`` pairs, comma-separated (``graph=25,session=40``)."""
    out = {}
    for pair in filter(None, (p.strip() for p in raw.split(","))):
        tier, sep, ms = pair.partition("=")
        if not sep or not ms.strip().isdigit() or int(ms) < 1:
            raise ConfigurationError(
                f"AMEM_REHYDRATE_TIER_DEADLINES: expected tier=milliseconds, got {pair!r}"
            )
        out[tier.strip()] = int(ms)
    return out


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
