"""Evidence recall of ``rehydrate`` at a token budget, on any LoCoMo-format file, in three
layouts, each beside the RRF baseline computed in the same run on the same layout.

Run from the repository root::

    .venv/bin/python bench/recall.py [FILE] [--layout conversation,long,sessions]
        [--budgets 1000,2000,4000,8000] [--weights dense=0.5,window=0,...] [--json]

Layouts (each under its own tenant of one throw-away stack; ``--home`` reuses a stack):

- ``conversation``: each conversation one session (its user: the conversation), each
  question asked in its conversation's session;
- ``long``: every conversation of the file concatenated, in file order, into ONE session
  (message ids ``<conversation>:<dia_id>``), every question asked in it;
- ``sessions``: each LoCoMo ``session_N`` of conversation C its own session of user C, each
  question asked from a new, empty session of user C with ``scope="user"``.

The whole pipeline, as an agent meets it: the messages appended through the producer, a
projector worker process (the enricher embedding each message) until every projection has
the log, then ``Rehydrator.rehydrate`` through the public API, one question at a time as the
query, once per budget.

Metric (``../shared/data/README.md``): for each question of category ≠ 5 with evidence,
the share of its evidence ``dia_id``s among the context's message ids; the mean over
questions. Tokens are counted by the rehydrator itself (the embedding model's tokenizer,
[CLS] and [SEP] included, turns rendered ``<speaker>: <text> [image: <caption>]``); the
recent window and the session header count against each budget. The RRF baseline is the
method of ``BASELINES.md`` (``bench/baseline.py``) over the same scope as the question's.

Writes ``recall.json`` and ``recall.md`` to ``--out`` (default ``bench/reports``). With
``--json`` the last line printed is one JSON object: ``{"layouts": {"conversation":
{"recall": {"1000": r, ...}, "rrf": {...}}, ...}, "questions": n, ...}``. A measurement,
not a test.
"""

from __future__ import annotations

import argparse
import re
import statistics
import time
from collections import Counter, defaultdict
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import orjson
from baseline import WORD, Scope, Turns
from pipeline import err, parser, project, publish, read_messages, stack
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TimeElapsedColumn

from projectors.enrichment.embedder import Embedder
from rehydrator.context import Context, render
from rehydrator.fusion import FusionWeights
from rehydrator.rehydrate import ScopeName
from rehydrator.tokens import TokenCounter
from schemas.events import Message
from stack.rehydration import open_rehydrator
from stack.settings import Settings

TENANT = "bench-recall"
ADVERSARIAL = 5
LAYOUTS = ("conversation", "long", "sessions")
LONG_SESSION = "locomo"


def questions(path: Path) -> list[tuple[str, str, list[str]]]:
    """(conversation, question, evidence dia_ids) of every scored question, in file order."""
    out = []
    for sample in orjson.loads(path.read_bytes()):
        for qa in sample.get("qa", []):
            evidence = [str(e) for e in qa.get("evidence") or []]
            if qa.get("category") != ADVERSARIAL and evidence:
                out.append((str(sample["sample_id"]), str(qa["question"]), evidence))
    return out


@dataclass(frozen=True, slots=True)
class Ask:
    """One question as a layout asks it."""

    conversation: str
    session: str
    question: str
    dia_ids: list[str]
    """The evidence, as the file names it."""
    scope: ScopeName
    user_id: str | None
    id_prefix: str = ""
    """What this layout puts before a ``dia_id`` to make the message id."""

    @property
    def evidence(self) -> list[str]:
        return [self.id_prefix + e for e in self.dia_ids]


def layout(name: str, messages: Sequence[Message], path: Path) -> tuple[list[Message], list[Ask]]:
    """The messages of a layout (under its own tenant) and its questions."""
    tenant = f"{TENANT}-{name}"
    asked = questions(path)
    if name == "conversation":
        out = [replace(m, tenant_id=tenant) for m in messages]
        asks = [Ask(c, c, q, e, "session", None) for c, q, e in asked]
    elif name == "long":
        out = [
            replace(m, tenant_id=tenant, session_id=LONG_SESSION, id=f"{m.session_id}:{m.id}")
            for m in messages
        ]
        asks = [Ask(c, LONG_SESSION, q, e, "session", None, f"{c}:") for c, q, e in asked]
    elif name == "sessions":
        out = [
            replace(m, tenant_id=tenant, session_id=f"{m.session_id}-s{m.metadata['session']}")
            for m in messages
        ]
        asks = [Ask(c, f"{c}-new", q, e, "user", c) for c, q, e in asked]
    else:
        raise SystemExit(f"--layout: unknown {name!r} (one of {', '.join(LAYOUTS)})")
    return out, asks


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


def rrf_recall(
    messages: Sequence[Message], asks_by_layout: dict[str, list[Ask]], budgets: list[int]
) -> dict[str, dict[str, float]]:
    """Recall of BASELINES.md's method per layout: over the turns the question's scope holds
    (the conversation's, or every turn in ``long``)."""
    texts = [render(m) for m in messages]
    embedder = Embedder.load()
    try:
        vectors = np.asarray(embedder.embed(texts), dtype=np.float64)
        asked = sorted({a.question for asks in asks_by_layout.values() for a in asks})
        query_vectors = dict(zip(asked, np.asarray(embedder.embed(asked)), strict=True))
    finally:
        embedder.close()
    turns = Turns(
        vectors=vectors,
        words=[Counter(WORD.findall(t.lower())) for t in texts],
        tokens=TokenCounter.load().count(texts),
    )
    row = {(m.session_id, m.id): i for i, m in enumerate(messages)}
    by_conversation: dict[str, list[int]] = defaultdict(list)
    for i, m in enumerate(messages):
        by_conversation[m.session_id].append(i)
    scopes = {c: Scope(turns, rows) for c, rows in by_conversation.items()}
    everything = Scope(turns, range(len(messages)))
    out: dict[str, dict[str, float]] = {}
    for name, asks in asks_by_layout.items():
        hits: dict[int, list[float]] = defaultdict(list)
        for a in asks:
            scope = everything if name == "long" else scopes[a.conversation]
            evidence = [row.get((a.conversation, e), -1) for e in a.dia_ids]
            for budget in budgets:
                packed = scope.packed(a.question, query_vectors[a.question], budget)
                hits[budget].append(sum(e in packed for e in evidence) / len(evidence))
        out[name] = {str(b): round(statistics.fmean(hits[b]), 4) for b in budgets}
    return out


async def measure(
    settings: Settings,
    asks_by_layout: dict[str, list[Ask]],
    budgets: list[int],
    weights: FusionWeights | None,
) -> dict[str, dict[str, Any]]:
    out: dict[str, dict[str, Any]] = {}
    async with open_rehydrator(settings, weights=weights) as rehydrator:
        for name, asks in asks_by_layout.items():
            hits: dict[int, list[float]] = defaultdict(list)
            elapsed: list[float] = []
            degraded = 0
            tenant = f"{TENANT}-{name}"
            # Each scope's copy loaded first: what is measured is the method, not a cold start.
            for a in {(a.session, a.scope, a.user_id): a for a in asks}.values():
                await rehydrator.prepare(tenant, a.session, scope=a.scope, user_id=a.user_id)
            with Progress(
                f"{name}: rehydrating",
                BarColumn(),
                MofNCompleteColumn(),
                TimeElapsedColumn(),
                console=err,
            ) as bar:
                task = bar.add_task("rehydrating", total=len(asks) * len(budgets))
                for a in asks:
                    for budget in budgets:
                        context: Context = await rehydrator.rehydrate(
                            tenant, a.session, a.question, budget, scope=a.scope, user_id=a.user_id
                        )
                        ids = {item.message.id for item in context.items}
                        hits[budget].append(sum(e in ids for e in a.evidence) / len(a.evidence))
                        elapsed.append(context.elapsed_ms)
                        degraded += bool(context.degraded)
                        bar.advance(task)
            out[name] = {
                "recall": {str(b): round(statistics.fmean(hits[b]), 4) for b in budgets},
                "rehydrate_ms_p50": round(statistics.median(elapsed), 2),
                "degraded_calls": degraded,
            }
    return out


def markdown(report: dict[str, Any]) -> str:
    published = report["baseline_rrf"]
    lines = [
        "# Evidence recall of `rehydrate`",
        "",
        f"File `{report['file']}`: {report['questions']} questions, {report['messages']}"
        f" messages, measured {report['measured_at']} on {report['machine']}."
        f" Command: `{report['command']}`. Fusion: {report['weights']}.",
        "",
        "The RRF column is BASELINES.md's method (`bench/baseline.py`) computed in this run on"
        " the same layout and scope; the published figures are for the conversation layout.",
    ]
    for name, got in report["layouts"].items():
        lines += [
            "",
            f"## {name}",
            "",
            "| budget (tokens) | rehydrate | RRF (this run) | BASELINES.md RRF |",
            "|---|---:|---:|---:|",
        ]
        for budget, recall in got["recall"].items():
            ref = published.get(budget) if name == "conversation" else None
            lines.append(
                f"| {int(budget):,} | {recall:.3f} | {got['rrf'][budget]:.3f} |"
                f" {'' if ref is None else f'{ref:.3f}'} |"
            )
        lines += [
            "",
            f"Median `rehydrate` time: {got['rehydrate_ms_p50']} ms; calls with a degraded"
            f" tier: {got['degraded_calls']}.",
        ]
    lines.append("")
    return "\n".join(lines)


async def run(args: argparse.Namespace) -> dict[str, Any]:
    path: Path = args.file
    budgets = [int(b) for b in args.budgets.split(",")]
    names = [n for n in args.layout.split(",") if n]
    base = read_messages(path, TENANT)
    laid = {name: layout(name, base, path) for name in names}
    started = time.perf_counter()
    rrf = rrf_recall(base, {n: asks for n, (_, asks) in laid.items()}, budgets)
    async with stack(args.home) as settings:
        await project(
            settings, [m for messages, _ in laid.values() for m in messages], args.timeout
        )
        measured = await measure(
            settings,
            {n: asks for n, (_, asks) in laid.items()},
            budgets,
            parse_weights(args.weights),
        )
    return {
        "layouts": {n: {**measured[n], "rrf": rrf[n]} for n in names},
        "questions": len(questions(path)),
        "messages": len(base),
        "baseline_rrf": baseline_rrf(path),
        "budgets": budgets,
        "weights": args.weights or "measured defaults (rehydrator/fusion.py)",
        "elapsed_s": round(time.perf_counter() - started, 1),
    }


def main() -> None:
    args = parser(__doc__.split("\n\n")[0])
    args.add_argument("--layout", default=",".join(LAYOUTS), help="comma-separated layouts")
    args.add_argument("--budgets", default="1000,2000,4000,8000")
    args.add_argument(
        "--weights", help="ablation, e.g. window=0,speaker=0 (fields of FusionWeights)"
    )
    publish(args.parse_args(), "recall", run, markdown)


if __name__ == "__main__":
    main()
