"""The content hash ``verify`` compares: the same function on the log side and in every store."""

from __future__ import annotations

import hashlib


def content_hash(content: str) -> str:
    """Hex SHA-256 of the UTF-8 content; Postgres computes the same with ``sha256()``."""
    return hashlib.sha256(content.encode("utf-8")).hexdigest()
