"""Which stream each projector reads: the stack's table must agree with the stores."""

from __future__ import annotations

from pathlib import Path

import pytest

from stack.projections import STORES, build_store, reads_enriched
from stack.settings import Settings

# Constructing an adapter opens nothing, so unreachable URLs are enough here.
OFFLINE = Settings(
    home=Path("/nonexistent"),
    redis_url="redis://127.0.0.1:1/0",
    postgres_url="postgresql://amem@127.0.0.1:1/amem",
    mongo_url="mongodb://127.0.0.1:1",
    qdrant_url="http://127.0.0.1:1",
    weaviate_url="http://127.0.0.1:1",
)


@pytest.mark.parametrize("name", STORES)
def test_reads_enriched_matches_what_the_store_needs(name: str) -> None:
    assert reads_enriched(name) == build_store(OFFLINE, name).needs_enrichment
