"""Rank the candidates of a scope for a query: each index's best hits and their neighbours.

Candidates are the dense top-K and the BM25 top-K over the whole scope, and the turns within
``radius`` of a hit in its session (log order); nothing else of the scope is scored, so the
work does not grow with the history. Chosen by leave-one-conversation-out cross-validation
on the LoCoMo dev file in three layouts (one session per conversation, all conversations in
one session, each LoCoMo session its own session of the conversation's user): every fold
picked the same w, a and r, and β between 2.0 and 3.0 (2.5 on all five; ``bench/fusion_cv.py``;
method and figures in ``docs/rehydrator.md``):

1. each channel is z-scored over the hits it returned; a candidate it did not return scores
   as its lowest returned hit (it ranked below all of them). ``f = w·z(dense) +
   (1 - w)·z(bm25)``; with one channel missing (a degraded tier), the other ranks alone.
   Scores of different scales mix better this way than by reciprocal ranks (RRF), which
   throw the score gaps away;
2. a turn inherits part of its best neighbour's score: ``s = f + a·max f(i±1..r)``. The
   evidence for a question often sits next to the turn that matches it (the question's
   answer follows the turn that asked it);
3. the turns of every speaker the query names get ``+β`` (names only, never roles).

The dense channel embeds the query without the scope's speaker names
(:func:`without_names`): a name says whose turn to look at, which step 3 does, not what the
turn is about.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from projectors.store import MessageKey, Turn

Scores = npt.NDArray[np.float64]


@dataclass(frozen=True, kw_only=True, slots=True)
class FusionWeights:
    """The fitted weights of :func:`fuse`."""

    dense: float = 0.5
    """w: share of the dense channel (the full-text channel has the rest)."""
    window: float = 0.6
    """a: share of the best neighbour's score a turn inherits."""
    radius: int = 2
    """r: how many turns on either side count as neighbours (and are candidates)."""
    speaker: float = 2.5
    """β: bonus of the turns of a speaker the query names."""


def _names_pattern(names: Iterable[str]) -> re.Pattern[str] | None:
    alternatives = sorted({n for n in names if n}, key=len, reverse=True)
    if not alternatives:
        return None
    either = "|".join(re.escape(n) for n in alternatives)
    # A possessive may be written with an apostrophe or a right single quote (U+2019).
    return re.compile(rf"(?<!\w)(?:{either})(?:['\u2019]s)?(?!\w)", re.IGNORECASE)


def named_speakers(query: str, names: Iterable[str]) -> set[str]:
    """The speaker names the query mentions as whole words (any case)."""
    return {n for n in names if re.search(rf"(?<!\w){re.escape(n)}(?!\w)", query, re.IGNORECASE)}


def without_names(query: str, names: Iterable[str]) -> str:
    """The query with every speaker name (and its ``'s``) taken out: what the dense channel
    embeds. The query itself when nothing else would be left."""
    pattern = _names_pattern(names)
    if pattern is None:
        return query
    stripped = " ".join(pattern.sub(" ", query).split())
    return stripped if re.search(r"\w", stripped) else query


def _normalised(
    hits: Mapping[MessageKey, float], index: Mapping[MessageKey, int], n: int
) -> Scores:
    """z-scores over the returned hits, for the ``n`` candidates of ``index``; a candidate
    not returned scores as the lowest hit."""
    values = np.fromiter(hits.values(), dtype=np.float64, count=len(hits))
    spread = values.std()
    normal: Scores
    if len(values) < 2 or spread == 0:
        normal = np.zeros(n)
        for key in hits:
            if key in index:
                normal[index[key]] = 1.0
        return normal
    normal = np.full(n, (values.min() - values.mean()) / spread)
    for key, value in hits.items():
        at = index.get(key)
        if at is not None:
            normal[at] = (value - values.mean()) / spread
    return normal


def fuse(
    windows: Mapping[MessageKey, Sequence[Turn]],
    dense: Mapping[MessageKey, float],
    lexical: Mapping[MessageKey, float],
    query: str,
    weights: FusionWeights = FusionWeights(),
) -> dict[MessageKey, float]:
    """Key → score for every turn of ``windows`` (each hit's window of neighbours, in log
    order), best first; ties in log order (across sessions: by position, then session)."""
    index: dict[MessageKey, int] = {}
    names: list[str | None] = []
    sessions: list[str] = []
    ms: list[int] = []
    seq: list[int] = []
    rows: list[list[int]] = []
    for window in windows.values():
        row = []
        for turn in window:
            key = (turn.session_id, turn.message_id)
            at = index.get(key)
            if at is None:
                at = index[key] = len(names)
                names.append(turn.name)
                sessions.append(turn.session_id)
                ms.append(turn.position.ms)
                seq.append(turn.position.seq)
            row.append(at)
        rows.append(row)
    n = len(names)
    if not n:
        return {}
    keys = list(index)
    pairs = ((weights.dense, dense), (1 - weights.dense, lexical))
    channels = [(share, hits) for share, hits in pairs if hits]
    if not channels:
        return dict.fromkeys(keys, 0.0)
    total = sum(share for share, _ in channels)
    fused = np.zeros(n)
    for share, hits in channels:
        fused += (share / total) * _normalised(hits, index, n)

    # Each pair of turns at distance 1..r within a window are neighbours; every turn near a
    # hit is in that hit's window, so the pairs hold every neighbour that is a candidate.
    near: list[int] = []
    far: list[int] = []
    for row in rows:
        for d in range(1, weights.radius + 1):
            near += row[:-d] + row[d:]
            far += row[d:] + row[:-d]
    best = np.full(n, -np.inf)
    if near:
        np.maximum.at(best, np.asarray(near), fused[np.asarray(far)])
    best[np.isinf(best)] = 0.0  # a turn with no neighbour inherits nothing

    scores = fused + weights.window * best
    named = named_speakers(query, {name for name in names if name})
    if named:
        scores += weights.speaker * np.array([name in named for name in names])
    order = np.lexsort((np.array(sessions), np.array(seq), np.array(ms), -scores))
    values = scores.tolist()
    return {keys[i]: values[i] for i in order.tolist()}
