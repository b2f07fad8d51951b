"""Rank a session's turns for a query from the dense and full-text scores.

Measured on ``../shared/data/locomo-dev.json`` (``bench/recall.py``; the method and the
figures of each step are in ``docs/rehydrator.md``):

1. each channel is z-scored over the session's turns, then mixed: ``f = w·z(dense) +
   (1 - w)·z(bm25)``. Scores of different scales mix better this way than by reciprocal
   ranks (RRF), which throw the score gaps away;
2. a turn inherits part of its best neighbour's score: ``s = f + a·max f(i±1..r)``. The
   evidence for a question often sits next to the turn that matches it (the question's
   answer follows the turn that asked it);
3. when the query names exactly one speaker of the session, that speaker's turns get ``+β``.

Three fitted weights (w, a, β), chosen by leave-one-conversation-out cross-validation on
the five dev conversations (every fold picked the same values but one): they are not fitted
to a conversation.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from projectors.store import MessageKey, Turn

Scores = npt.NDArray[np.float64]


@dataclass(frozen=True, kw_only=True, slots=True)
class FusionWeights:
    dense: float = 0.65
    """w: share of the dense channel (the full-text channel has the rest)."""
    window: float = 0.8
    """a: share of the best neighbour's score a turn inherits."""
    radius: int = 2
    """r: how many turns on either side count as neighbours."""
    speaker: float = 1.6
    """β: bonus of the turns of a speaker the query names."""


def _z(values: Scores) -> Scores:
    spread = values.std()
    if spread == 0:
        return np.zeros_like(values)
    normal: Scores = (values - values.mean()) / spread
    return normal


def named_speaker(query: str, names: Sequence[str]) -> str | None:
    """The one speaker name the query mentions as a word (None: none, or several)."""
    mentioned = {
        n for n in names if re.search(rf"(?<!\w){re.escape(n)}(?!\w)", query, re.IGNORECASE)
    }
    return mentioned.pop() if len(mentioned) == 1 else None


def fuse(
    windows: Mapping[MessageKey, Sequence[Turn]],
    dense: Mapping[MessageKey, float],
    lexical: Mapping[MessageKey, float],
    query: str,
    weights: FusionWeights = FusionWeights(),
) -> dict[MessageKey, float]:
    """Key → score for every turn of ``windows`` (each hit's window of neighbours in log
    order), highest = most relevant.

    A turn the dense channel did not return scores as its lowest returned score (it ranked
    below all of them); one the full text did not match scores 0, as in BM25. With one
    channel missing (a degraded tier), the other ranks alone.
    """
    turns = {t.key: t for window in windows.values() for t in window}
    if not turns:
        return {}
    keys = list(turns)
    channels: list[tuple[float, Scores]] = []
    if dense:
        floor = min(dense.values())
        channels.append((weights.dense, np.array([dense.get(k, floor) for k in keys])))
    if lexical:
        channels.append((1 - weights.dense, np.array([lexical.get(k, 0.0) for k in keys])))
    if not channels:
        return dict.fromkeys(keys, 0.0)
    total = sum(share for share, _ in channels)
    mixed = sum((share / total) * _z(values) for share, values in channels)
    assert isinstance(mixed, np.ndarray)
    fused = dict(zip(keys, mixed.tolist(), strict=True))
    floor_fused = float(mixed.min())
    best: dict[MessageKey, float] = {}
    for window in windows.values():
        for i, turn in enumerate(window):
            near = [
                fused[other.key]
                for j, other in enumerate(window)
                if j != i and abs(j - i) <= weights.radius
            ]
            if near:
                best[turn.key] = max(best.get(turn.key, floor_fused), *near)
    names = sorted({t.name for t in turns.values() if t.name})
    speaker = named_speaker(query, names)
    return {
        k: fused[k]
        + weights.window * best.get(k, 0.0)
        + (weights.speaker if speaker is not None and turns[k].name == speaker else 0.0)
        for k in keys
    }
