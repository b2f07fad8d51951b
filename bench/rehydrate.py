"""Latency of ``rehydrate`` at 2,000 tokens with every embedded tier up, and its throughput
at 16 concurrent callers.

Run from the repository root::

    .venv/bin/python bench/rehydrate.py [FILE] [--calls 1000] [--concurrency 16] [--json]

LoCoMo (``../shared/data/locomo-dev.json`` by default) is imported into a throw-away
embedded stack and projected by a worker, which is then stopped so that the calls run
alone. Each call asks one LoCoMo question of its conversation through
``Rehydrator.rehydrate`` (query embedding included, as an agent's call would be), one at a
time for the latency figures, then ``--concurrency`` at once from one event loop (one
process, as one ``amem serve`` runs them) for the throughput. Per-tier times are each tier's
own wall time within the call. Writes ``rehydrate.json`` and ``rehydrate.md`` to ``--out``
(default ``bench/reports``). A measurement, not a test.
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import statistics
import time
from collections import defaultdict
from typing import Any

from pipeline import err, parser, projected, publish
from recall import questions
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TimeElapsedColumn

from rehydrator.context import Context
from rehydrator.rehydrate import Rehydrator
from stack.rehydration import open_rehydrator

TENANT = "bench-rehydrate"
BUDGET = 2000
WARM_UP = 50


def percentile(values: list[float], p: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(p / 100 * (len(ordered) - 1)))]


def summary(values: list[float]) -> dict[str, float]:
    return {
        "p50": round(percentile(values, 50), 2),
        "p99": round(percentile(values, 99), 2),
        "mean": round(statistics.fmean(values), 2),
        "max": round(max(values), 2),
    }


async def one_at_a_time(
    rehydrator: Rehydrator, asked: list[tuple[str, str]], calls: int
) -> dict[str, Any]:
    walls: list[float] = []
    tiers: dict[str, list[float]] = defaultdict(list)
    degraded = 0
    with Progress(
        "one at a time", BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(), console=err
    ) as bar:
        task = bar.add_task("calls", total=calls)
        for session, question in itertools.islice(itertools.cycle(asked), calls):
            started = time.perf_counter()
            context: Context = await rehydrator.rehydrate(TENANT, session, question, BUDGET)
            walls.append((time.perf_counter() - started) * 1000)
            degraded += bool(context.degraded)
            for t in context.tiers:
                if t.status == "ok":
                    tiers[t.tier].append(t.ms)
            bar.advance(task)
    return {
        "calls": calls,
        "latency_ms": summary(walls),
        "tier_ms": {t: summary(v) for t, v in tiers.items()},
        "degraded_calls": degraded,
    }


async def concurrent(
    rehydrator: Rehydrator, asked: list[tuple[str, str]], calls: int, callers: int
) -> dict[str, Any]:
    work = iter(itertools.islice(itertools.cycle(asked), calls))
    walls: list[float] = []
    queued: list[float] = []
    degraded = 0

    async def caller() -> None:
        nonlocal degraded
        for session, question in work:
            started = time.perf_counter()
            context = await rehydrator.rehydrate(TENANT, session, question, BUDGET)
            walls.append((time.perf_counter() - started) * 1000)
            queued.append(context.queued_ms)
            degraded += bool(context.degraded)

    started = time.perf_counter()
    await asyncio.gather(*(caller() for _ in range(callers)))
    seconds = time.perf_counter() - started
    return {
        "callers": callers,
        "calls": calls,
        "calls_per_s": round(calls / seconds, 1),
        "latency_ms": summary(walls),
        "queued_ms": summary(queued),
        "degraded_calls": degraded,
    }


def markdown(report: dict[str, Any]) -> str:
    seq, conc = report["one_at_a_time"], report["concurrent"]
    lat = seq["latency_ms"]
    lines = [
        "# `rehydrate` latency and throughput",
        "",
        f"{report['messages']} LoCoMo messages in {report['sessions']} sessions; budget"
        f" {BUDGET} tokens; every embedded tier up (Postgres history and full text, pgvector,"
        f" FalkorDB graph, nx-27017 session documents, the log); query embedding included."
        f" Measured {report['measured_at']} on {report['machine']}."
        f" Command: `{report['command']}`.",
        "",
        "| | p50 ms | p99 ms | mean ms | max ms | goal |",
        "|---|---:|---:|---:|---:|---|",
        f"| one call at a time ({seq['calls']} calls) | {lat['p50']} | {lat['p99']} |"
        f" {lat['mean']} | {lat['max']} | p50 ≤ 25, p99 ≤ 60 |",
        f"| {conc['callers']} concurrent callers ({conc['calls']} calls) |"
        f" {conc['latency_ms']['p50']} | {conc['latency_ms']['p99']} |"
        f" {conc['latency_ms']['mean']} | {conc['latency_ms']['max']} | |",
        "",
        f"Throughput at {conc['callers']} concurrent callers: **{conc['calls_per_s']} calls/s**"
        f" (one process, `AMEM_REHYDRATE_CONCURRENCY` calls served at once, the others"
        f" waiting their turn: p50 {conc['queued_ms']['p50']} ms of the concurrent latency"
        f" is that wait). Calls with a degraded tier: {seq['degraded_calls']} one at a time,"
        f" {conc['degraded_calls']} concurrent.",
        "",
        "Per tier, one call at a time (each tier's own wall time; the tiers of the first"
        " phase run concurrently, `graph` and `messages` after ranking):",
        "",
        "| tier | p50 ms | p99 ms |",
        "|---|---:|---:|",
    ]
    for tier, s in seq["tier_ms"].items():
        lines.append(f"| {tier} | {s['p50']} | {s['p99']} |")
    lines.append("")
    return "\n".join(lines)


async def run(args: argparse.Namespace) -> dict[str, Any]:
    asked = [(s, q) for s, q, _ in questions(args.file)]
    async with (
        projected(args.file, TENANT, home=args.home, timeout_s=args.timeout) as (
            settings,
            messages,
        ),
        open_rehydrator(settings) as rehydrator,
    ):
        for session, question in asked[:WARM_UP]:
            await rehydrator.rehydrate(TENANT, session, question, BUDGET)
        seq = await one_at_a_time(rehydrator, asked, args.calls)
        conc = await concurrent(rehydrator, asked, args.calls, args.concurrency)
    return {
        "one_at_a_time": seq,
        "concurrent": conc,
        "budget_tokens": BUDGET,
        "messages": messages,
        "sessions": len({s for s, _ in asked}),
    }


def main() -> None:
    args = parser(__doc__.split("\n\n")[0])
    args.add_argument("--calls", type=int, default=1000)
    args.add_argument("--concurrency", type=int, default=16)
    publish(args.parse_args(), "rehydrate", run, markdown)


if __name__ == "__main__":
    main()
