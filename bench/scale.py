"""Benchmark of scale-out: whole-pipeline throughput for 1, 2 and 4 worker processes on one
log server and on a 3-master Redis Cluster, and the batched append on the cluster next to
raw pipelined ``XADD`` to the same cluster.

Run from the repository root::

    .venv/bin/python bench/scale.py [--messages N] [--appends M] [--out DIR]

It starts a throw-away embedded stack (one redis-server + FalkorDB, Postgres, nx-27017,
Qdrant local mode) and an embedded cluster of 3 masters beside it, in a temporary
AMEM_HOME, and writes ``scale.json`` and ``scale.md`` to ``--out`` (default
``bench/reports``). A measurement, not a test.

- **Pipeline**: workers started by ``amem project start --workers W`` and idle; then N
  messages are appended (batches of 200) and the clock runs until every projector's group
  has no lag and nothing pending on every partition: append → every projection applied.
- **Append vs raw**: M messages appended with ``append_many`` (batches of 500, 4 at once,
  the idempotent script per partition) against the same payloads written by pipelined
  ``XADD`` to the same cluster (same batches, same concurrency, no dedup), best of 3.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import redis.asyncio as aioredis

from logserver import connect
from producer import Producer, ProducerSettings
from projectors.lag import group_states
from schemas.codec import encode
from schemas.constants import ENTRY_FIELD, enriched_key, group_name, log_key
from schemas.events import Message, MessageAppended
from schemas.partitioning import partition_for
from stack.embedded import control
from stack.embedded.redis_cluster import EmbeddedRedisCluster
from stack.emptying import reset_everything
from stack.projections import reads_enriched, select
from stack.settings import Settings

REPO = Path(__file__).resolve().parents[1]
WORKERS = (1, 2, 4)
APPEND_BATCH = 500
APPEND_CONCURRENCY = 4


def messages(n: int, prefix: str) -> list[Message]:
    topics = ("the drive to the coast", "a greyhound called Pixel", "the harbour", "Kyoto")
    return [
        Message(
            tenant_id=f"tenant-{i % 4}",
            session_id=f"{prefix}-s{i % 400}",
            id=f"m{i}",
            role="user" if i % 2 == 0 else "assistant",
            content=f"Turn {i}: we talked about {topics[i % len(topics)]} again, note {i * 7919}",
        )
        for i in range(n)
    ]


def amem(env: dict[str, str], *args: str) -> None:
    subprocess.run(
        [sys.executable, "-m", "stack.cli", *args],
        env=env,
        cwd=REPO,
        check=True,
        capture_output=True,
    )


async def consumers_ready(settings: Settings, workers: int) -> None:
    """Until each worker process has read its streams once (its consumers exist)."""
    client = connect(settings.require_redis())
    names = select(settings)
    try:
        while True:
            ready = []
            for name in names:
                stream = enriched_key(0) if reads_enriched(name) else log_key(0)
                try:
                    seen = await client.xinfo_consumers(stream, group_name(name))
                except aioredis.ResponseError:
                    seen = []
                # Qdrant in local mode runs in worker 0 only.
                ready.append(len(seen) >= (1 if name == "qdrant" else workers))
            if all(ready):
                return
            await asyncio.sleep(0.5)
    finally:
        await client.aclose()


async def caught_up(settings: Settings) -> None:
    client = connect(settings.require_redis())
    try:
        while True:
            states = await group_states(
                client, select(settings), settings.runtime.partitions, reads_enriched
            )
            if all((s.lag or 0) == 0 and s.pending == 0 for s in states):
                return
            await asyncio.sleep(0.2)
    finally:
        await client.aclose()


async def pipeline_run(env: dict[str, str], n: int, workers: int) -> dict[str, Any]:
    settings = Settings.from_env(env)
    await reset_everything(settings)
    amem(env, "project", "start", "--workers", str(workers))
    try:
        await consumers_ready(settings, workers)
        batch = messages(n, f"w{workers}")
        started = time.perf_counter()
        async with Producer.from_url(settings.require_redis(), settings.producer) as producer:
            for i in range(0, n, 200):
                await producer.append_many(batch[i : i + 200])
        appended_s = time.perf_counter() - started
        await caught_up(settings)
        applied_s = time.perf_counter() - started
    finally:
        amem(env, "project", "stop")
    return {
        "workers": workers,
        "messages": n,
        "append_s": round(appended_s, 2),
        "all_applied_s": round(applied_s, 2),
        "messages_per_s": round(n / applied_s, 1),
    }


async def append_rate(url: str, payloads: Sequence[Message]) -> float:
    settings = ProducerSettings()
    batches = [payloads[i : i + APPEND_BATCH] for i in range(0, len(payloads), APPEND_BATCH)]
    async with Producer.from_url(url, settings) as producer:
        started = time.perf_counter()
        await _concurrently(batches, producer.append_many)
        return len(payloads) / (time.perf_counter() - started)


async def raw_rate(url: str, payloads: Sequence[Message]) -> float:
    """The same events, pipelined ``XADD`` to streams of the same hash tags, no script."""
    settings = ProducerSettings()

    bodies = [
        (
            partition_for(m.tenant_id, m.session_id, settings.partitions),
            encode(MessageAppended(message=m)),
        )
        for m in payloads
    ]
    batches = [bodies[i : i + APPEND_BATCH] for i in range(0, len(bodies), APPEND_BATCH)]
    client = connect(url)

    async def write(batch: Sequence[tuple[int, bytes]]) -> None:
        async with client.pipeline(transaction=False) as pipe:
            for partition, body in batch:
                pipe.xadd(f"bench:raw:{{{partition}}}", {ENTRY_FIELD: body})
            await pipe.execute()

    try:
        started = time.perf_counter()
        await _concurrently(batches, write)
        return len(payloads) / (time.perf_counter() - started)
    finally:
        await client.aclose()


async def _concurrently(batches: Sequence[Any], call: Any) -> None:
    queue = list(batches)

    async def drain() -> None:
        while queue:
            await call(queue.pop())

    await asyncio.gather(*(drain() for _ in range(APPEND_CONCURRENCY)))


async def append_vs_raw(url: str, m: int) -> dict[str, Any]:
    appended, raw = [], []
    for attempt in range(3):
        client = connect(url)
        await client.flushdb()
        await client.aclose()
        appended.append(await append_rate(url, messages(m, f"a{attempt}")))
        raw.append(await raw_rate(url, messages(m, f"r{attempt}")))
    best_append, best_raw = max(appended), max(raw)
    return {
        "messages": m,
        "append_per_s": round(best_append),
        "raw_xadd_per_s": round(best_raw),
        "ratio": round(best_append / best_raw, 3),
        "goal": 0.7,
    }


def markdown(report: dict[str, Any]) -> str:
    lines = [
        "# Scale-out: workers across processes, one server and a 3-master cluster",
        "",
        f"{report['when']}, {report['machine']}; `bench/scale.py --messages"
        f" {report['args']['messages']} --appends {report['args']['appends']}`.",
        "",
        "## Whole pipeline (append → every projection applied)",
        "",
        "| log server | worker processes | messages | append (s) | all applied (s) | messages/s |",
        "|---|---|---|---|---|---|",
    ]
    lines.extend(
        f"| {server} | {r['workers']} | {r['messages']} | {r['append_s']} |"
        f" {r['all_applied_s']} | {r['messages_per_s']} |"
        for server, runs in report["pipeline"].items()
        for r in runs
    )
    lines += [
        "",
        "## Batched append next to raw pipelined XADD (best of 3)",
        "",
        "| log server | messages | append_many /s | raw XADD /s | ratio (goal ≥ 0.7) |",
        "|---|---|---|---|---|",
    ]
    for server, r in report["append"].items():
        lines.append(
            f"| {server} | {r['messages']} | {r['append_per_s']} | {r['raw_xadd_per_s']} |"
            f" {r['ratio']} |"
        )
    lines += ["", "## What bounds each figure", "", *report["bounds"], ""]
    return "\n".join(lines)


BOUNDS = [
    "- **Pipeline, 2 cores.** Every configuration runs the enricher (the embedding model,"
    " torch on 1 thread per process), the five store projectors, redis-server (1 or 3"
    " nodes), Postgres and nx-27017 on the same 2 cores. Embedding is the costliest step."
    " A second process (its own consumers, sharing each partition's entries through the"
    " group) puts the second core to work: the gain from 1 to 2. A third and fourth find"
    " no core free and only add contention (and a model load each): the figure drops."
    " The log server is not the bound: the cluster's figures are the one server's.",
    "- **What the design gives on more cores.** Consumers of a group never read the same"
    " entry, and the stores take idempotent batches from any consumer: each added process"
    " with its own core adds its share of embedding and projection, until a store or the"
    " log server saturates. The log spreads over the masters by partition, so a cluster"
    " lifts the log server's ceiling (one core per master). Not measured here: this"
    " machine has 2 cores.",
    "- **Append vs raw.** Both run against the same 3 masters from one client process; the"
    " append adds the script (dedup key `SET NX` + `XADD` per event) and the producer's"
    " grouping per master. The raw side writes with no dedup keys at all, so the ratio is"
    " what idempotence costs. The client's CPU (encoding, validation) is shared with the"
    " servers on 2 cores. On the cluster the raw side goes through redis-py's"
    " `ClusterPipeline` (what a plain client of the cluster uses), which spends more client"
    " CPU per command than the producer's plain pipeline per master: the ratio above 1 there"
    " says the client process, not the servers, bounds both figures on this machine.",
]


async def main(args: argparse.Namespace) -> dict[str, Any]:
    home = Path(tempfile.mkdtemp(prefix="amem-scale-"))
    env = {k: v for k, v in os.environ.items() if not k.startswith("AMEM_")}
    env |= {"AMEM_HOME": str(home), "HF_HUB_OFFLINE": "1", "AMEM_EMBED_THREADS": "1"}
    control.up(Settings.from_env(env))
    settings = Settings.from_env(env)  # now with the started services' URLs
    cluster = EmbeddedRedisCluster(home / "cluster", masters=3)
    record = cluster.start(None)
    report: dict[str, Any] = {
        "when": datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "machine": f"{os.cpu_count()} cores, Python {platform.python_version()}",
        "args": {"messages": args.messages, "appends": args.appends},
        "pipeline": {},
        "append": {},
        "bounds": BOUNDS,
    }
    try:
        servers = {"one server": env, "3-master cluster": {**env, "AMEM_REDIS_URL": record.url}}
        for server, server_env in servers.items():
            runs = []
            for workers in WORKERS:
                run = await pipeline_run(server_env, args.messages, workers)
                print(server, run, flush=True)
                runs.append(run)
            report["pipeline"][server] = runs
        for server, url in (
            ("one server", settings.require_redis()),
            ("3-master cluster", record.url),
        ):
            report["append"][server] = await append_vs_raw(url, args.appends)
            print(server, report["append"][server], flush=True)
    finally:
        cluster.stop(record)
        control.down(settings)
        shutil.rmtree(home, ignore_errors=True)
    return report


def cli() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--messages", type=int, default=3000)
    parser.add_argument("--appends", type=int, default=50_000)
    parser.add_argument("--out", type=Path, default=REPO / "bench" / "reports")
    args = parser.parse_args()
    report = asyncio.run(main(args))
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "scale.json").write_text(json.dumps(report, indent=2) + "\n")
    (args.out / "scale.md").write_text(markdown(report))
    print(f"wrote {args.out / 'scale.md'}")


if __name__ == "__main__":
    cli()
