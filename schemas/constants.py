"""Key and group names: the only place they are spelled out.

Every key of partition ``N`` carries the hash tag ``{N}`` so that its stream and the
producer's dedup keys share one Redis Cluster slot and one server-side script can touch
both.
"""

from __future__ import annotations

KEY_PREFIX = "amem"
META_KEY = f"{KEY_PREFIX}:meta"
"""Hash recording the log's fixed facts (``partitions``, ``format``) on first use."""
META_PARTITIONS_FIELD = "partitions"
META_FORMAT_FIELD = "format"
LOG_FORMAT = "1"

ENTRY_FIELD = "event"
"""The single stream-entry field that holds the JSON envelope."""

DEDUP_SEPARATOR = "|"
"""Joins tenant, session and message id in a dedup key; ids can never contain it."""


def log_key(partition: int) -> str:
    """Stream key of one partition of the log."""
    return f"{KEY_PREFIX}:log:{{{partition}}}"


def dedup_key(partition: int, kind: str, tenant_id: str, session_id: str, ident: str) -> str:
    """Producer dedup key of one event; same hash tag as its partition's stream.

    ``kind`` is ``msg`` (``ident`` = message id), ``erase`` or ``redact`` (``ident`` = event
    id: every erase and redaction is appended, however many name the same session or message).
    """
    joined = DEDUP_SEPARATOR.join((kind, tenant_id, session_id, ident))
    return f"{KEY_PREFIX}:dedup:{{{partition}}}:{joined}"


# Projectors. Each projector is one consumer group; its dead letters and the last error of
# each failing entry live under its own name.
GROUP_PREFIX = f"{KEY_PREFIX}:"
ENRICHER = "enricher"
"""Computes embedding, token count and entities once per message into the enriched stream."""
ARCHIVE = "archive"
"""Keeps every valid event and its enrichment in Postgres: the log below the hot window."""


def group_name(projector: str) -> str:
    """Consumer group of one projector (the same name on every stream it reads)."""
    return f"{GROUP_PREFIX}{projector}"


def enriched_key(partition: int) -> str:
    """Derived stream of partition ``N``: each log entry with its enrichment, in log order.

    Same hash tag as the log partition, so the enricher can ``XADD`` here and ``XACK`` the
    log entry in one transaction.
    """
    return f"{KEY_PREFIX}:enriched:{{{partition}}}"


def dlq_key(projector: str) -> str:
    """Dead-letter stream of one projector: the original entry, its stream and the reason."""
    return f"{KEY_PREFIX}:dlq:{projector}"


def errors_key(projector: str) -> str:
    """Hash of the last apply error per pending entry (``<stream>|<id>``), read at reclaim."""
    return f"{KEY_PREFIX}:errors:{projector}"


def erasures_key(partition: int) -> str:
    """Hash of partition ``N``'s erase and redaction events whose session (or message) is
    still to be purged from the log server: log entry id → ``<enriched entry id> <envelope>``.

    The enricher adds each one as it forwards it (same script, same slot); the purge
    removes it once every group has applied it and nothing it covers is left.
    """
    return f"{KEY_PREFIX}:erasures:{{{partition}}}"


def embedded_counter_key(partition: int) -> str:
    """Messages of partition ``N`` the enricher embedded and stored, ever.

    Incremented by the same script that appends the enriched entry, so it counts each
    message once; a rebuild that reuses stored vectors leaves it unchanged.
    """
    return f"{KEY_PREFIX}:stats:embedded:{{{partition}}}"


TRIM_LOCK_KEY = f"{KEY_PREFIX}:retention:lock"
"""Held by the worker that trims the streams this round; the others skip it."""


def backfill_key(partition: int, projector: str) -> str:
    """Set while a new group of ``projector`` on partition ``N`` is replaying the archive;
    a worker that finds it at start (the last one died mid-way) replays again."""
    return f"{KEY_PREFIX}:backfill:{{{partition}}}:{projector}"


def digest_request_key(projector: str) -> str:
    """List on which the worker running a projector answers digest requests (for ``verify``
    of a store only that worker may open, such as Qdrant in local mode)."""
    return f"{KEY_PREFIX}:rpc:digest:{projector}"


GENERATIONS_KEY = f"{KEY_PREFIX}:generations"
"""Hash: per projection its live generation (``<name>``), the one a rebuild builds
(``<name>:building``) and the one it replaced (``<name>:retired``), and an ``epoch`` every
change bumps (projectors.generations)."""
GENERATIONS_SEEN_KEY = f"{KEY_PREFIX}:generations:seen"
"""Hash ``<projection>|<consumer>`` → the newest epoch that consumer applies batches under."""


def model_embedded_key(model: str) -> str:
    """Messages embedded with ``model`` by a generation kept in another model than the
    enricher's (a model swap), counted as their vectors are archived: once per message."""
    return f"{KEY_PREFIX}:stats:embedded-model:{model}"


def generation_lease_key(projection: str) -> str:
    """Held by the worker doing a rebuild step of ``projection`` (build or drop).

    Its hash tag is the registry's whole name, so both share a Redis Cluster slot: the
    scripts that switch generations check the lease and change the registry at once.
    """
    return f"{{{GENERATIONS_KEY}}}:lease:{projection}"


def generation_progress_key(projection: str) -> str:
    """Hash of the rebuild under way of ``projection``: generation, holder, events applied."""
    return f"{KEY_PREFIX}:generations:progress:{projection}"
