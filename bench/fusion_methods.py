"""The rankings ``bench/fusion_cv.py`` compares, packing as the rehydrator does it, recall
per layout and budget, and leave-one-conversation-out cross-validation."""

from __future__ import annotations

import math
from collections.abc import Callable, Collection, Sequence
from dataclasses import dataclass, replace
from functools import partial
from itertools import chain, islice, product
from typing import Any

import numpy as np
import numpy.typing as npt
from fusion_data import BUDGETS, F64, I64, LAYOUTS, Corpus
from fusion_scopes import Asked, Scope

from rehydrator.fusion import named_speakers
from rehydrator.packing import MIN_TURN_TOKENS

# ---------------------------------------------------------------- packing


def pack(order: Sequence[int], scope: Scope, budget: int) -> set[int]:
    """Positions packed by ``rehydrator.packing.pack``: header, recent window, then ``order``,
    skipping a turn that does not fit, until a whole chunk fits nothing."""
    used = scope.header if scope.header <= budget else 0
    chunk = max(16, budget // 25)
    recent = set(scope.recent)
    seq = chain(scope.recent, (p for p in order if p not in recent))
    packed: set[int] = set()
    while budget - used >= MIN_TURN_TOKENS:
        ids = list(islice(seq, chunk))
        if not ids:
            break
        added = 0
        for p in ids:
            t = scope.cost[p]
            if used + t > budget:
                continue
            used += t
            added += 1
            packed.add(p)
        if not added:
            break
    return packed


# ---------------------------------------------------------------- ranking methods


def window_max(values: F64, radius: int, segment: I64) -> F64:
    """Best value among the turns at distance 1..radius in the same session (0: none)."""
    best = np.full_like(values, -np.inf)
    for d in range(1, min(radius, len(values) - 1) + 1):
        same = segment[d:] == segment[:-d]
        best[d:] = np.where(same, np.maximum(best[d:], values[:-d]), best[d:])
        best[:-d] = np.where(same, np.maximum(best[:-d], values[d:]), best[:-d])
    best[np.isinf(best)] = 0.0
    return best


def _z(values: F64) -> F64:
    spread = values.std()
    return np.zeros_like(values) if spread == 0 else (values - values.mean()) / spread


def today(a: Asked, outline: int = 0) -> list[int]:
    """``rehydrator.fusion.fuse`` as it runs now: z-scores over the turns of the outline (the
    whole scope, or its latest ``outline`` turns), ``0.65 z(dense) + 0.35 z(bm25)``, plus
    0.8 x the best neighbour at distance 1..2, plus 1.6 for the one named speaker."""
    n = a.scope.n
    keep = np.arange(max(0, n - outline) if outline else 0, n)
    returned = a.by_dense[False][: outline or n]
    dense = np.full(n, a.dense[False][returned].min())
    dense[returned] = a.dense[False][returned]
    lexical = np.zeros(n)
    hits = a.by_lexical[False][: outline or n]
    lexical[hits] = a.lexical[False][hits]
    channels = [(0.65, _z(dense[keep]))]
    if len(hits):
        channels.append((0.35, _z(lexical[keep])))
    total = sum(w for w, _ in channels)
    f = sum((w / total) * v for w, v in channels)
    assert isinstance(f, np.ndarray)
    said = named_speakers(a.query, sorted({s for s in (a.scope.speakers[p] for p in keep) if s}))
    one = np.array([len(said) == 1 and a.scope.speakers[p] in said for p in keep])
    s = f + 0.8 * window_max(f, 2, a.scope.segment[keep]) + 1.6 * one
    ranked: list[int] = keep[np.argsort(-s, kind="stable")].tolist()
    return ranked


def rrf(a: Asked, corpus: Corpus, budget: int) -> set[int]:
    """Positions packed by BASELINES.md's method (``bench/baseline.py``): RRF (k 60) of the
    dense (rendered turns) and BM25Okapi (lower-cased words) top 200s, in rank order until
    the next turn would overflow; no header, no recent window."""
    rows = a.scope.rrf.packed(a.query, corpus.queries[a.query], budget)
    return {a.scope.at[r] for r in rows}


@dataclass(frozen=True, slots=True)
class Method:
    """Fusion of each channel's top-K hits and their neighbours (the new method)."""

    k: int = 200  # hits asked of each channel
    norm: str = "z"  # z | fixed | minmax | rank | scope: see ``normalised``
    dense: float = 0.5  # share of the dense channel
    window: float = 0.6  # share of the best neighbour's score a turn inherits
    radius: int = 2  # neighbours are the turns at distance 1..r in the same session
    speaker: float = 2.0  # bonus of the turns of a speaker the query names
    partner: float = 0.0  # bonus of a candidate within r of a named speaker's candidate turn
    speakers: str = "any"  # which names count: any named | one (only if exactly one is named)
    strip: bool = True  # speaker names taken out of the dense query
    lex_strip: bool = False  # ... and out of the full-text query
    floor: str = "lowest"  # BM25 of a turn not returned: lowest (returned) | zero
    expand: int = 0  # candidates reach r + expand turns around each hit
    channels: str = "both"  # both | dense | lexical (the other tier degraded)

    def label(self, *fields: str) -> str:
        return ", ".join(f"{f}={getattr(self, f)}" for f in fields)


DENSE_UNIT, LEXICAL_UNIT = 0.1, 1.0
"""``fixed`` normalisation: raw scores in these units (about each channel's spread over a
conversation: cosine sd 0.12, BM25 sd 1.05)."""


def normalised(hits: F64, floor: float, norm: str, n: int, unit: float) -> tuple[F64, float]:
    """The hits' normalised scores (best first) and the floor's, from the returned hits alone
    (``scope`` also uses the scope's size ``n``, taking every other turn at the floor)."""
    if norm == "fixed":
        return hits / unit, floor / unit
    if norm == "rank":
        return 1.0 - np.arange(len(hits)) / len(hits), 0.0
    if norm == "minmax":
        spread = float(hits[0]) - floor
        return ((hits - floor) / spread, 0.0) if spread > 0 else (np.ones_like(hits), 0.0)
    if norm == "scope":
        rest = n - len(hits)
        mean = (hits.sum() + rest * floor) / n
        var = (np.square(hits).sum() + rest * floor * floor) / n - mean * mean
    else:
        mean, var = float(hits.mean()), float(hits.var())
    if len(hits) < 2 or var <= 1e-18:
        return np.ones_like(hits), 0.0
    sd = math.sqrt(var)
    return (hits - mean) / sd, (floor - mean) / sd


def _channel(
    order: I64, values: F64, m: Method, n: int, zero: bool, unit: float
) -> tuple[I64, F64] | None:
    """One channel's top-K positions and its score of every turn (non-hits: the floor)."""
    top = order[: m.k]
    if not len(top):
        return None
    raw = values[top]
    scores, low = normalised(raw, 0.0 if zero else float(raw[-1]), m.norm, n, unit)
    full = np.full(n, low)
    full[top] = scores
    return top, full


def near(hit: npt.NDArray[np.bool_], radius: int, segment: I64) -> npt.NDArray[np.bool_]:
    """The hits and the turns within ``radius`` of a hit in the same session."""
    candidate = hit.copy()
    for d in range(1, min(radius, len(hit) - 1) + 1):
        same = segment[d:] == segment[:-d]
        candidate[d:] |= hit[:-d] & same
        candidate[:-d] |= hit[d:] & same
    return candidate


def topk(a: Asked, m: Method) -> list[int]:
    """Candidates (hits and their neighbours) by descending score, ties in log order."""
    n, seg = a.scope.n, a.scope.segment
    parts = []
    if m.channels != "lexical":
        got = _channel(a.by_dense[m.strip], a.dense[m.strip], m, n, False, DENSE_UNIT)
        parts += [(m.dense, got)] if got else []
    if m.channels != "dense":
        zero = m.floor == "zero"
        got = _channel(a.by_lexical[m.lex_strip], a.lexical[m.lex_strip], m, n, zero, LEXICAL_UNIT)
        parts += [(1.0 - m.dense, got)] if got else []
    if not parts:
        return []
    total = sum(w for w, _ in parts)
    f = np.zeros(n)
    hit = np.zeros(n, dtype=bool)
    for w, (top, full) in parts:
        f += (w / total) * full
        hit[top] = True
    candidate = near(hit, m.radius + m.expand, seg)
    said = (a.one if m.speakers == "one" else a.any) & candidate
    s = f + m.window * window_max(f, m.radius, seg) + m.speaker * said
    if m.partner:
        s += m.partner * (window_max(said.astype(np.float64), m.radius, seg) > 0)
    ranked = np.flatnonzero(candidate)
    out: list[int] = ranked[np.argsort(-s[ranked], kind="stable")].tolist()
    return out


# ---------------------------------------------------------------- evaluation and CV


Results = npt.NDArray[np.float32]
"""Recall per layout, budget and question: shape (3, 4, questions)."""

WEIGHTS = np.array([2.0, 1.0, 1.0, 1.0])
"""CV objective: mean recall over layouts and budgets, 1,000 tokens counted twice."""


def measure(
    contexts: Callable[[Asked, int], Callable[[int], Collection[int]]],
    prepared: dict[str, list[Asked]],
) -> Results:
    """Recall of every question at every budget; ``contexts(asked, question)`` gives what
    that question's context holds at a budget (positions in its scope)."""
    out = np.zeros((len(LAYOUTS), len(BUDGETS), len(prepared[LAYOUTS[0]])), dtype=np.float32)
    for li, layout in enumerate(LAYOUTS):
        for qi, a in enumerate(prepared[layout]):
            packed = contexts(a, qi)
            for bi, budget in enumerate(BUDGETS):
                got = packed(budget)
                out[li, bi, qi] = sum(e in got for e in a.evidence) / len(a.evidence)
    return out


def evaluate(
    rank: Callable[[Asked, int], Sequence[int]], prepared: dict[str, list[Asked]]
) -> Results:
    """Recall of a ranking packed as the rehydrator packs (:func:`pack`)."""
    return measure(lambda a, qi: partial(pack, rank(a, qi), a.scope), prepared)


def objective(r: Results) -> float:
    return float((r.mean(axis=2) @ WEIGHTS).mean() / WEIGHTS.sum())


def grid(base: Method, **axes: Sequence[Any]) -> list[Method]:
    keys = list(axes)
    return [replace(base, **dict(zip(keys, v, strict=True))) for v in product(*axes.values())]


def run_grid(methods: list[Method], prepared: dict[str, list[Asked]]) -> dict[Method, Results]:
    return {m: evaluate(lambda a, _, m=m: topk(a, m), prepared) for m in methods}  # type: ignore[misc]


def cross_validate(
    results: dict[Method, Results], fold: I64
) -> tuple[Results, list[Method], Method]:
    """Held-out recall of each question with the parameters that did best on the other
    conversations; the parameters each fold picked; the best on all five."""
    held = np.zeros_like(next(iter(results.values())))
    picks = []
    for c in range(int(fold.max()) + 1):
        train, test = fold != c, fold == c
        best = max(results, key=lambda m: objective(results[m][:, :, train]))
        held[:, :, test] = results[best][:, :, test]
        picks.append(best)
    return held, picks, max(results, key=lambda m: objective(results[m]))


def table(r: Results) -> dict[str, list[float]]:
    return {lay: [round(float(x), 4) for x in r[li].mean(axis=1)] for li, lay in enumerate(LAYOUTS)}
