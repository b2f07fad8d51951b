"""Packing ranked turns into a token budget, reading their texts a chunk at a time."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from functools import partial

from projectors.store import MessageKey, SessionSummary, StoredMessage
from rehydrator.call import Call, Pool, merged
from rehydrator.context import Item, TierReport, render
from rehydrator.deadlines import within
from rehydrator.tokens import TokenCounter

MIN_TURN_TOKENS = 4
"""No turn costs less ([CLS], [SEP], a speaker and a word): below this, packing stops."""


@dataclass(frozen=True, slots=True)
class Texts:
    """Where packing reads the texts of turns it has not got: a store, or a copy in memory."""

    store: str
    read: Callable[[list[MessageKey]], Awaitable[list[StoredMessage]]]


async def pack(
    call: Call,
    texts_of: Texts | None,
    counter: TokenCounter,
    tenant_id: str,
    budget: int,
    order: list[MessageKey],
    pool: Pool,
    scores: dict[MessageKey, float],
    session: SessionSummary | None,
) -> tuple[list[Item], int, str | None]:
    """Fill the budget in ``order``, skipping a turn that does not fit.

    Texts not read yet are fetched from the history store a chunk at a time, so a
    small budget reads few rows.
    """
    header = header_line(session)
    used = counter.count([header])[0] if header else 0
    if used > budget:
        header, used = None, 0
    items: list[Item] = []
    chunk = max(16, budget // 25)  # about the turns a budget holds: most fill in one
    start = 0
    fetches: list[TierReport] = []
    while start < len(order) and budget - used >= MIN_TURN_TOKENS:
        ids = order[start : start + chunk]
        start += chunk
        missing = [i for i in ids if i not in pool.stored]
        failed = any(r.status != "ok" for r in fetches)
        if missing and texts_of is not None and not failed:
            fetched, report = await within(
                "messages", texts_of.store, call.left("messages"), partial(texts_of.read, missing)
            )
            fetches.append(report)
            for m in fetched or []:
                pool.stored[(m.message.session_id, m.message.id)] = m
        found = [(i, pool.stored[i]) for i in ids if i in pool.stored]
        stored = [m for _, m in found]
        texts = [render(m.message) for m in stored]
        added = 0
        for (key, m), text, tokens in zip(found, texts, counter.count(texts), strict=True):
            if used + tokens > budget:
                continue  # a shorter turn further down may still fit
            used += tokens
            added += 1
            items.append(
                Item(
                    message=m.message,
                    position=m.position,
                    text=text,
                    tokens=tokens,
                    score=scores.get(key, 0.0),
                    found_by=pool.found_by.get(key, {}),
                )
            )
        if stored and not added:
            break  # a whole chunk too long for what is left: the rest would be too
    if fetches:
        call.reports.append(merged(fetches))
    return items, used, header


def header_line(session: SessionSummary | None) -> str | None:
    if session is None:
        return None
    people = sorted(p.partition(":")[2] or p for p in session.participants)
    return (
        f"Session {session.session_id}: {session.message_count} messages"
        f" between {', '.join(people)},"
        f" {session.first_at:%Y-%m-%d} to {session.last_at:%Y-%m-%d}."
    )
