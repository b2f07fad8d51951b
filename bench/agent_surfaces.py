"""The agent-facing surfaces as memory grows: the OpenAI Agents SDK session at 1, 10 and
100 times a LoCoMo conversation, and a tenant's sessions listed at 200 sessions.

Run from the repository root::

    .venv/bin/python bench/agent_surfaces.py [FILE] [--sizes 600,6000,60000] [--sessions 200]
        [--calls 200] [--json]

For each size N, one session of N items (LoCoMo's turns repeated, ``bench/history.py``)
is written through ``AtomicMemorySession.add_items`` a turn (two items) at a time: the
write path, timed per call. Then, before any projector has run (every read comes from the
log), and again once a worker has projected everything (the enriched stream written as the
enricher would, ``bench/history.py``): ``get_items(limit=20)`` (a run with
``SessionSettings(limit=20)``), ``get_items()`` (the SDK's default: the whole session) and
``recall(budget_tokens=1000)`` (the budgeted context ``docs/openai-agents.md`` shows). Last,
``--sessions`` sessions of 10 items each in one tenant, listed (what the MCP server's
``list_sessions`` asks). The MCP server and the LangChain history call the same
:class:`~surfaces.memory.Memory` methods. Writes ``agent_surfaces.json`` and ``.md`` to
``--out`` (default ``bench/reports``). A measurement, not a test.
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Awaitable, Callable
from typing import Any, cast

from agents.items import TResponseInputItem
from history import enrich, long_session
from pipeline import caught_up, err, parser, publish, stack
from rehydrate import summary
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TimeElapsedColumn

from projectors.enrichment.embedder import Embedder
from rehydrator.errors import HistoryUnavailableError
from stack import worker_pool
from stack.settings import Settings
from surfaces.memory import Memory
from surfaces.openai_agents import AtomicMemorySession

TENANT = "bench-surfaces"
LISTED = "bench-surfaces-listing"
BUDGET = 1000
RECENT = 20


def turns_of(args: argparse.Namespace, n: int) -> list[list[TResponseInputItem]]:
    """``n`` items as turns of two: what a run adds at its end."""
    texts = [m.content for m in long_session(args.file, TENANT, "unused", n)]
    items = [
        {"role": "user" if i % 2 == 0 else "assistant", "content": text}
        for i, text in enumerate(texts)
    ]
    return [cast(list[TResponseInputItem], items[i : i + 2]) for i in range(0, n, 2)]


async def timed(call: Callable[[], Awaitable[Any]], times: int) -> tuple[list[float], Any]:
    spent, last = [], None
    for _ in range(times):
        started = time.perf_counter()
        last = await call()
        spent.append((time.perf_counter() - started) * 1000)
    return spent, last


async def write(session: AtomicMemorySession, turns: list[list[TResponseInputItem]]) -> list[float]:
    spent = []
    with Progress(
        f"add_items {session.session_id}",
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        console=err,
    ) as bar:
        task = bar.add_task("", total=len(turns))
        for turn in turns:
            started = time.perf_counter()
            await session.add_items(turn)
            spent.append((time.perf_counter() - started) * 1000)
            bar.advance(task)
    return spent


async def measured(
    call: Callable[[], Awaitable[list[TResponseInputItem]]], times: int, expected: int
) -> dict[str, Any]:
    """Latencies of ``call`` and the items it gave; or why the log refused it."""
    try:
        spent, got = await timed(call, times)
    except HistoryUnavailableError as exc:
        return {"refused": str(exc)}
    assert len(got) == expected, f"{len(got)} items, not {expected}"
    return {"ms": summary(spent), "items": len(got)}


async def reads(session: AtomicMemorySession, n: int, calls: int) -> dict[str, Any]:
    recalled, context = await timed(lambda: session.recall(budget_tokens=BUDGET), calls)
    return {
        f"get_items_{RECENT}": await measured(
            lambda: session.get_items(limit=RECENT), calls, min(n, RECENT)
        ),
        "get_items_all": await measured(session.get_items, 3, n),
        "recall_ms": summary(recalled),
        "recall_tokens": context.tokens,
        "recall_degraded": list(context.degraded),
    }


async def projected(settings: Settings, timeout_s: float) -> None:
    embedder = Embedder.load()
    try:
        await enrich(settings, embedder)
    finally:
        embedder.close()
    worker_pool.start(settings, None, 1)
    try:
        await caught_up(settings, timeout_s)
    finally:
        worker_pool.stop(settings)


async def run(args: argparse.Namespace) -> dict[str, Any]:
    sizes = [int(n) for n in args.sizes.split(",") if n]
    async with stack(args.home) as settings:
        cases: list[dict[str, Any]] = []
        async with Memory.open(settings) as memory:
            sessions = {
                n: AtomicMemorySession(f"s{n}", memory=memory, tenant_id=TENANT) for n in sizes
            }
            for n, session in sessions.items():
                spent = await write(session, turns_of(args, n))
                cases.append({"items": n, "add_items_ms": summary(spent)})
            for case, session in zip(cases, sessions.values(), strict=True):
                # Each of these reads scans the log past the watermark: far fewer calls.
                calls = max(1, args.calls // 10)
                case["from_the_log"] = await reads(session, case["items"], calls)
            listing = [
                AtomicMemorySession(f"listed-{k}", memory=memory, tenant_id=LISTED)
                for k in range(args.sessions)
            ]
            for k, session in enumerate(listing):
                await session.add_items(turns_of(args, 10)[k % 5])
        await projected(settings, args.timeout)
        async with Memory.open(settings) as memory:
            for case in cases:
                session = AtomicMemorySession(f"s{case['items']}", memory=memory, tenant_id=TENANT)
                await session.recall(budget_tokens=BUDGET)  # loads the in-memory copy
                case["projected"] = await reads(session, case["items"], args.calls)
            listed, found = await timed(lambda: memory.sessions(LISTED, limit=100), args.calls)
            assert len(found) == min(100, args.sessions), len(found)
    return {
        "cases": cases,
        "listing": {"sessions": args.sessions, "limit": 100, "ms": summary(listed)},
        "budget_tokens": BUDGET,
    }


def markdown(report: dict[str, Any]) -> str:
    lines = [
        "# The agent-facing surfaces as memory grows",
        "",
        f"`{report['command']}` on {report['machine']}, {report['measured_at']}.",
        "",
        "One Agents SDK session of N items, written a turn (2 items) at a time; reads before"
        " any projector ran (from the log) and once projected. Milliseconds, p50 / p99"
        " (get_items() all: of 3 calls).",
        "",
        "| items | add_items | when | get_items(limit=20) | get_items() | recall 1000 tokens |",
        "|---|---|---|---|---|---|",
    ]
    for case in report["cases"]:
        add = case["add_items_ms"]
        for when in ("from_the_log", "projected"):
            r = case[when]
            degraded = ", ".join(r["recall_degraded"])
            lines.append(
                f"| {case['items']:,} | {add['p50']} / {add['p99']} | {when.replace('_', ' ')} |"
                f" {_cell(r[f'get_items_{RECENT}'])} | {_cell(r['get_items_all'])} |"
                f" {r['recall_ms']['p50']} / {r['recall_ms']['p99']}"
                f"{' (degraded: ' + degraded + ')' if degraded else ''} |"
            )
    refusals = {
        read["refused"]
        for c in report["cases"]
        for when in ("from_the_log", "projected")
        for read in (c[when][f"get_items_{RECENT}"], c[when]["get_items_all"])
        if "refused" in read
    }
    lines += [f"\nRefused: {r}" for r in sorted(refusals)]
    listing = report["listing"]
    lines += [
        "",
        f"Listing a tenant's sessions ({listing['sessions']} sessions, the latest"
        f" {listing['limit']}): p50 {listing['ms']['p50']} ms, p99 {listing['ms']['p99']} ms.",
        "",
    ]
    return "\n".join(lines)


def _cell(read: dict[str, Any]) -> str:
    if "refused" in read:
        return "refused (projectors behind)"
    return f"{read['ms']['p50']} / {read['ms']['p99']} ({read['items']:,} items)"


def main() -> None:
    p = parser(__doc__ or "")
    p.add_argument("--sizes", default="600,6000,60000", help="items per session")
    p.add_argument("--sessions", type=int, default=200, help="sessions of the listed tenant")
    p.add_argument("--calls", type=int, default=200, help="calls per measured read")
    publish(p.parse_args(), "agent_surfaces", run, markdown)


if __name__ == "__main__":
    main()
