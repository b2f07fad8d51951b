"""Benchmark of the append path: single-append latency and batched throughput vs raw XADD.

Run from the repository root::

    .venv/bin/python bench/append.py [--messages N] [--batch B] [--data PATH] [--out DIR]

It starts two throw-away redis-server processes (``appendfsync everysec`` and ``always``)
and writes ``append.json`` and ``append.md`` to ``--out`` (default ``bench/reports``).
A measurement, not a test: figures depend on the machine and on what else runs there.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import json
import os
import platform
import shutil
import statistics
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import replace
from datetime import UTC, datetime
from functools import partial
from pathlib import Path
from typing import Any, TypeVar

import redis.asyncio as aioredis

from producer import AppendResult, Producer, ProducerSettings
from producer.importer import read_history
from schemas.codec import encode
from schemas.constants import ENTRY_FIELD, log_key
from schemas.events import Message, MessageAppended
from schemas.partitioning import partition_for
from stack.embedded.redis_server import EmbeddedRedis

T = TypeVar("T")
Entry = tuple[str, bytes]
"""A raw XADD: partition stream key and encoded envelope."""

TENANT, ROUNDS = "bench", 5
PARTITIONS = ProducerSettings().partitions
BATCH_GOAL, P50_GOAL_MS = 0.5, 0.3
ROOT = Path(__file__).resolve().parents[1]
DEFAULT_DATA = ROOT.parent / "shared/data/locomo-dev.json"


@contextmanager
def redis_server(policy: str) -> Iterator[str]:
    """A fresh embedded redis-server (AOF on, as ``amem up`` runs it) with ``policy``."""
    workdir = Path(tempfile.mkdtemp(prefix=f"amem-bench-{policy}-", dir="/tmp"))
    server = EmbeddedRedis(workdir, appendfsync=policy)
    record = server.start(None)
    try:
        yield record.url
    finally:
        server.stop(record)
        shutil.rmtree(workdir, ignore_errors=True)


def synthesize(count: int) -> list[Message]:
    """Stand-in for LoCoMo when the data file is absent: 130-word turns in 10 sessions."""
    return [
        Message(tenant_id=TENANT, session_id=f"synthetic-{i % 10}", id=f"m{i}",
                role=("user", "assistant")[i % 2],
                content=" ".join(f"word{(i * 7 + j) % 997}" for j in range(130)))
        for i in range(count)
    ]  # fmt: skip


def load_messages(path: Path, count: int) -> tuple[list[Message], str]:
    if not path.is_file():
        return synthesize(count), "synthetic (~130 words)"
    base = [m for m in read_history(path, TENANT) if isinstance(m, Message)]
    # Distinct ids per copy: a repeated id would be a dedup hit, not an append.
    copies = -(-count // len(base))
    messages = [replace(m, id=f"{m.id}.r{k}") for k in range(copies) for m in base]
    return messages[:count], f"LoCoMo ({len(base)} turns, replicated)"


def raw_entry(message: Message) -> Entry:
    partition = partition_for(message.tenant_id, message.session_id, PARTITIONS)
    return log_key(partition), encode(MessageAppended(message=message))


def summary(samples: list[float]) -> dict[str, float]:
    cuts = statistics.quantiles(samples, n=100, method="inclusive")
    return {"n": len(samples), "p50_ms": cuts[49], "p99_ms": cuts[98]}


async def timed(op: Callable[[T], Awaitable[object]], items: Sequence[T], warm: int) -> list[float]:
    """Milliseconds of each awaited ``op``, one at a time, after ``warm`` untimed calls."""
    for item in items[:warm]:
        await op(item)
    samples: list[float] = []
    for item in items[warm:]:
        start = time.perf_counter()
        await op(item)
        samples.append((time.perf_counter() - start) * 1e3)
    return samples


async def xadd(client: aioredis.Redis, entry: Entry) -> None:
    await client.xadd(entry[0], {ENTRY_FIELD: entry[1]})


async def xadd_waitaof(client: aioredis.Redis, entry: Entry) -> None:
    # One round trip, as the producer pipelines its script call with WAITAOF.
    async with client.pipeline(transaction=False) as pipe:
        pipe.xadd(entry[0], {ENTRY_FIELD: entry[1]})
        pipe.execute_command("WAITAOF", 1, 0, 1000)
        (_, (local, _replicas)) = await pipe.execute()
    if int(local) < 1:
        raise RuntimeError("WAITAOF did not confirm the local fsync")


async def append_many_rate(producer: Producer, messages: Sequence[Message], batch: int) -> float:
    results: list[AppendResult] = []
    start = time.perf_counter()
    for i in range(0, len(messages), batch):
        results += await producer.append_many(messages[i : i + batch])
    elapsed = time.perf_counter() - start
    if sum(not r.duplicate for r in results) != len(messages):
        raise RuntimeError("duplicates in a fresh log: the rate would not measure appends")
    return len(messages) / elapsed


async def xadd_pipeline_rate(client: aioredis.Redis, entries: Sequence[Entry], batch: int) -> float:
    start = time.perf_counter()
    for i in range(0, len(entries), batch):
        async with client.pipeline(transaction=False) as pipe:
            for key, payload in entries[i : i + batch]:
                pipe.xadd(key, {ENTRY_FIELD: payload})
            await pipe.execute()
    return len(entries) / (time.perf_counter() - start)


async def measure(urls: dict[str, str], messages: list[Message], batch: int) -> dict[str, Any]:
    load = os.getloadavg()[0]
    entries = [raw_entry(m) for m in messages]
    # The message list is large and lives to the end: keep the collector from rescanning it.
    gc.collect()
    gc.freeze()
    fsync = ProducerSettings(durability="fsync")
    # Connections open (and the producers check the log) before anything is timed.
    async with (
        aioredis.Redis.from_url(urls["everysec"]) as lazy,
        aioredis.Redis.from_url(urls["always"]) as strict,
        Producer.from_url(urls["everysec"]) as memory,
        Producer.from_url(urls["everysec"], fsync) as lazy_fsync,
        Producer.from_url(urls["always"], fsync) as strict_fsync,
    ):
        plan: list[tuple[str, str, aioredis.Redis, Callable[[], Awaitable[list[float]]]]] = [
            ("append memory", "everysec", lazy, lambda: timed(memory.append, messages[:3200], 200)),
            ("raw XADD", "everysec", lazy,
             lambda: timed(partial(xadd, lazy), entries[:3200], 200)),
            ("append fsync", "always", strict,
             lambda: timed(strict_fsync.append, messages[:1050], 50)),
            ("raw XADD + WAITAOF 1 0 1000", "always", strict,
             lambda: timed(partial(xadd_waitaof, strict), entries[:1050], 50)),
            # WAITAOF waits for the once-per-second fsync here: a few samples make the point.
            ("append fsync", "everysec", lazy, lambda: timed(lazy_fsync.append, messages[:32], 2)),
        ]  # fmt: skip
        latency: list[dict[str, Any]] = []
        for name, policy, client, run in plan:
            print(f"latency: {name} ({policy})", file=sys.stderr, flush=True)
            await client.flushall()  # every append below must be new, not a dedup hit
            latency.append({"path": name, "appendfsync": policy, **summary(await run())})
        raw_rates: list[float] = []
        our_rates: list[float] = []
        # Alternate raw and ours so drift from other load on the machine hits both alike.
        for n in range(ROUNDS):
            print(f"throughput round {n + 1}/{ROUNDS}", file=sys.stderr, flush=True)
            await lazy.flushall()
            raw_rates.append(await xadd_pipeline_rate(lazy, entries, batch))
            await lazy.flushall()
            our_rates.append(await append_many_rate(memory, messages, batch))
        server, persistence = await lazy.info("server"), await lazy.info("persistence")
    raw, ours = statistics.median(raw_rates), statistics.median(our_rates)
    environment = {
        "python": platform.python_version(), "redis": server["redis_version"],
        "cpus": os.cpu_count(), "loadavg_1m_at_start": load,
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "messages": len(messages), "batch": batch,
        "mean_payload_bytes": round(statistics.mean(len(p) for _, p in entries), 1),
        "aof_rewrites_everysec": persistence.get("aof_rewrites"),
    }  # fmt: skip
    throughput = {"raw_rates": raw_rates, "our_rates": our_rates, "raw_median": raw}
    # Median of per-round ratios: each pair ran back to back, so it cancels slow drift in load.
    ratio = statistics.median(o / r for o, r in zip(our_rates, raw_rates, strict=True))
    throughput |= {"ours_median": ours, "ratio": ratio}
    return {"environment": environment, "latency": latency, "throughput": throughput}


def goals(report: dict[str, Any]) -> list[dict[str, Any]]:
    p50 = next(r["p50_ms"] for r in report["latency"] if r["path"] == "append memory")
    ratio = report["throughput"]["ratio"]
    return [
        {"goal": "batched append vs raw XADD", "target": f">= {BATCH_GOAL:.0%}",
         "measured": f"{ratio:.0%}", "met": ratio >= BATCH_GOAL},
        {"goal": "single append p50 (memory)", "target": f"<= {P50_GOAL_MS} ms",
         "measured": f"{p50:.3f} ms", "met": p50 <= P50_GOAL_MS},
    ]  # fmt: skip


def markdown(report: dict[str, Any]) -> str:
    env, tp = report["environment"], report["throughput"]
    raw, ours = (", ".join(f"{r:,.0f}" for r in tp[k]) for k in ("raw_rates", "our_rates"))
    lines = [
        "# Append path benchmark", "",
        f"{env['date']} · Python {env['python']} · Redis {env['redis']} · {env['cpus']} CPUs"
        f" (1-min load {env['loadavg_1m_at_start']:.2f} at start) · {env['messages']} messages,"
        f" {env['source']} · mean payload {env['mean_payload_bytes']} B", "",
        "## Single append latency", "",
        "| Path | appendfsync | n | p50 ms | p99 ms |", "|---|---|---:|---:|---:|",
        *(f"| {r['path']} | {r['appendfsync']} | {r['n']} | {r['p50_ms']:.3f} | {r['p99_ms']:.3f} |"
          for r in report["latency"]), "",
        f"## Batched append throughput (batch {env['batch']}, appendfsync everysec)", "",
        "| Path | rounds (msgs/s) | median msgs/s |", "|---|---|---:|",
        f"| raw pipelined XADD | {raw} | {tp['raw_median']:,.0f} |",
        f"| append_many | {ours} | {tp['ours_median']:,.0f} |", "",
        f"Ratio append_many / raw XADD (median of per-round ratios): {tp['ratio']:.2f}."
        f" AOF rewrites during the run"
        f" (everysec server): {env['aof_rewrites_everysec']}.", "",
        "## Goals", "",
        "| Goal | Target | Measured | Status |", "|---|---|---|---|",
        *(f"| {g['goal']} | {g['target']} | {g['measured']} | {'met' if g['met'] else 'not met'} |"
          for g in report["goals"]),
    ]  # fmt: skip
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--messages", type=int, default=20000)
    parser.add_argument("--batch", type=int, default=500)
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA)
    parser.add_argument("--out", type=Path, default=ROOT / "bench/reports")
    args = parser.parse_args()
    if args.messages < 3200:
        parser.error("--messages must be at least 3200: the latency runs use that many")
    messages, source = load_messages(args.data, args.messages)
    with redis_server("everysec") as lazy, redis_server("always") as strict:
        report = asyncio.run(measure({"everysec": lazy, "always": strict}, messages, args.batch))
    report["environment"]["source"] = source
    report["goals"] = goals(report)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "append.json").write_text(json.dumps(report, indent=2) + "\n")
    text = markdown(report)
    (args.out / "append.md").write_text(text)
    print(text, end="")


if __name__ == "__main__":
    main()
