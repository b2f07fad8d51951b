"""Packing ranked turns into a token budget, reading their texts a chunk at a time."""

from __future__ import annotations

from collections.abc import Awaitable, Callable

from projectors.store import HistoryStore, SessionSummary, StoredMessage
from rehydrator.call import Call, Pool, merged
from rehydrator.context import Item, TierReport, render
from rehydrator.deadlines import within
from rehydrator.tokens import TokenCounter

MIN_TURN_TOKENS = 4
"""No turn costs less ([CLS], [SEP], a speaker and a word): below this, packing stops."""


async def pack(
    call: Call,
    history: HistoryStore | None,
    counter: TokenCounter,
    tenant_id: str,
    session_id: str,
    budget: int,
    order: list[str],
    pool: Pool,
    scores: dict[str, float],
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
        if missing and history is not None and not failed:
            fetched, report = await within(
                "messages",
                history.store,
                call.left("messages"),
                _reader(history, tenant_id, session_id, missing),
            )
            fetches.append(report)
            for m in fetched or []:
                pool.stored[m.message.id] = m
        stored = [pool.stored[i] for i in ids if i in pool.stored]
        texts = [render(m.message) for m in stored]
        added = 0
        for m, text, tokens in zip(stored, texts, counter.count(texts), strict=True):
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
                    score=scores.get(m.message.id, 0.0),
                    found_by=pool.found_by.get(m.message.id, {}),
                )
            )
        if stored and not added:
            break  # a whole chunk too long for what is left: the rest would be too
    if fetches:
        call.reports.append(merged(fetches))
    return items, used, header


def _reader(
    history: HistoryStore, tenant_id: str, session_id: str, message_ids: list[str]
) -> Callable[[], Awaitable[list[StoredMessage]]]:
    return lambda: history.messages(tenant_id, session_id, message_ids)


def header_line(session: SessionSummary | None) -> str | None:
    if session is None:
        return None
    people = sorted(p.partition(":")[2] or p for p in session.participants)
    return (
        f"Session {session.session_id}: {session.message_count} messages"
        f" between {', '.join(people)},"
        f" {session.first_at:%Y-%m-%d} to {session.last_at:%Y-%m-%d}."
    )
