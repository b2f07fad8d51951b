"""Emptying the log and every selected store: the clean start each fault test and benchmark
begins from. It deletes everything: never point it at data you keep."""

from __future__ import annotations

from logserver import connect
from schemas.constants import ENRICHER
from stack.projections import build_store, select
from stack.settings import Settings


async def reset_everything(settings: Settings) -> None:
    """An empty log (every master of a cluster) and empty stores (their first generation)."""
    client = connect(settings.require_redis())
    try:
        await client.flushdb()
    finally:
        await client.aclose()
    for name in select(settings):
        if name == ENRICHER:
            continue
        store = build_store(settings, name)
        await store.start()
        try:
            await store.reset()
        finally:
            await store.close()
