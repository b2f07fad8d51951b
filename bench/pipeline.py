"""A throw-away embedded stack with a LoCoMo-format file imported and projected.

Shared by the rehydrator benchmarks: ``bench/recall.py`` and ``bench/rehydrate.py``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import shutil
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Callable, Coroutine, Sequence
from contextlib import asynccontextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import history
import redis.asyncio as aioredis
from rich.console import Console
from rich.progress import BarColumn, Progress, TimeElapsedColumn

from producer import Producer
from producer.importer import read_history
from projectors.enrichment.embedder import Embedder
from projectors.lag import group_states
from schemas.events import Message
from stack import worker_pool
from stack.embedded import control
from stack.projections import reads_enriched, select
from stack.settings import Settings

err = Console(stderr=True)


async def append(settings: Settings, messages: Sequence[Message]) -> None:
    """Append through the producer (idempotent: a rerun on the same stack appends nothing)."""
    async with Producer.from_url(settings.require_redis(), settings.producer) as producer:
        for start in range(0, len(messages), 500):
            await producer.append_many(messages[start : start + 500])


def read_messages(path: Path, tenant: str) -> list[Message]:
    """The messages of a history file, under ``tenant``."""
    return [r for r in read_history(path, tenant) if isinstance(r, Message)]


async def caught_up(settings: Settings, timeout_s: float) -> None:
    """Wait, with a progress bar, until every projector has applied the whole log."""
    client = aioredis.Redis.from_url(settings.require_redis())
    deadline = time.monotonic() + timeout_s
    try:
        with Progress(
            "projecting", BarColumn(), "{task.fields[left]} left", TimeElapsedColumn(), console=err
        ) as bar:
            task = bar.add_task("projecting", total=None, left="?")
            while True:
                states = await group_states(
                    client, select(settings), settings.runtime.partitions, reads_enriched
                )
                left = sum((s.lag or 0) + s.pending for s in states)
                bar.update(task, left=left)
                if left == 0:
                    return
                if time.monotonic() > deadline:
                    raise SystemExit(f"projectors still behind after {timeout_s:.0f} s")
                await asyncio.sleep(0.5)
    finally:
        await client.aclose()


@asynccontextmanager
async def stack(home: Path | None) -> AsyncIterator[Settings]:
    """Settings of a new embedded stack in a temporary AMEM_HOME, removed afterwards; or,
    with ``home``, of the stack there, left running."""
    temporary = home is None
    where = Path(tempfile.mkdtemp(prefix="amem-bench-", dir="/var/tmp")) if home is None else home
    env = {**os.environ, "AMEM_HOME": str(where)}
    settings = Settings.from_env(env)
    if temporary:
        control.up(settings)
        settings = Settings.from_env(env)
    try:
        yield settings
    finally:
        if temporary:
            worker_pool.stop(settings)
            control.down(settings)
            shutil.rmtree(where, ignore_errors=True)


async def project(
    settings: Settings,
    messages: Sequence[Message],
    timeout_s: float,
    *,
    embedder: Embedder | None = None,
) -> None:
    """Append ``messages`` and run a projector worker until every projection has the log.

    With ``embedder``, the enriched stream is written by :func:`history.enrich` first (each
    distinct text embedded once) instead of by the worker's enricher. A worker this starts is
    stopped once caught up, so that what is measured next runs alone.
    """
    await append(settings, messages)
    if embedder is not None:
        await history.enrich(settings, embedder)
    started_workers = not worker_pool.running(settings)
    worker_pool.start(settings, None, 1)
    await caught_up(settings, timeout_s)
    if started_workers:
        worker_pool.stop(settings)


@asynccontextmanager
async def projected(
    path: Path, tenant: str, *, home: Path | None, timeout_s: float
) -> AsyncIterator[tuple[Settings, int]]:
    """Settings of a stack holding ``path`` projected, and its message count."""
    async with stack(home) as settings:
        messages = read_messages(path, tenant)
        await project(settings, messages, timeout_s)
        yield settings, len(messages)


DEFAULT_FILE = Path("../shared/data/locomo-dev.json")


def parser(description: str) -> argparse.ArgumentParser:
    """The arguments every rehydrator benchmark takes; callers add their own."""
    p = argparse.ArgumentParser(description=description)
    p.add_argument("file", nargs="?", type=Path, default=DEFAULT_FILE)
    p.add_argument("--home", type=Path, help="reuse the stack of this AMEM_HOME")
    p.add_argument("--timeout", type=float, default=1800, help="seconds to project")
    p.add_argument("--out", type=Path, default=Path("bench/reports"))
    p.add_argument("--json", action="store_true", help="last line: the report as JSON")
    return p


def provenance() -> dict[str, str]:
    """When, where and how a report was measured."""
    return {
        "measured_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "machine": f"{platform.machine()}, {os.cpu_count()} cores,"
        f" Python {platform.python_version()}",
        "command": " ".join([Path(sys.executable).name, *sys.argv]),
    }


def publish(
    args: argparse.Namespace,
    name: str,
    run: Callable[[argparse.Namespace], Coroutine[Any, Any, dict[str, Any]]],
    markdown: Callable[[dict[str, Any]], str],
) -> None:
    """Run the benchmark, write ``<name>.json`` and ``<name>.md``, print (and the JSON line)."""
    if not args.file.is_file():
        raise SystemExit(f"no such file: {args.file}")
    report = {**asyncio.run(run(args)), "file": str(args.file), **provenance()}
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / f"{name}.json").write_text(json.dumps(report, indent=2) + "\n")
    (args.out / f"{name}.md").write_text(markdown(report))
    err.print(markdown(report))
    if args.json:
        print(json.dumps(report))
