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
import re
import statistics
import time
from collections import defaultdict
from dataclasses import replace
from pathlib import Path
from typing import Any

import orjson
from pipeline import err, parser, projected, publish
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TimeElapsedColumn

from rehydrator.context import Context
from rehydrator.fusion import FusionWeights
from stack.rehydration import open_rehydrator
from stack.settings import Settings

TENANT = "bench-recall"
ADVERSARIAL = 5


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


def parse_weights(raw: str | None) -> FusionWeights | None:
    """``dense=0.65,window=0,speaker=0``: fusion weights other than the measured ones."""
    if not raw:
        return None
    given = {k.strip(): v for k, v in (pair.split("=", 1) for pair in raw.split(","))}
    known = FusionWeights()
    unknown = set(given) - {"dense", "window", "radius", "speaker"}
    if unknown:
        raise SystemExit(f"--weights: unknown {', '.join(sorted(unknown))}")
    return replace(
        known,
        dense=float(given.get("dense", known.dense)),
        window=float(given.get("window", known.window)),
        radius=int(given.get("radius", known.radius)),
        speaker=float(given.get("speaker", known.speaker)),
    )


async def measure(
    settings: Settings,
    asked: list[tuple[str, str, list[str]]],
    budgets: list[int],
    weights: FusionWeights | None,
) -> dict[str, Any]:
    hits: dict[int, list[float]] = defaultdict(list)
    elapsed: list[float] = []
    tiers: dict[str, list[float]] = defaultdict(list)
    degraded = 0
    async with open_rehydrator(settings, weights=weights) as rehydrator:
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
    started = time.perf_counter()
    async with projected(path, TENANT, home=args.home, timeout_s=args.timeout) as (
        settings,
        messages,
    ):
        weights = parse_weights(args.weights)
        measured = await measure(settings, asked, budgets, weights)
    return {
        **measured,
        "questions": len(asked),
        "sessions": len({s for s, _, _ in asked}),
        "messages": messages,
        "baseline_rrf": baseline_rrf(path),
        "budgets": budgets,
        "weights": args.weights or "measured defaults (rehydrator/fusion.py)",
        "elapsed_s": round(time.perf_counter() - started, 1),
    }


def main() -> None:
    args = parser(__doc__.split("\n\n")[0])
    args.add_argument("--budgets", default="1000,2000,4000,8000")
    args.add_argument(
        "--weights", help="ablation, e.g. window=0,speaker=0 (fields of FusionWeights)"
    )
    publish(args.parse_args(), "recall", run, markdown)


if __name__ == "__main__":
    main()
