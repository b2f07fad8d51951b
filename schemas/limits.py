"""Validation limits. Defaults are documented in ``docs/configuration.md``."""

from __future__ import annotations

import re
from dataclasses import dataclass

ID_PATTERN = re.compile(r"[A-Za-z0-9._:@/-]+")
ID_ALPHABET = "A-Z a-z 0-9 . _ : @ / -"


@dataclass(frozen=True, kw_only=True, slots=True)
class Limits:
    """Bounds every event must respect; built from ``AMEM_*`` settings at entry points."""

    max_id_chars: int = 128
    max_content_bytes: int = 256 * 1024
    max_metadata_bytes: int = 16 * 1024
    max_metadata_depth: int = 8


DEFAULT_LIMITS = Limits()
