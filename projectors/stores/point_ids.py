"""Deterministic object ids for the vector stores (Qdrant points, Weaviate objects).

A repeat of a message lands on the same id whatever the worker, so an upsert overwrites it
instead of adding a copy. The parts are joined with :data:`DEDUP_SEPARATOR`, which no id can
contain, so two different triples never hash the same name.
"""

from __future__ import annotations

import uuid
from typing import Final

from projectors.position import Position
from schemas.constants import DEDUP_SEPARATOR

NAMESPACE: Final = uuid.UUID("24869f9d-538b-4c2e-8273-ebc777bcabe6")
"""UUIDv5 namespace of every Atomic Memory id. Never change it: that re-keys every stored point."""


def message_uuid(tenant_id: str, session_id: str, message_id: str) -> uuid.UUID:
    """Id of one message: UUIDv5 of ``(tenant, session, message id)``."""
    return uuid.uuid5(NAMESPACE, DEDUP_SEPARATOR.join(("msg", tenant_id, session_id, message_id)))


def erasure_uuid(tenant_id: str, session_id: str, position: Position) -> uuid.UUID:
    """Id of one erase tombstone: UUIDv5 of ``(tenant, session, erase position)``.

    One object per erase event (not per session) makes writing a tombstone a blind upsert:
    readers take the furthest, so no read-then-write race can lose it.
    """
    return uuid.uuid5(
        NAMESPACE, DEDUP_SEPARATOR.join(("erase", tenant_id, session_id, str(position)))
    )


def redaction_uuid(
    tenant_id: str, session_id: str, message_id: str, position: Position
) -> uuid.UUID:
    """Id of one redaction tombstone: UUIDv5 of ``(tenant, session, message id, position)``,
    one object per redaction event as for :func:`erasure_uuid`."""
    return uuid.uuid5(
        NAMESPACE,
        DEDUP_SEPARATOR.join(("redact", tenant_id, session_id, message_id, str(position))),
    )
