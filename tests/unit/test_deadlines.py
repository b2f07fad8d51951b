"""Deadlines and hedging with real tasks and clocks (short ones)."""

from __future__ import annotations

import asyncio
import time

from rehydrator.deadlines import hedged, within


async def answer(value: str, after_s: float) -> str:
    await asyncio.sleep(after_s)
    return value


async def fail(after_s: float) -> str:
    await asyncio.sleep(after_s)
    raise ConnectionError("refused\nsecond line")


async def stubborn() -> str:
    """A read whose driver takes its time to unwind a cancel."""
    try:
        await asyncio.sleep(10)
    except asyncio.CancelledError:
        await asyncio.sleep(0.5)
        raise
    return "never"


async def test_within_returns_at_the_deadline_even_if_the_read_unwinds_slowly() -> None:
    started = time.perf_counter()
    result, report = await within("t", "s", 0.05, stubborn)
    assert time.perf_counter() - started < 0.09
    assert result is None
    assert report.status == "timeout"
    assert report.detail == "no answer within 50 ms"


async def test_within_reports_a_failure_on_one_line() -> None:
    result, report = await within("t", "s", 1.0, lambda: fail(0))
    assert result is None
    assert report.status == "error"
    assert report.detail == "ConnectionError: refused"


async def test_within_counts_what_a_read_returned() -> None:
    result, report = await within("t", "s", 1.0, lambda: asyncio.sleep(0, result=[1, 2, 3]))
    assert result == [1, 2, 3]
    assert report.status == "ok"
    assert report.candidates == 3


async def test_hedge_asks_the_next_store_when_the_first_is_slow() -> None:
    reads = [("slow", lambda: answer("slow", 0.5)), ("quick", lambda: answer("quick", 0.01))]
    started = time.perf_counter()
    result, report = await hedged("t", reads, deadline_s=1.0, hedge_after_s=0.02)
    assert result == "quick"
    assert report.store == "quick"
    assert report.detail == "before slow"
    assert time.perf_counter() - started < 0.2


async def test_hedge_does_not_ask_the_second_store_when_the_first_answers() -> None:
    asked: list[str] = []

    async def tracked(name: str) -> str:
        asked.append(name)
        return name

    reads = [("a", lambda: tracked("a")), ("b", lambda: tracked("b"))]
    result, _ = await hedged("t", reads, deadline_s=1.0, hedge_after_s=0.05)
    assert result == "a"
    assert asked == ["a"]


async def test_hedge_moves_on_at_once_after_a_failure() -> None:
    reads = [("down", lambda: fail(0)), ("up", lambda: answer("up", 0))]
    started = time.perf_counter()
    result, report = await hedged("t", reads, deadline_s=1.0, hedge_after_s=0.5)
    assert result == "up"
    assert report.store == "up"
    assert time.perf_counter() - started < 0.1


async def test_hedge_reports_every_failure_or_the_timeout() -> None:
    both_down = [("a", lambda: fail(0)), ("b", lambda: fail(0))]
    result, report = await hedged("t", both_down, deadline_s=1.0, hedge_after_s=0.01)
    assert result is None
    assert report.status == "error"
    assert report.detail == "a: ConnectionError: refused; b: ConnectionError: refused"
    started = time.perf_counter()
    result, report = await hedged("t", [("x", stubborn)], deadline_s=0.05, hedge_after_s=0.01)
    assert time.perf_counter() - started < 0.09
    assert report.status == "timeout"


async def test_no_store_is_a_skipped_tier() -> None:
    result, report = await hedged("t", [], deadline_s=1.0, hedge_after_s=0.01)
    assert result is None
    assert report.status == "skipped"
