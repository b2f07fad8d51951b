"""Latency of ``rehydrate`` at 2,000 tokens as history grows, and its throughput.

Run from the repository root::

    .venv/bin/python bench/rehydrate.py [FILE] [--history 500,5000,50000] [--users 200]
        [--calls 1000] [--concurrency 16] [--serve-workers 1,2] [--json]

Cases, each asked LoCoMo's questions (``../shared/data/locomo-dev.json`` by default), query
embedding included, every embedded tier up:

- ``locomo``: the file as imported, one session per conversation, each question in its own;
- ``session of N turns`` for each ``--history`` N: one session of LoCoMo's turns repeated
  with fresh ids and later dates (``bench/history.py``);
- ``user with U sessions``: one user with ``--users`` sessions (LoCoMo's sessions repeated),
  each question asked from a new, empty session of that user with ``scope="user"``.

A throw-away embedded stack (``--home`` reuses one) holds them, projected by a worker that is
then stopped, so the calls run alone; the enriched stream is written as the enricher would,
each distinct text embedded once (``bench/history.py``). Each case is warmed until its
scope's in-memory copy serves (the first calls of a scope read the stores while it loads),
then measured one call at a time (latency, per tier) and ``--concurrency`` at once from one
event loop (throughput). Last, ``amem serve --workers W`` for each ``--serve-workers`` W is
driven over HTTP by ``--concurrency`` clients cycling through the cases (throughput of the
served API; the clients share the machine's two cores with the servers). Writes
``rehydrate.json`` and ``rehydrate.md`` to ``--out`` (default ``bench/reports``). A
measurement, not a test.
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import os
import socket
import statistics
import subprocess
import sys
import time
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
from history import long_session, user_sessions
from pipeline import err, parser, project, publish, read_messages, stack
from recall import questions
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TimeElapsedColumn

from projectors.enrichment.embedder import Embedder
from rehydrator.context import Context
from rehydrator.rehydrate import Rehydrator, ScopeName
from stack.rehydration import open_rehydrator
from stack.settings import Settings

TENANT = "bench-rehydrate"
BUDGET = 2000
WARM_UP = 50
USER = "returning-user"


@dataclass(frozen=True, slots=True)
class Case:
    name: str
    turns: int
    """Turns in the scope a call ranks."""
    asks: list[tuple[str, str]]
    """(session, question) pairs, cycled."""
    scope: ScopeName = "session"
    user_id: str | None = None


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


async def ask(rehydrator: Rehydrator, case: Case, session: str, question: str) -> Context:
    return await rehydrator.rehydrate(
        TENANT, session, question, BUDGET, scope=case.scope, user_id=case.user_id
    )


async def warm(rehydrator: Rehydrator, case: Case) -> None:
    """Each scope's copy loaded, then a few calls (pools, caches)."""
    for session in dict.fromkeys(s for s, _ in case.asks):
        await rehydrator.prepare(TENANT, session, scope=case.scope, user_id=case.user_id)
    for session, question in case.asks[:WARM_UP]:
        await ask(rehydrator, case, session, question)


async def one_at_a_time(rehydrator: Rehydrator, case: Case, calls: int) -> dict[str, Any]:
    walls: list[float] = []
    tiers: dict[str, list[float]] = defaultdict(list)
    degraded = 0
    from_memory = 0
    with Progress(
        f"{case.name}: one at a time",
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        console=err,
    ) as bar:
        task = bar.add_task("calls", total=calls)
        for session, question in itertools.islice(itertools.cycle(case.asks), calls):
            started = time.perf_counter()
            context = await ask(rehydrator, case, session, question)
            walls.append((time.perf_counter() - started) * 1000)
            degraded += bool(context.degraded)
            from_memory += any(t.tier == "dense" and t.store == "memory" for t in context.tiers)
            for t in context.tiers:
                if t.status == "ok":
                    tiers[t.tier].append(t.ms)
            bar.advance(task)
    return {
        "calls": calls,
        "latency_ms": summary(walls),
        "tier_ms": {t: summary(v) for t, v in tiers.items()},
        "degraded_calls": degraded,
        "calls_from_memory": from_memory,
    }


async def concurrent(
    rehydrator: Rehydrator, case: Case, calls: int, callers: int
) -> dict[str, Any]:
    work = iter(itertools.islice(itertools.cycle(case.asks), calls))
    walls: list[float] = []
    queued: list[float] = []
    degraded = 0

    async def caller() -> None:
        nonlocal degraded
        for session, question in work:
            started = time.perf_counter()
            context = await ask(rehydrator, case, session, question)
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


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def body(case: Case, question: str) -> dict[str, Any]:
    asked: dict[str, Any] = {"query": question, "budget_tokens": BUDGET, "scope": case.scope}
    if case.user_id is not None:
        asked["user_id"] = case.user_id
    return asked


async def served(
    settings: Settings, cases: Sequence[Case], workers: int, calls: int, callers: int
) -> dict[str, Any]:
    """``amem serve --workers`` driven over HTTP by ``callers`` clients cycling the cases."""
    port = free_port()
    env = {**os.environ, "AMEM_HOME": str(settings.home), "AMEM_LOG_LEVEL": "WARNING"}
    amem = Path(sys.executable).parent / "amem"
    server = subprocess.Popen(  # noqa: ASYNC220 - started once, before anything is timed
        [str(amem), "serve", "--port", str(port), "--workers", str(workers)],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    url = f"http://127.0.0.1:{port}"
    work = [
        (case, session, question)
        for group in itertools.zip_longest(*(c.asks for c in cases))
        for case, item in zip(cases, group, strict=True)
        if item is not None
        for session, question in [item]
    ]
    try:
        async with httpx.AsyncClient(base_url=url, timeout=30) as client:
            deadline = time.monotonic() + 120
            while True:
                try:
                    if (await client.get("/v1/health")).status_code == 200:
                        break
                except httpx.TransportError:
                    pass
                if time.monotonic() > deadline or server.poll() is not None:
                    raise SystemExit("amem serve did not start")
                await asyncio.sleep(0.2)

            async def post(case: Case, session: str, question: str) -> dict[str, Any]:
                response = await client.post(
                    f"/v1/sessions/{session}/rehydrate", json=body(case, question)
                )
                response.raise_for_status()
                result: dict[str, Any] = response.json()
                return result

            # Warm every process: until a round of concurrent calls is served from memory.
            for _ in range(60):
                got = await asyncio.gather(
                    *(post(c, *c.asks[0]) for c in cases for _ in range(2 * workers))
                )
                stores = {t["store"] for g in got for t in g["tiers"] if t["tier"] == "dense"}
                if stores == {"memory"}:
                    break
                await asyncio.sleep(1)
            queue = iter(itertools.islice(itertools.cycle(work), calls))
            walls: list[float] = []
            degraded = 0

            async def caller() -> None:
                nonlocal degraded
                for case, session, question in queue:
                    started = time.perf_counter()
                    got = await post(case, session, question)
                    walls.append((time.perf_counter() - started) * 1000)
                    degraded += bool(got["degraded"])

            started = time.perf_counter()
            await asyncio.gather(*(caller() for _ in range(callers)))
            seconds = time.perf_counter() - started
    finally:
        server.terminate()
        server.wait(60)
    return {
        "workers": workers,
        "callers": callers,
        "calls": calls,
        "calls_per_s": round(calls / seconds, 1),
        "latency_ms": summary(walls),
        "degraded_calls": degraded,
    }


def build_cases(file: Path, history: list[int], users: int) -> tuple[list[Case], list[Any]]:
    asked = [(s, q) for s, q, _ in questions(file)]
    only_questions = [q for _, q in asked]
    cases = [Case("locomo", 0, asked)]
    messages: list[Any] = read_messages(file, TENANT)
    cases[0] = Case("locomo", len(messages) // len({s for s, _ in asked}), asked)
    for n in history:
        session = f"history-{n}"
        messages += long_session(file, TENANT, session, n)
        cases.append(Case(f"session of {n:,} turns", n, [(session, q) for q in only_questions]))
    if users:
        many = user_sessions(file, TENANT, USER, users)
        messages += many
        cases.append(
            Case(
                f"user with {users} sessions",
                len(many),
                [(f"{USER}-new", q) for q in only_questions],
                scope="user",
                user_id=USER,
            )
        )
    return cases, messages


def markdown(report: dict[str, Any]) -> str:
    lines = [
        "# `rehydrate` latency and throughput as history grows",
        "",
        f"Budget {BUDGET} tokens; every embedded tier up (Postgres history and full text,"
        " pgvector, FalkorDB graph, nx-27017 session documents, the log); query embedding"
        f" included; LoCoMo's questions. Measured {report['measured_at']} on"
        f" {report['machine']}. Command: `{report['command']}`.",
        "",
        f"One call at a time, then {report['concurrency']} concurrent callers in one process:",
        "",
        "| case | turns in scope | p50 ms | p99 ms | max ms | degraded | from memory |"
        f" {report['concurrency']} callers: calls/s | their p50 ms |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for case in report["cases"]:
        seq, conc = case["one_at_a_time"], case["concurrent"]
        lat = seq["latency_ms"]
        lines.append(
            f"| {case['name']} | {case['turns']:,} | {lat['p50']} | {lat['p99']} | {lat['max']} |"
            f" {seq['degraded_calls']}/{seq['calls']} | {seq['calls_from_memory']}/{seq['calls']} |"
            f" {conc['calls_per_s']} | {conc['latency_ms']['p50']} |"
        )
    ratio = report.get("p50_ratio_longest_to_shortest")
    if ratio is not None:
        lines += ["", f"p50 of the longest session over p50 of the shortest: **{ratio}**."]
    lines += [
        "",
        "Goal: p50 ≤ 15 ms and p99 ≤ 40 ms in every case; p50 at the longest session within"
        " 1.5 times p50 at the shortest.",
        "",
        f"`amem serve --workers W`, {report['concurrency']} HTTP clients in this process"
        " cycling through the cases (the clients share the two cores with the servers):",
        "",
        "| workers | calls/s | p50 ms | p99 ms | degraded |",
        "|---:|---:|---:|---:|---:|",
    ]
    for s in report["served"]:
        lat = s["latency_ms"]
        lines.append(
            f"| {s['workers']} | {s['calls_per_s']} | {lat['p50']} | {lat['p99']} |"
            f" {s['degraded_calls']}/{s['calls']} |"
        )
    lines += ["", "Per tier, one call at a time (each tier's own wall time), p50 / p99 ms:", ""]
    tiers = sorted({t for c in report["cases"] for t in c["one_at_a_time"]["tier_ms"]})
    lines.append("| case | " + " | ".join(tiers) + " |")
    lines.append("|---|" + "---:|" * len(tiers))
    for case in report["cases"]:
        got = case["one_at_a_time"]["tier_ms"]
        cells = [f"{got[t]['p50']} / {got[t]['p99']}" if t in got else "" for t in tiers]
        lines.append(f"| {case['name']} | " + " | ".join(cells) + " |")
    lines.append("")
    return "\n".join(lines)


async def run(args: argparse.Namespace) -> dict[str, Any]:
    history = [int(n) for n in args.history.split(",") if n]
    cases, messages = build_cases(args.file, history, args.users)
    async with stack(args.home) as settings:
        embedder = Embedder.load()
        try:
            await project(settings, messages, args.timeout, embedder=embedder)
        finally:
            embedder.close()
        measured: list[dict[str, Any]] = []
        async with open_rehydrator(settings) as rehydrator:
            for case in cases:
                await warm(rehydrator, case)
                seq = await one_at_a_time(rehydrator, case, args.calls)
                conc = await concurrent(rehydrator, case, args.calls, args.concurrency)
                measured.append(
                    {
                        "name": case.name,
                        "turns": case.turns,
                        "one_at_a_time": seq,
                        "concurrent": conc,
                    }
                )
        serve = [
            await served(settings, cases, w, args.calls, args.concurrency)
            for w in (int(w) for w in args.serve_workers.split(",") if w)
        ]
    longest = [c for c in measured if c["name"].startswith("session of")]
    ratio = None
    if len(longest) >= 2:
        by_turns = sorted(longest, key=lambda c: c["turns"])
        ratio = round(
            by_turns[-1]["one_at_a_time"]["latency_ms"]["p50"]
            / by_turns[0]["one_at_a_time"]["latency_ms"]["p50"],
            2,
        )
    return {
        "cases": measured,
        "served": serve,
        "p50_ratio_longest_to_shortest": ratio,
        "budget_tokens": BUDGET,
        "concurrency": args.concurrency,
        "messages": len(messages),
    }


def main() -> None:
    args = parser(__doc__.split("\n\n")[0])
    args.add_argument("--history", default="500,5000,50000", help="turns of each long session")
    args.add_argument("--users", type=int, default=200, help="sessions of the returning user")
    args.add_argument("--calls", type=int, default=1000)
    args.add_argument("--concurrency", type=int, default=16)
    args.add_argument("--serve-workers", default="1,2", help="amem serve --workers to measure")
    publish(args.parse_args(), "rehydrate", run, markdown)


if __name__ == "__main__":
    main()
