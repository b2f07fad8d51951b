"""Benchmark of blue/green rebuilds at scale: how long, and what readers see meanwhile.

Run from the repository root::

    .venv/bin/python bench/rebuild.py [--messages 200000] [--keep 1000] [--out DIR]

A throw-away embedded stack in a temporary AMEM_HOME and a worker in this process running
the enricher, the archive, postgres, mongo and pgvector, following generations as the
``amem`` workers do. It appends ``--messages`` LoCoMo-sized messages over 200 sessions,
waits until every group has applied them and trims each stream to its last ``--keep``
entries, so a rebuild replays nearly everything from the archive. Then, while a
rehydrator reads straight from the stores (no in-memory copies, so every call reads the
live generations) without pause, it rebuilds postgres, pgvector and mongo in turn, each
announced as ``amem project rebuild`` does, and reports per rebuild the time to switch and
to drop, the events replayed, and the calls made meanwhile: latency, degraded tiers, and
whether any had fewer dense candidates than the same call before the rebuilds. It ends
with ``verify``.

What stands in for what, as in ``bench/retention.py``: the enricher's vectors are random
unit vectors (embedding 200,000 texts would take over half an hour here), so the dense
candidates are counted, not judged; the graph and Qdrant are left out (the embedded graph
lives in the log server; Qdrant local mode projects at about 800 messages/s). The call
deadline is 2 s: the question is whether a switch fails a call, not how two cores serve
reads while they also replay a projection (the latencies say that).

Writes ``rebuild.json`` and ``rebuild.md`` to ``--out`` (default ``bench/reports``).
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import platform
import shutil
import sys
import tempfile
import time
from dataclasses import replace
from datetime import UTC, datetime
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
import redis.asyncio as aioredis
from retention import SyntheticVectors, caught_up, messages, save

from logserver import connect
from producer import Producer
from projectors.enricher import Enricher
from projectors.projector import Projector, StoreProjector
from projectors.retention import RetainWindow, trim
from projectors.runtime import Worker
from rehydrator.rehydrate import Rehydrator
from schemas.constants import ENRICHER
from stack.embedded import control
from stack.projections import build_store, open_generation
from stack.rebuilding import fill_generation, rebuild_state, start_rebuild
from stack.rehydration import open_rehydrator
from stack.settings import Settings
from stack.verifying import run_verify

ROOT = Path(__file__).resolve().parents[1]
STORES = ("archive", "postgres", "mongo", "pgvector")
REBUILT = ("postgres", "pgvector", "mongo")
APPEND_BATCH = 500
ASKED = 8
"""Sessions the reader asks about, in turn."""
QUERY = "What did they talk about when they last met?"


Call = tuple[float, int, list[str], str]
"""Latency (ms), dense candidates, degraded tiers, and the session of one call."""


async def ask(rehydrator: Rehydrator, session: str) -> Call:
    started = time.perf_counter()
    context = await rehydrator.rehydrate("bench", session, QUERY, 1000)
    ms = (time.perf_counter() - started) * 1000
    counts = {r.tier: r.candidates for r in context.tiers}
    degraded = [f"{r.tier}: {r.detail}" for r in context.tiers if r.status in ("timeout", "error")]
    return ms, counts.get("dense", 0), degraded, session


async def read_until(rehydrator: Rehydrator, stop: asyncio.Event, calls: list[Call]) -> None:
    i = 0
    while not stop.is_set():
        calls.append(await ask(rehydrator, f"s{i % ASKED}"))
        i += 1


async def rebuild_under_reads(
    settings: Settings, redis: aioredis.Redis, rehydrator: Rehydrator, baseline: dict[str, int]
) -> list[dict[str, Any]]:
    results = []
    for name in REBUILT:
        calls: list[Call] = []
        stop = asyncio.Event()
        reading = asyncio.create_task(read_until(rehydrator, stop, calls))
        began = time.perf_counter()
        generation = await start_rebuild(redis, name)
        switched_s = dropped_s = 0.0
        while True:
            state = await rebuild_state(redis, name)
            if not switched_s and state.live == generation:
                switched_s = time.perf_counter() - began
            if state.done:
                dropped_s = time.perf_counter() - began
                break
            await asyncio.sleep(0.05)
        stop.set()
        await reading
        latencies = np.array([c[0] for c in calls])
        results.append(
            {
                "projection": name,
                "generation": generation,
                "events_replayed": state.applied,
                "switched_s": switched_s,
                "dropped_s": dropped_s,
                "calls": len(calls),
                "p50_ms": float(np.percentile(latencies, 50)),
                "p99_ms": float(np.percentile(latencies, 99)),
                "degraded_calls": sum(1 for c in calls if c[2]),
                "degraded_examples": sorted({d for c in calls for d in c[2]})[:5],
                "fewer_dense_calls": sum(1 for c in calls if c[1] < baseline[c[3]]),
            }
        )
        print(f"  {name}: {results[-1]}", flush=True)
    return results


async def run(args: argparse.Namespace) -> dict[str, Any]:
    load = messages(args.messages)
    embedder = SyntheticVectors.load()
    home = Path(tempfile.mkdtemp(prefix="amem-bench-rebuild-", dir="/var/tmp"))
    os.chmod(home, 0o755)
    env = {
        "AMEM_HOME": str(home),
        "AMEM_LOG_RETAIN": f"count={args.keep}",
        "AMEM_LOG_TRIM_INTERVAL_S": "0",
        "AMEM_REBUILD_GRACE_S": "2",
        "AMEM_REHYDRATE_DEADLINE_MS": "2000",
    }
    control.up(Settings.from_env(env))
    settings = Settings.from_env(env)
    settings = replace(settings, rehydrate=replace(settings.rehydrate, hot_rows=0))
    redis = connect(settings.require_redis())
    try:
        projectors: list[Projector] = [Enricher(embedder)]
        for name in STORES:
            following = None if name == "archive" else partial(open_generation, settings, name)
            store = build_store(settings, name)
            projectors.append(StoreProjector(store, name=name, open_generation=following))
        worker = Worker(
            redis_url=settings.require_redis(),
            projectors=projectors,
            settings=settings.runtime,
            rebuild=partial(fill_generation, settings),
        )
        async with (
            worker.app,
            Producer.from_url(settings.require_redis(), settings.producer) as producer,
        ):
            began = time.perf_counter()
            for i in range(0, len(load), APPEND_BATCH):
                await producer.append_many(load[i : i + APPEND_BATCH])
            await caught_up(redis, settings, STORES)
            projected_s = time.perf_counter() - began
            trimmed = await trim(redis, settings.runtime.partitions, RetainWindow(count=args.keep))
            print(f"  {len(load):,} messages projected in {projected_s:.0f} s", flush=True)
            async with open_rehydrator(settings) as rehydrator:
                baseline = {}
                quiet = []
                for i in range(ASKED * 4):
                    ms, dense, _, _ = await ask(rehydrator, f"s{i % ASKED}")
                    baseline[f"s{i % ASKED}"] = dense
                    quiet.append(ms)
                rebuilds = await rebuild_under_reads(settings, redis, rehydrator, baseline)
        verdicts, _ = await run_verify(settings, [ENRICHER, *STORES], None)
    finally:
        await redis.aclose()
        embedder.close()
        control.down(settings)
        shutil.rmtree(home, ignore_errors=True)
    return {
        "when": datetime.now(UTC).isoformat(timespec="seconds"),
        "machine": {"cpus": os.cpu_count(), "python": sys.version.split()[0]},
        "platform": platform.platform(),
        "messages": args.messages,
        "keep": args.keep,
        "trimmed": sum(p.log.trimmed + p.enriched.trimmed for p in trimmed),
        "projected_s": projected_s,
        "quiet_p50_ms": float(np.percentile(quiet, 50)),
        "quiet_p99_ms": float(np.percentile(quiet, 99)),
        "rebuilds": rebuilds,
        "verify": {v.projection: v.ok for v in verdicts},
    }


def markdown(report: dict[str, Any]) -> str:
    bad = [name for name, ok in report["verify"].items() if not ok]
    lines = [
        "# Blue/green rebuild benchmark",
        "",
        f"{report['when']}, {report['machine']['cpus']} cores, Python "
        f"{report['machine']['python']}. Reproduce: `.venv/bin/python bench/rebuild.py "
        f"--messages {report['messages']}` (its docstring says what stands in for what: random "
        "vectors, no graph or Qdrant, a 2 s call deadline).",
        "",
        f"{report['messages']:,} messages over 200 sessions, projected in "
        f"{report['projected_s']:.0f} s, then each stream trimmed to its last "
        f"{report['keep']:,} entries ({report['trimmed']:,} entries trimmed): the rebuilds "
        "replay nearly everything from the archive. A rehydrator reading straight from the "
        "stores calls without pause during each rebuild; before them its calls took "
        f"p50 {report['quiet_p50_ms']:.1f} ms, p99 {report['quiet_p99_ms']:.1f} ms.",
        "",
        "| projection | events replayed | switched after s | dropped after s | calls | "
        "p50 ms | p99 ms | degraded calls | calls with fewer dense candidates |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    lines.extend(
        f"| {r['projection']} | {r['events_replayed']:,} | {r['switched_s']:.1f} | "
        f"{r['dropped_s']:.1f} | {r['calls']:,} | {r['p50_ms']:.1f} | {r['p99_ms']:.1f} | "
        f"{r['degraded_calls']} | {r['fewer_dense_calls']} |"
        for r in report["rebuilds"]
    )
    lines += [
        "",
        f"verify after the rebuilds: {'clean' if not bad else 'DIFFERS in ' + ', '.join(bad)}.",
        "Dropped: the old generation is dropped after the readers' grace (2 s here).",
        "",
    ]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--messages", type=int, default=200_000)
    parser.add_argument("--keep", type=int, default=1_000)
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "reports")
    args = parser.parse_args()
    logging.getLogger("faststream").setLevel(logging.WARNING)
    report = asyncio.run(run(args))
    save(args.out, "rebuild", report, markdown(report))


if __name__ == "__main__":
    main()
