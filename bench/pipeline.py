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
from collections.abc import AsyncIterator, Callable, Coroutine
from contextlib import asynccontextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import redis.asyncio as aioredis
from rich.console import Console
from rich.progress import BarColumn, Progress, TimeElapsedColumn

from producer import Producer
from producer.importer import read_history
from projectors.lag import group_states
from schemas.events import Message
from stack import worker_pool
from stack.embedded import control
from stack.projections import reads_enriched, select
from stack.settings import Settings

err = Console(stderr=True)


async def load(settings: Settings, path: Path, tenant: str) -> int:
    """Append every message of ``path`` under ``tenant`` (idempotent: ids come from the file)."""
    records = read_history(path, tenant, settings.producer.limits)
    messages = [r for r in records if isinstance(r, Message)]
    async with Producer.from_url(settings.require_redis(), settings.producer) as producer:
        for start in range(0, len(messages), 500):
            await producer.append_many(messages[start : start + 500])
    return len(messages)


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
async def projected(
    path: Path, tenant: str, *, home: Path | None, timeout_s: float
) -> AsyncIterator[tuple[Settings, int]]:
    """Settings of a stack holding ``path`` projected, and its message count.

    With ``home`` None, a new stack in a temporary AMEM_HOME, removed afterwards; else the
    stack of ``home``, left running. Projector workers are stopped once caught up, so that
    what is measured next runs alone (reads see the same data either way).
    """
    temporary = home is None
    where = Path(tempfile.mkdtemp(prefix="amem-bench-", dir="/var/tmp")) if home is None else home
    env = {**os.environ, "AMEM_HOME": str(where)}
    settings = Settings.from_env(env)
    if temporary:
        control.up(settings)
        settings = Settings.from_env(env)
    started_workers = not worker_pool.running(settings)
    try:
        messages = await load(settings, path, tenant)
        worker_pool.start(settings, None, 1)
        await caught_up(settings, timeout_s)
        if started_workers:
            worker_pool.stop(settings)
        yield settings, messages
    finally:
        if temporary:
            worker_pool.stop(settings)
            control.down(settings)
            shutil.rmtree(where, ignore_errors=True)


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
