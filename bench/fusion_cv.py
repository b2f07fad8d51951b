"""Fusion of top-K hits for the rehydrator, chosen by leave-one-conversation-out CV.

Run from the repository root (a few minutes; a measurement, not a test)::

    .venv/bin/python bench/fusion_cv.py [FILE] [--out bench/reports] [--quick]

The rehydrator cannot score every turn of a long history: it gets each channel's top-K
hits (dense cosine, BM25) over the scope and their neighbours. This harness simulates that
ranking offline on a LoCoMo-format file (default ``../shared/data/locomo-dev.json``) in three
layouts: ``conversation`` (one session per conversation), ``long`` (all conversations in one
session) and ``sessions`` (each LoCoMo session its own session of the conversation's user;
questions asked from a new, empty session with user scope). Its inputs are those of the
pipeline: turn vectors of the message content (``Embedder``), Postgres's english lexemes of
the rendered turn (read from a real Postgres; BM25 computed here is checked against
``PostgresProjectionStore.lexical``), token counts of ``render(message)``, and packing as
``rehydrator/packing.py`` does it (header, recent window, then ranked turns). Embeddings,
lexemes and token counts are cached under ``/var/tmp/amem-fusion-cache``.

Each method's parameters are chosen by leave-one-conversation-out cross-validation (for each
conversation, the parameters that maximise the mean recall over the other four, over the
three layouts and four budgets with 1,000 tokens counted twice); the report gives the CV
recall per layout and budget beside today's fusion (simulated) and the RRF baseline of
BASELINES.md, recall vs K, and what each part of the method adds. Writes
``fusion_cv.json`` and ``fusion_cv.md`` to ``--out``.

Modules: ``fusion_data`` (the file, its cached vectors, lexemes and token counts),
``fusion_scopes`` (layouts, scopes, BM25 and its check against Postgres, each question's
scores), ``fusion_methods`` (rankings, packing, recall, CV), ``fusion_experiments`` (what
is measured) and ``fusion_report`` (the Markdown).
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Any

from fusion_data import read_corpus
from fusion_experiments import experiments, say
from fusion_report import markdown
from fusion_scopes import check_sql, layouts
from pipeline import DEFAULT_FILE, provenance


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("file", nargs="?", type=Path, default=DEFAULT_FILE)
    p.add_argument("--out", type=Path, default=Path("bench/reports"))
    p.add_argument("--quick", action="store_true", help="small grid, no ablations (a smoke run)")
    p.add_argument("--sql-every", type=int, default=10, help="check BM25 on every Nth question")
    args = p.parse_args()
    if not args.file.is_file():
        raise SystemExit(f"no such file: {args.file}")
    started = time.perf_counter()
    corpus = read_corpus(args.file)
    scopes = layouts(corpus)
    say(f"corpus read in {time.perf_counter() - started:.1f} s")
    report: dict[str, Any] = {
        "file": str(args.file),
        "questions": len(corpus.questions),
        "turns": len(corpus.messages),
        "sql_every": args.sql_every,
        "sql_check": check_sql(corpus, scopes, args.sql_every),
    }
    say(f"SQL check: {report['sql_check']}")
    report.update(experiments(corpus, scopes, args.quick))
    report["elapsed_s"] = round(time.perf_counter() - started, 1)
    report.update(provenance())
    args.out.mkdir(parents=True, exist_ok=True)
    name = "fusion_cv_quick" if args.quick else "fusion_cv"
    (args.out / f"{name}.json").write_text(json.dumps(report, indent=2) + "\n")
    (args.out / f"{name}.md").write_text(markdown(report))
    print(markdown(report))


if __name__ == "__main__":
    main()
