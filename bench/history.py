"""Long histories for the benchmarks: LoCoMo's turns repeated with fresh ids and later dates.

- :func:`long_session`: one session of ``n`` turns, LoCoMo's 2,760 turns in file order,
  again and again (turn ``i`` is ``t<i>``, a minute after turn ``i - 1``);
- :func:`user_sessions`: one user with ``count`` sessions, LoCoMo's sessions in file order,
  again and again, each a day after the one before.

Both keep each turn's speaker and caption, so speaker names and images work as they do on
LoCoMo. :func:`enrich` writes the enriched stream for the log exactly as the enricher
would, embedding each distinct text once: the histories repeat 2,760 texts, and a text's
vector does not depend on where it is, so this is the enricher's output at a fraction of
its time (embedding 60,000 turns would take about seven minutes here).
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, cast

import numpy as np
import orjson
import redis.asyncio as aioredis

from logserver import connect
from producer.importer import read_history
from projectors.enricher import enriched_entry
from projectors.enrichment.embedder import Embedder
from projectors.records import (
    VECTOR_DTYPE,
)
from schemas.constants import ENRICHER, ENTRY_FIELD, enriched_key, group_name, log_key
from schemas.events import Message
from stack.settings import Settings

START = datetime(2030, 1, 1, tzinfo=UTC)
"""Synthetic histories come after every LoCoMo date."""


def locomo_sessions(path: Path) -> list[list[Message]]:
    """Every LoCoMo session (``session_N`` of a conversation) in file order."""
    sessions: dict[tuple[str, Any], list[Message]] = {}
    for record in read_history(path, "bench"):
        if isinstance(record, Message):
            key = (record.session_id, record.metadata.get("session"))
            sessions.setdefault(key, []).append(record)
    return list(sessions.values())


def _cycle(path: Path) -> Iterator[Message]:
    turns = [m for session in locomo_sessions(path) for m in session]
    while True:
        yield from turns


def long_session(path: Path, tenant: str, session: str, n: int) -> list[Message]:
    """One session of ``n`` turns."""
    turns = _cycle(path)
    return [
        replace(
            next(turns),
            tenant_id=tenant,
            session_id=session,
            id=f"t{i}",
            user_id=None,
            created_at=START + timedelta(minutes=i),
        )
        for i in range(n)
    ]


def user_sessions(path: Path, tenant: str, user: str, count: int) -> list[Message]:
    """``count`` sessions of ``user``, named ``<user>-<k>``."""
    sessions = locomo_sessions(path)
    out = []
    for k in range(count):
        day = START + timedelta(days=k)
        for i, turn in enumerate(sessions[k % len(sessions)]):
            out.append(
                replace(
                    turn,
                    tenant_id=tenant,
                    session_id=f"{user}-{k}",
                    id=f"t{i}",
                    user_id=user,
                    created_at=day + timedelta(minutes=i),
                )
            )
    return out


Entries = list[tuple[bytes, dict[bytes, bytes]]]


async def enrich(settings: Settings, embedder: Embedder) -> int:
    """Write the enriched stream of every log entry the enricher has not taken yet, and
    move the enricher's group past them: what the enricher would do, each distinct text
    embedded once. Returns the entries written."""
    client = connect(settings.require_redis())
    vectors: dict[str, bytes] = {}
    written = 0
    try:
        for n in range(settings.runtime.partitions):
            if not await client.exists(log_key(n)):
                continue
            group = group_name(ENRICHER)
            start = "-"
            groups: list[dict[str, Any]] = await client.xinfo_groups(log_key(n))
            mine = [g for g in groups if g["name"] in (group, group.encode())]
            if mine:
                last = mine[0]["last-delivered-id"]
                start = f"({last.decode() if isinstance(last, bytes) else last}"
            entries = cast(Entries, await client.xrange(log_key(n), start, "+"))
            if not entries:
                continue
            for i in range(0, len(entries), 1000):
                written += await _write(client, embedder, n, entries[i : i + 1000], vectors)
            last_id = entries[-1][0]
            if mine:
                await client.xgroup_setid(log_key(n), group, last_id)
            else:
                await client.xgroup_create(log_key(n), group, last_id)
    finally:
        await client.aclose()
    return written


async def _write(
    client: aioredis.Redis,
    embedder: Embedder,
    partition: int,
    chunk: Entries,
    cache: dict[str, bytes],
) -> int:
    envelopes = [orjson.loads(fields[ENTRY_FIELD.encode()]) for _, fields in chunk]
    texts = [e["payload"].get("content", "") for e in envelopes]
    new = [t for t in dict.fromkeys(texts) if t not in cache]
    for text, vector in zip(new, embedder.embed(new), strict=True):
        cache[text] = np.asarray(vector, dtype=VECTOR_DTYPE).tobytes()
    tokens = embedder.count_tokens(texts)
    async with client.pipeline(transaction=False) as pipe:
        for (entry_id, fields), envelope, text, count in zip(
            chunk, envelopes, texts, tokens, strict=True
        ):
            message = None
            if envelope["type"] == "message.appended":
                message = (cache[text], count, text, embedder.model_name)
            entry = enriched_entry(fields[ENTRY_FIELD.encode()], entry_id, message)
            pipe.xadd(enriched_key(partition), entry)
        await pipe.execute()
    return len(chunk)
