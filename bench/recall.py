"""Evidence recall of ``rehydrate`` at a token budget, on any LoCoMo-format file.

Run from the repository root::

    .venv/bin/python bench/recall.py [FILE] [--budgets 1000,2000,4000,8000] [--json]

The whole pipeline, as an agent meets it: a throw-away embedded stack in a temporary
AMEM_HOME (``--home`` reuses a running one), the file imported through the producer (each
conversation one session, each turn's ``dia_id`` its message id), a projector worker process
until every projection has the log, then ``Rehydrator.rehydrate`` through the public API,
one question at a time as the query, once per budget.

Metric (``../shared/data/README.md``): for each question of category ≠ 5 with evidence,
the share of its evidence ``dia_id``s among the context's message ids; the mean over
questions. Tokens are counted by the rehydrator itself (the embedding model's tokenizer,
[CLS] and [SEP] included, turns rendered ``<speaker>: <text> [image: <caption>]``).

Writes ``recall.json`` and ``recall.md`` to ``--out`` (default ``bench/reports``), with the
RRF column of ``BASELINES.md`` beside the figures when that file is next to the data. With
``--json`` the last line printed is one JSON object: ``{"recall": {"1000": r, ...},
"questions": n, ...}``. A measurement, not a test.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import re
import shutil
import statistics
import sys
import tempfile
import time
from collections import defaultdict
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import orjson
import redis.asyncio as aioredis
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TimeElapsedColumn

from producer import Producer
from producer.importer import read_history
from projectors.lag import group_states
from rehydrator.context import Context
from schemas.events import Message
from stack import worker_pool
from stack.embedded import control
from stack.projections import reads_enriched, select
from stack.rehydration import open_rehydrator
from stack.settings import Settings

DEFAULT_FILE = Path("../shared/data/locomo-dev.json")
TENANT = "bench-recall"
ADVERSARIAL = 5
err = Console(stderr=True)


def questions(path: Path) -> list[tuple[str, str, list[str]]]:
    """(session id, question, evidence ids) of every scored question, in file order."""
    out = []
    for sample in orjson.loads(path.read_bytes()):
        for qa in sample.get("qa", []):
            evidence = [str(e) for e in qa.get("evidence") or []]
            if qa.get("category") != ADVERSARIAL and evidence:
                out.append((str(sample["sample_id"]), str(qa["question"]), evidence))
    return out


def baseline_rrf(data: Path) -> dict[str, float]:
    """The RRF column of BASELINES.md beside the data file (empty when absent)."""
    baselines = data.parent / "BASELINES.md"
    if not baselines.is_file():
        return {}
    out = {}
    for line in baselines.read_text().splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) == 5 and re.fullmatch(r"[\d,]+", cells[0]):
            out[cells[0].replace(",", "")] = float(cells[4])
    return out


async def load(settings: Settings, path: Path) -> int:
    records = read_history(path, TENANT, settings.producer.limits)
    messages = [r for r in records if isinstance(r, Message)]
    async with Producer.from_url(settings.require_redis(), settings.producer) as producer:
        for start in range(0, len(messages), 500):
            await producer.append_many(messages[start : start + 500])
    return len(messages)


async def caught_up(settings: Settings, timeout_s: float) -> None:
    client = aioredis.Redis.from_url(settings.require_redis())
    deadline = time.monotonic() + timeout_s
    try:
        with Progress(
            "projecting", BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(), console=err
        ) as bar:
            task = bar.add_task("projecting", total=None)
            while True:
                states = await group_states(
                    client, select(settings), settings.runtime.partitions, reads_enriched
                )
                left = sum((s.lag or 0) + s.pending for s in states)
                bar.update(task, total=max(bar.tasks[0].total or 0, left), completed=0)
                if left == 0:
                    return
                if time.monotonic() > deadline:
                    raise SystemExit(f"projectors still behind after {timeout_s:.0f} s")
                await asyncio.sleep(0.5)
    finally:
        await client.aclose()


async def measure(
    settings: Settings, asked: list[tuple[str, str, list[str]]], budgets: list[int]
) -> dict[str, Any]:
    hits: dict[int, list[float]] = defaultdict(list)
    elapsed: list[float] = []
    tiers: dict[str, list[float]] = defaultdict(list)
    degraded = 0
    async with open_rehydrator(settings) as rehydrator:
        with Progress(
            "rehydrating", BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(), console=err
        ) as bar:
            task = bar.add_task("rehydrating", total=len(asked) * len(budgets))
            for session, question, evidence in asked:
                for budget in budgets:
                    context: Context = await rehydrator.rehydrate(TENANT, session, question, budget)
                    ids = {item.message.id for item in context.items}
                    hits[budget].append(sum(e in ids for e in evidence) / len(evidence))
                    elapsed.append(context.elapsed_ms)
                    degraded += bool(context.degraded)
                    for t in context.tiers:
                        tiers[t.tier].append(t.ms)
                    bar.advance(task)
    return {
        "recall": {str(b): round(statistics.fmean(hits[b]), 4) for b in budgets},
        "rehydrate_ms_p50": round(statistics.median(elapsed), 2),
        "tier_ms_p50": {t: round(statistics.median(v), 2) for t, v in tiers.items()},
        "degraded_calls": degraded,
    }


def markdown(report: dict[str, Any]) -> str:
    rrf = report["baseline_rrf"]
    lines = [
        "# Evidence recall of `rehydrate`",
        "",
        f"File `{report['file']}`: {report['questions']} questions in {report['sessions']}"
        f" sessions ({report['messages']} messages), measured {report['measured_at']} on"
        f" {report['machine']}. Command: `{report['command']}`.",
        "",
        "| budget (tokens) | rehydrate | RRF (BASELINES.md) |",
        "|---|---:|---:|",
    ]
    for budget, recall in report["recall"].items():
        lines.append(f"| {int(budget):,} | {recall:.3f} | {rrf.get(budget, float('nan')):.3f} |")
    lines += [
        "",
        f"Median `rehydrate` time over these calls: {report['rehydrate_ms_p50']} ms"
        f" ({report['degraded_calls']} calls had a degraded tier). Latency is measured"
        " properly by `bench/rehydrate.py`.",
        "",
    ]
    return "\n".join(lines)


async def run(args: argparse.Namespace) -> dict[str, Any]:
    path: Path = args.file
    asked = questions(path)
    budgets = [int(b) for b in args.budgets.split(",")]
    temporary = args.home is None
    home = (
        Path(tempfile.mkdtemp(prefix="amem-bench-recall-", dir="/var/tmp"))
        if temporary
        else args.home
    )
    env = {**os.environ, "AMEM_HOME": str(home)}
    settings = Settings.from_env(env)
    started = time.perf_counter()
    if temporary:
        control.up(settings)
        settings = Settings.from_env(env)
    try:
        messages = await load(settings, path)
        worker_pool.start(settings, None, 1)
        await caught_up(settings, args.timeout)
        measured = await measure(settings, asked, budgets)
    finally:
        if temporary:
            worker_pool.stop(settings)
            control.down(settings)
            shutil.rmtree(home, ignore_errors=True)
    return {
        **measured,
        "questions": len(asked),
        "sessions": len({s for s, _, _ in asked}),
        "messages": messages,
        "baseline_rrf": baseline_rrf(path),
        "file": str(path),
        "budgets": budgets,
        "elapsed_s": round(time.perf_counter() - started, 1),
        "measured_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "machine": f"{platform.machine()}, {os.cpu_count()} cores,"
        f" Python {platform.python_version()}",
        "command": " ".join([Path(sys.executable).name, *sys.argv]),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("file", nargs="?", type=Path, default=DEFAULT_FILE)
    parser.add_argument("--budgets", default="1000,2000,4000,8000")
    parser.add_argument("--home", type=Path, help="reuse the stack of this AMEM_HOME")
    parser.add_argument("--timeout", type=float, default=1800, help="seconds to project")
    parser.add_argument("--out", type=Path, default=Path("bench/reports"))
    parser.add_argument("--json", action="store_true", help="last line: the report as JSON")
    args = parser.parse_args()
    if not args.file.is_file():
        raise SystemExit(f"no such file: {args.file}")
    report = asyncio.run(run(args))
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "recall.json").write_text(json.dumps(report, indent=2) + "\n")
    (args.out / "recall.md").write_text(markdown(report))
    err.print(markdown(report))
    if args.json:
        print(json.dumps(report))


if __name__ == "__main__":
    main()
