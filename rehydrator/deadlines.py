"""Reads bounded by a deadline, and hedged reads over redundant stores.

A read that misses its deadline is cancelled but not awaited: a driver may take its time to
unwind a cancelled call (asyncpg cancels on the server, a dead host never answers), and the
caller must not wait for that. The abandoned task is kept referenced until it ends, and
whatever it raises is consumed.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable, Sequence, Sized
from typing import Any, TypeVar

from rehydrator.context import TierReport

T = TypeVar("T")
Read = Callable[[], Awaitable[T]]

_log = logging.getLogger(__name__)
_abandoned: set[asyncio.Future[Any]] = set()


def _settle(task: asyncio.Future[Any]) -> None:
    _abandoned.discard(task)
    if not task.cancelled() and task.exception() is not None:
        _log.debug("abandoned read failed: %r", task.exception())


def abandon(task: asyncio.Future[Any]) -> None:
    """Cancel ``task`` without waiting for it to unwind."""
    if task.done():
        if not task.cancelled():
            task.exception()  # retrieved, so asyncio does not log it as never retrieved
        return
    task.cancel()
    _abandoned.add(task)
    task.add_done_callback(_settle)


def _size(result: object) -> int:
    """How many candidates a read returned (0 for a result that is not a collection)."""
    return len(result) if isinstance(result, Sized) and not isinstance(result, str) else 0


def _describe(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
    return f"{type(exc).__name__}: {text}"[:200] if text else type(exc).__name__


async def within(
    tier: str, store: str | None, deadline_s: float, read: Read[T]
) -> tuple[T | None, TierReport]:
    """Run ``read`` for at most ``deadline_s``; None and a degraded report when it fails."""
    started = time.perf_counter()
    task = asyncio.ensure_future(read())
    done, _ = await asyncio.wait({task}, timeout=deadline_s)
    ms = (time.perf_counter() - started) * 1000
    if not done:
        abandon(task)
        detail = f"no answer within {deadline_s * 1000:.0f} ms"
        return None, TierReport(tier=tier, store=store, status="timeout", ms=ms, detail=detail)
    exc = task.exception()
    if exc is not None:
        report = TierReport(tier=tier, store=store, status="error", ms=ms, detail=_describe(exc))
        return None, report
    result = task.result()
    report = TierReport(tier=tier, store=store, status="ok", ms=ms, candidates=_size(result))
    return result, report


async def hedged(
    tier: str,
    reads: Sequence[tuple[str, Read[T]]],
    *,
    deadline_s: float,
    hedge_after_s: float,
) -> tuple[T | None, TierReport]:
    """The first good answer of redundant stores.

    The first store is asked at once; the next one when the previous has not answered
    within ``hedge_after_s`` or has failed. Slower reads still running are cancelled.
    """
    if not reads:
        return None, TierReport(tier=tier, store=None, status="skipped", ms=0.0)
    started = time.perf_counter()
    deadline = started + deadline_s
    waiting = list(reads)
    running: dict[asyncio.Future[T], str] = {}
    failures: list[str] = []
    try:
        while waiting or running:
            if waiting:
                store, read = waiting.pop(0)
                running[asyncio.ensure_future(read())] = store
            left = deadline - time.perf_counter()
            if left <= 0:
                break
            timeout = min(hedge_after_s, left) if waiting else left
            done, _ = await asyncio.wait(
                set(running), timeout=timeout, return_when=asyncio.FIRST_COMPLETED
            )
            for future in done:
                store = running.pop(future)
                exc = future.exception()
                if exc is None:
                    ms = (time.perf_counter() - started) * 1000
                    others = [s for s, _ in reads if s != store]
                    detail = f"before {', '.join(others)}" if others else None
                    result = future.result()
                    report = TierReport(
                        tier=tier,
                        store=store,
                        status="ok",
                        ms=ms,
                        candidates=_size(result),
                        detail=detail,
                    )
                    return result, report
                failures.append(f"{store}: {_describe(exc)}")
    finally:
        for future in running:
            abandon(future)
    ms = (time.perf_counter() - started) * 1000
    timed_out = len(failures) < len(reads)
    if timed_out:
        failures.append(f"no answer within {deadline_s * 1000:.0f} ms")
    return None, TierReport(
        tier=tier,
        store=",".join(s for s, _ in reads),
        status="timeout" if timed_out else "error",
        ms=ms,
        detail="; ".join(failures),
    )
