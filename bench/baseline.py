"""The reference method of ``../shared/data/BASELINES.md``: reciprocal-rank fusion (k = 60)
of a dense and a BM25 ranking (top 200 each), packed in rank order until the next turn would
overflow the budget.

Dense: all-MiniLM-L6-v2 of the rendered turn (``<speaker>: <text> [image: <caption>]``),
cosine. BM25: Okapi as ``rank_bm25.BM25Okapi`` computes it with its defaults (k1 1.5, b 0.75,
a negative idf raised to 0.25 x the mean idf) over lower-cased ``\\w+`` words, the query's
words counted as often as they occur. On the conversation layout this gives 0.701 / 0.788 /
0.870 / 0.941 against the published 0.702 / 0.789 / 0.869 / 0.941 (ties, which the
published method leaves open, make the rest).
"""

from __future__ import annotations

import math
import re
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

WORD = re.compile(r"\w+")
TOP = 200
RRF_K = 60
K1, B, EPSILON = 1.5, 0.75, 0.25


@dataclass(frozen=True, slots=True)
class Turns:
    """Every turn of a file once: its rendered text's unit vector, words and token count."""

    vectors: npt.NDArray[np.float64]
    words: list[Counter[str]]
    tokens: list[int]


class Scope:
    """What one question ranks over: some turns of :class:`Turns`, with BM25's statistics."""

    def __init__(self, turns: Turns, rows: Sequence[int]) -> None:
        self.rows = np.asarray(rows, dtype=np.intp)
        self.vectors = turns.vectors[self.rows]
        self.tokens = [turns.tokens[r] for r in rows]
        bags = [turns.words[r] for r in rows]
        self.lengths = np.array([float(sum(b.values())) for b in bags])
        self.postings: dict[str, tuple[list[int], list[float]]] = {}
        for i, bag in enumerate(bags):
            for word, count in bag.items():
                at, counts = self.postings.setdefault(word, ([], []))
                at.append(i)
                counts.append(float(count))
        n = len(rows)
        idf = {
            w: math.log(n - len(at) + 0.5) - math.log(len(at) + 0.5)
            for w, (at, _) in self.postings.items()
        }
        floor = EPSILON * sum(idf.values()) / max(len(idf), 1)
        self.idf = {w: v if v >= 0 else floor for w, v in idf.items()}

    def bm25(self, query: str) -> npt.NDArray[np.float64]:
        scores = np.zeros(len(self.rows))
        average = float(self.lengths.mean()) if len(self.rows) else 1.0
        for word in WORD.findall(query.lower()):
            if word not in self.postings:
                continue
            at, counts = self.postings[word]
            tf = np.asarray(counts)
            norm = K1 * (1 - B + B * self.lengths[at] / average)
            scores[at] += self.idf[word] * tf * (K1 + 1) / (tf + norm)
        return scores

    def order(self, query: str, query_vector: npt.NDArray[np.float64]) -> list[int]:
        """Rows of the turns by reciprocal-rank fusion of the two rankings."""
        fused: dict[int, float] = {}
        dense = self.vectors @ query_vector
        for ranking in (
            np.argsort(-dense, kind="stable"),
            np.argsort(-self.bm25(query), kind="stable"),
        ):
            for rank, i in enumerate(ranking[:TOP].tolist()):
                fused[i] = fused.get(i, 0.0) + 1.0 / (RRF_K + rank + 1)
        return [int(self.rows[i]) for i in sorted(fused, key=lambda i: -fused[i])]

    def packed(self, query: str, query_vector: npt.NDArray[np.float64], budget: int) -> set[int]:
        """Rows packed in rank order until the next turn would overflow ``budget``."""
        cost = dict(zip(self.rows.tolist(), self.tokens, strict=True))
        packed: set[int] = set()
        used = 0
        for row in self.order(query, query_vector):
            used += cost[row]
            if used > budget:
                break
            packed.add(row)
        return packed
