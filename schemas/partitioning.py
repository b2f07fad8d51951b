"""Session → partition: a stable hash any language can compute.

``partition = uint64_be(sha256(utf8(tenant_id) || 0x00 || utf8(session_id))[0:8]) mod P``

Test vectors are published in ``docs/wire-format.md`` and checked by the tests.
"""

from __future__ import annotations

import hashlib


def partition_for(tenant_id: str, session_id: str, partitions: int) -> int:
    if partitions < 1:
        raise ValueError(f"partitions must be at least 1, got {partitions}")
    digest = hashlib.sha256(f"{tenant_id}\x00{session_id}".encode()).digest()
    return int.from_bytes(digest[:8], "big") % partitions
