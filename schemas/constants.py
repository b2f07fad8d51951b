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

    ``kind`` is ``msg`` (``ident`` = message id) or ``erase`` (``ident`` = event id).
    """
    joined = DEDUP_SEPARATOR.join((kind, tenant_id, session_id, ident))
    return f"{KEY_PREFIX}:dedup:{{{partition}}}:{joined}"
