"""Benchmark of retention: log-server memory as the log grows, with a hot window and without.

Run from the repository root::

    .venv/bin/python bench/retention.py [--messages 200000] [--step 10000] [--keep 1000]
                                        [--out DIR]

Each run starts a throw-away embedded stack in a temporary AMEM_HOME and a worker in this
process running the enricher, the archive, postgres, mongo and pgvector. It appends
``--messages`` LoCoMo-sized messages (LoCoMo's texts, in turn, over 200 sessions) through
the producer, ``--step`` at a time; after each step it waits until every group has applied
everything, trims (with retention on) and reads the log server's ``used_memory``, its hot
entries, and its live dedup keys. The run with retention on keeps ``--keep`` entries per
stream (``AMEM_LOG_RETAIN=count=N``); the run with it off trims nothing. Both end with
``verify`` over every projection they ran, the archive included.

What stands in for what, said plainly:

- **Vectors**: the enricher counts tokens and extracts entities for real but its vectors
  are random unit vectors: memory and throughput do not depend on their values, and
  embedding 200,000 texts would take over half an hour here per run.
- **The graph and Qdrant are left out**: the embedded FalkorDB graph lives inside the log
  server and would be counted as log memory (deployed, it is a server of its own); Qdrant
  local mode projects at about 800 messages/s and would set the pace of every step.
- **The dedup window is 5 s** (``AMEM_DEDUP_WINDOW_S``; default one day): dedup keys cost
  memory in proportion to the append rate times the window, never to the log's age. A run
  that squeezes days of traffic into minutes with a one-day window would measure the
  rate; 5 s keeps the window as small beside the run as a day is beside a deployment's
  life. The live keys are reported at every step.
- **Trimming is called after each step** instead of on the workers' schedule, so that
  each reading is taken at the same point of the cycle.

Writes ``retention.json`` and ``retention.md`` to ``--out`` (default ``bench/reports``).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import platform
import shutil
import sys
import tempfile
import time
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import redis.asyncio as aioredis

from logserver import connect
from producer import Producer
from producer.importer import read_history
from projectors.enricher import Enricher
from projectors.enrichment.embedder import Embedder
from projectors.projector import Projector, StoreProjector
from projectors.records import VECTOR_DTYPE
from projectors.retention import RetainWindow, trim
from projectors.runtime import Worker
from schemas.constants import ENRICHER, enriched_key, log_key
from schemas.events import Message
from stack.embedded import control
from stack.projections import build_store
from stack.settings import Settings
from stack.verifying import run_verify

ROOT = Path(__file__).resolve().parents[1]
LOCOMO = ROOT.parent / "shared/data/locomo-dev.json"
STORES = ("archive", "postgres", "mongo", "pgvector")
SESSIONS = 200
APPEND_BATCH = 500
DEDUP_WINDOW_S = 5
MEMORY_GOAL = 1.2
"""With retention on, memory at the last step over memory at the second (20,000)."""


class SyntheticVectors(Embedder):
    """The real tokenizer, random unit vectors in place of the model's (see the docstring)."""

    _rng = np.random.default_rng(3)

    async def embed_async(self, texts: Sequence[str]) -> list[list[float]]:
        vectors = self._rng.standard_normal((len(texts), 384)).astype(VECTOR_DTYPE)
        vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
        return vectors.tolist()  # type: ignore[no-any-return]


def messages(total: int) -> list[Message]:
    texts = [m.content for m in read_history(LOCOMO, "bench") if isinstance(m, Message)]
    return [
        Message(
            tenant_id="bench",
            session_id=f"s{i % SESSIONS}",
            id=f"m{i}",
            role="user" if i % 2 else "assistant",
            content=texts[i % len(texts)],
        )
        for i in range(total)
    ]


async def caught_up(redis: aioredis.Redis, settings: Settings, names: Sequence[str]) -> None:
    while True:
        behind = 0
        for n in range(settings.runtime.partitions):
            for key in (log_key(n), enriched_key(n)):
                if not await redis.exists(key):
                    continue
                for g in await redis.xinfo_groups(key):
                    behind += (g["lag"] or 0) + g["pending"]
        if behind == 0:
            return
        await asyncio.sleep(0.05)


async def reading(redis: aioredis.Redis, settings: Settings) -> dict[str, int]:
    hot = 0
    for n in range(settings.runtime.partitions):
        hot += await redis.xlen(log_key(n)) + await redis.xlen(enriched_key(n))
    dedup = 0
    async for _ in redis.scan_iter(match="amem:dedup:*", count=10_000):
        dedup += 1
    memory = await redis.info("memory")
    return {"used_memory": int(memory["used_memory"]), "hot_entries": hot, "dedup_keys": dedup}


async def one_run(
    load: Sequence[Message], step: int, window: RetainWindow | None, embedder: Embedder
) -> dict[str, Any]:
    home = Path(tempfile.mkdtemp(prefix="amem-bench-retention-", dir="/var/tmp"))
    os.chmod(home, 0o755)
    env = {
        "AMEM_HOME": str(home),
        "AMEM_LOG_RETAIN": "off" if window is None else str(window),
        "AMEM_LOG_TRIM_INTERVAL_S": "0",
        "AMEM_DEDUP_WINDOW_S": str(DEDUP_WINDOW_S),
    }
    control.up(Settings.from_env(env))
    settings = Settings.from_env(env)
    redis = connect(settings.require_redis())
    steps: list[dict[str, Any]] = []
    try:
        projectors: list[Projector] = [Enricher(embedder)]
        projectors += [StoreProjector(build_store(settings, name), name=name) for name in STORES]
        worker = Worker(
            redis_url=settings.require_redis(), projectors=projectors, settings=settings.runtime
        )
        async with (
            worker.app,
            Producer.from_url(settings.require_redis(), settings.producer) as producer,
        ):
            before = await reading(redis, settings)
            for start in range(0, len(load), step):
                began = time.perf_counter()
                for i in range(start, min(start + step, len(load)), APPEND_BATCH):
                    await producer.append_many(load[i : min(i + APPEND_BATCH, start + step)])
                appended = time.perf_counter()
                await caught_up(redis, settings, STORES)
                projected = time.perf_counter()
                trimmed = 0
                if window is not None:
                    done = await trim(redis, settings.runtime.partitions, window)
                    trimmed = sum(p.log.trimmed + p.enriched.trimmed for p in done)
                count = min(start + step, len(load)) - start
                row = {
                    "messages": start + count,
                    "append_per_s": count / (appended - began),
                    "projected_per_s": count / (projected - began),
                    "trim_s": time.perf_counter() - projected,
                    "trimmed": trimmed,
                    **await reading(redis, settings),
                }
                steps.append(row)
                print(
                    f"  {row['messages']:>7,} messages: {row['used_memory'] / 2**20:6.1f} MiB, "
                    f"{row['hot_entries']:,} hot entries, append {row['append_per_s']:,.0f}/s, "
                    f"projected {row['projected_per_s']:,.0f}/s",
                    flush=True,
                )
        verdicts, _ = await run_verify(settings, [ENRICHER, *STORES], None)
        archive = build_store(settings, "archive")
        await archive.start()
        archived = await archive.count()
        await archive.close()
    finally:
        await redis.aclose()
        control.down(settings)
        shutil.rmtree(home, ignore_errors=True)
    return {
        "retain": "off" if window is None else str(window),
        "empty": before,
        "steps": steps,
        "archived": archived,
        "verify": {v.projection: v.ok for v in verdicts},
    }


async def run(args: argparse.Namespace) -> dict[str, Any]:
    load = messages(args.messages)
    embedder = SyntheticVectors.load()
    runs = {}
    try:
        for name, window in (("on", RetainWindow(count=args.keep)), ("off", None)):
            print(f"retention {name}", flush=True)
            runs[name] = await one_run(load, args.step, window, embedder)
    finally:
        embedder.close()
    on = runs["on"]["steps"]
    ratio = on[-1]["used_memory"] / on[min(1, len(on) - 1)]["used_memory"]
    return {
        "when": datetime.now(UTC).isoformat(timespec="seconds"),
        "machine": {"cpus": os.cpu_count(), "python": sys.version.split()[0]},
        "platform": platform.platform(),
        "messages": args.messages,
        "step": args.step,
        "keep": args.keep,
        "dedup_window_s": DEDUP_WINDOW_S,
        "stores": list(STORES),
        "memory_ratio": ratio,
        "runs": runs,
    }


def markdown(report: dict[str, Any]) -> str:
    on, off = report["runs"]["on"], report["runs"]["off"]
    ratio = report["memory_ratio"]
    met = "met" if ratio <= MEMORY_GOAL else "MISSED"
    lines = [
        "# Retention benchmark",
        "",
        f"{report['when']}, {report['machine']['cpus']} cores, Python "
        f"{report['machine']['python']}. Reproduce: `.venv/bin/python bench/retention.py` "
        "(its docstring says what stands in for what: random vectors, no graph or Qdrant, "
        f"a {report['dedup_window_s']} s dedup window).",
        "",
        f"{report['messages']:,} messages appended {report['step']:,} at a time through the "
        f"producer; projectors {', '.join(report['stores'])} and the enricher in one worker. "
        f"Retention on keeps {report['keep']:,} entries per stream (8 partitions, log and "
        "enriched).",
        "",
        f"- Memory with retention on, at {on['steps'][-1]['messages']:,} over at "
        f"{on['steps'][min(1, len(on['steps']) - 1)]['messages']:,} messages: "
        f"**{ratio:.2f} times** (goal at most {MEMORY_GOAL} times: {met}).",
        f"- Archive holds: on {on['archived']:,}, off {off['archived']:,} messages.",
        f"- verify: on {_verdicts(on)}; off {_verdicts(off)}.",
        "",
        "| messages | on: used_memory MiB | on: hot entries | on: dedup keys | off: used_memory "
        "MiB | off: hot entries | on: append/s | off: append/s | on: projected/s | off: "
        "projected/s |",
        "|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for a, b in zip(on["steps"], off["steps"], strict=True):
        lines.append(
            f"| {a['messages']:,} | {a['used_memory'] / 2**20:.1f} | {a['hot_entries']:,} | "
            f"{a['dedup_keys']:,} | {b['used_memory'] / 2**20:.1f} | {b['hot_entries']:,} | "
            f"{a['append_per_s']:,.0f} | {b['append_per_s']:,.0f} | "
            f"{a['projected_per_s']:,.0f} | {b['projected_per_s']:,.0f} |"
        )
    lines += [
        "",
        "Projected/s is a step's messages over the time from its first append until every "
        "group had applied it; append/s over the appends alone. Memory is read after the "
        "step is projected and (on) trimmed.",
        "",
    ]
    return "\n".join(lines)


def _verdicts(run: dict[str, Any]) -> str:
    bad = [name for name, ok in run["verify"].items() if not ok]
    return "clean" if not bad else "DIFFERS in " + ", ".join(bad)


def save(out: Path, name: str, report: dict[str, Any], text: str) -> None:
    """Write ``<name>.json`` and ``<name>.md`` to ``out``, and print the Markdown."""
    out.mkdir(parents=True, exist_ok=True)
    (out / f"{name}.json").write_text(json.dumps(report, indent=2) + "\n")
    (out / f"{name}.md").write_text(text)
    print(text)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--messages", type=int, default=200_000)
    parser.add_argument("--step", type=int, default=10_000)
    parser.add_argument("--keep", type=int, default=1_000)
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "reports")
    args = parser.parse_args()
    logging.getLogger("faststream").setLevel(logging.WARNING)  # a line per task at shutdown
    report = asyncio.run(run(args))
    save(args.out, "retention", report, markdown(report))


if __name__ == "__main__":
    main()
