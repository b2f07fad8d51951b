"""What ``bench/fusion_cv.py`` measures: the reference methods, the CV of the new method
over its grid, recall vs K, the ablations, and the cost of the header and recent window."""

from __future__ import annotations

import sys
import time
from collections.abc import Sequence
from dataclasses import replace
from functools import partial
from typing import Any

import numpy as np
from fusion_data import LAYOUTS, Corpus
from fusion_methods import (
    Method,
    cross_validate,
    evaluate,
    grid,
    measure,
    near,
    pack,
    rrf,
    run_grid,
    table,
    today,
    topk,
)
from fusion_scopes import Asked, Layout, prepare

FINAL_GRID: dict[str, Sequence[Any]] = {
    "dense": (0.4, 0.5, 0.6, 0.7),
    "window": (0.4, 0.6, 0.8),
    "radius": (1, 2, 3),
    "speaker": (1.5, 2.0, 2.5, 3.0),
}
"""The parameters CV chooses among for the recommended method (K = 200), the one
``rehydrator/fusion.py`` implements."""

SMALL_GRID: dict[str, Sequence[Any]] = {
    "dense": (0.4, 0.5, 0.6, 0.7),
    "window": (0.4, 0.6),
    "speaker": (1.5, 2.0, 3.0),
}
"""A smaller grid, re-tuned by CV for every variant of the K curve and the ablations."""

KS = (50, 100, 200, 400)

ABLATIONS: list[tuple[str, dict[str, Any], dict[str, Sequence[Any]]]] = [
    ("recommended (this grid)", {}, {}),
    ("normalisation: raw scores in fixed units", {"norm": "fixed"}, {}),
    ("normalisation: min-max over the top-K", {"norm": "minmax"}, {"speaker": (0.2, 0.4, 0.8)}),
    ("normalisation: rank (1 - rank/K)", {"norm": "rank"}, {"speaker": (0.2, 0.4, 0.8)}),
    ("normalisation: z over the scope (N), non-hits at floor", {"norm": "scope"}, {}),
    ("BM25 of a turn not returned = 0 (not the lowest returned)", {"floor": "zero"}, {}),
    ("speaker names left in the dense query", {"strip": False}, {}),
    ("speaker names also out of the full-text query", {"lex_strip": True}, {}),
    ("speaker bonus only when exactly one speaker is named", {"speakers": "one"}, {}),
    ("with a partner bonus (+2.0 near a named speaker's turn)", {"partner": 2.0}, {}),
    ("no speaker bonus at all", {}, {"speaker": (0.0,)}),
    ("no neighbour window (a = 0)", {}, {"window": (0.0,)}),
    ("radius 1", {"radius": 1}, {}),
    ("radius 3", {"radius": 3}, {}),
    ("neighbours of neighbours as candidates (r + 2)", {"expand": 2}, {}),
]


def experiments(corpus: Corpus, scopes: dict[str, Layout], quick: bool) -> dict[str, Any]:
    fold = np.array([corpus.samples.index(q.sample) for q in corpus.questions])
    started = time.perf_counter()
    prepared = {lay: prepare(corpus, scopes[lay], 1.2, 0.75, lay == "long") for lay in LAYOUTS}
    deployed = {lay: prepare(corpus, scopes[lay], 1.0, 0.0, lay == "long") for lay in LAYOUTS}
    out: dict[str, Any] = {"prepare_s": round(time.perf_counter() - started, 1)}
    say(f"prepared both BM25 variants in {out['prepare_s']} s")

    reference = {
        "today, as deployed (BM25 k1 1, b 0), whole scope": evaluate(
            lambda a, _: today(a), deployed
        ),
        "today, BM25 k1 1.2, b 0.75, whole scope": evaluate(lambda a, _: today(a), prepared),
        # bench/baseline.py: rank_bm25's defaults (k1 1.5), what bench/recall.py reports.
        "RRF baseline (BASELINES.md method)": measure(
            lambda a, _: partial(rrf, a, corpus), prepared
        ),
    }
    deployed_long = evaluate(lambda a, _: today(a, outline=1000), deployed)
    out["reference"] = {k: table(v) for k, v in reference.items()}
    out["reference"]["today, as deployed, latest 1,000 turns only (AMEM_REHYDRATE_CANDIDATES)"] = {
        "long": table(deployed_long)["long"]
    }
    say("references done")

    base = Method()
    grid_axes = SMALL_GRID if quick else FINAL_GRID
    started = time.perf_counter()
    main = run_grid(grid(base, **grid_axes), prepared)
    held, picks, final = cross_validate(main, fold)
    out["grid"] = {k: list(v) for k, v in grid_axes.items()}
    out["grid_configs"] = len(main)
    out["grid_s"] = round(time.perf_counter() - started, 1)
    out["cv"] = table(held)
    out["cv_by_conversation"] = {
        corpus.samples[c]: table(held[:, :, fold == c]) for c in range(len(corpus.samples))
    }
    out["picks"] = {corpus.samples[c]: m.label(*grid_axes) for c, m in enumerate(picks)}
    out["final"] = {f: getattr(final, f) for f in Method.__dataclass_fields__}
    out["all_five"] = table(main[final])
    say(f"main grid: {len(main)} configurations in {out['grid_s']} s; final {final}")

    others = {
        "final parameters, BM25 as deployed (k1 1, b 0)": evaluate(
            lambda a, _: topk(a, final), deployed
        ),
        "final parameters, dense channel only (full text degraded)": evaluate(
            lambda a, _: topk(a, replace(final, channels="dense")), prepared
        ),
        "final parameters, full-text channel only (dense degraded)": evaluate(
            lambda a, _: topk(a, replace(final, channels="lexical")), prepared
        ),
    }
    out["variants"] = {k: table(v) for k, v in others.items()}
    out["header_recent_cost"] = header_cost(prepared, final)

    curve = {}
    for k in KS:
        res = run_grid(grid(replace(final, k=k), **SMALL_GRID), prepared)
        cv, _, best = cross_validate(res, fold)
        curve[str(k)] = {"cv": table(cv), "all_five": table(res[best])}
    out["k_curve"] = curve
    out["coverage"] = coverage(prepared, final)
    say("K curve done")

    ablations = {}
    for name, fixed, axes in [] if quick else ABLATIONS:
        variant = replace(final, **fixed)
        res = run_grid(grid(variant, **{**SMALL_GRID, **axes}), prepared)
        cv, _, _ = cross_validate(res, fold)
        ablations[name] = table(cv)
        say(f"ablation: {name}")
    out["ablations"] = ablations
    return out


def header_cost(prepared: dict[str, list[Asked]], m: Method) -> dict[str, dict[str, float]]:
    """Recall at 1,000 tokens of the final method with and without the header and the
    recent window (the ``conversation`` and ``long`` layouts, where they exist)."""
    out = {}
    for layout in ("conversation", "long"):
        row = {}
        for name, header, recent in (
            ("as packed", True, True),
            ("no header", False, True),
            ("no recent window", True, False),
            ("neither", False, False),
        ):
            got = []
            for a in prepared[layout]:
                scope = replace(
                    a.scope,
                    header=a.scope.header if header else 0,
                    recent=a.scope.recent if recent else [],
                )
                packed = pack(topk(a, m), scope, 1000)
                got.append(sum(e in packed for e in a.evidence) / len(a.evidence))
            row[name] = round(float(np.mean(got)), 4)
        out[layout] = row
    return out


def coverage(prepared: dict[str, list[Asked]], m: Method) -> dict[str, dict[str, float]]:
    """Share of the evidence among each channel's top-K hits, and among the candidates."""
    out: dict[str, dict[str, float]] = {}
    for k in KS:
        row = {}
        for layout in LAYOUTS:
            hits, near_hits = [], []
            for a in prepared[layout]:
                hit = np.zeros(a.scope.n, dtype=bool)
                hit[a.by_dense[m.strip][:k]] = True
                hit[a.by_lexical[m.lex_strip][:k]] = True
                cand = near(hit, m.radius, a.scope.segment)
                hits.append(sum(e >= 0 and bool(hit[e]) for e in a.evidence) / len(a.evidence))
                near_hits.append(
                    sum(e >= 0 and bool(cand[e]) for e in a.evidence) / len(a.evidence)
                )
            row[f"{layout} hits"] = round(float(np.mean(hits)), 3)
            row[f"{layout} candidates"] = round(float(np.mean(near_hits)), 3)
        out[str(k)] = row
    return out


def say(text: str) -> None:
    print(text, file=sys.stderr, flush=True)
