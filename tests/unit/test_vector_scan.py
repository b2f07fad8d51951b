"""The int8 first pass never changes the answer: the top K is the float32 top K."""

from __future__ import annotations

import numpy as np
import pytest

from rehydrator.vector_scan import Int8Segment, top


def unit_rows(n: int, seed: int, clusters: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    rows = rng.standard_normal((n, 384)).astype(np.float32)
    if clusters:  # near-duplicates, where quantisation errors would reorder neighbours
        centres = rng.standard_normal((clusters, 384)).astype(np.float32)
        rows = centres[rng.integers(0, clusters, n)] + 0.01 * rows
    rows /= np.linalg.norm(rows, axis=1, keepdims=True)
    return rows


def exact(matrix: np.ndarray, alive: np.ndarray, query: np.ndarray, k: int) -> list[int]:
    scores = matrix @ query
    rows = np.flatnonzero(alive)
    best: list[int] = rows[np.lexsort((rows, -scores[rows]))][:k].tolist()
    return best


@pytest.mark.parametrize("clusters", [0, 40], ids=["spread", "near-duplicates"])
def test_the_segment_gives_the_float32_top_k(clusters: int) -> None:
    matrix = unit_rows(6000, 1, clusters)
    alive = np.ones(len(matrix), dtype=bool)
    alive[::7] = False  # erased rows never come back
    segment = Int8Segment(matrix[:5000])  # the rest is past the segment
    rng = np.random.default_rng(2)
    for _ in range(20):
        query = matrix[rng.integers(0, len(matrix))] + 0.05 * unit_rows(1, int(rng.integers(99)))[0]
        query = (query / np.linalg.norm(query)).astype(np.float32)
        rows, scores = top(matrix, len(matrix), alive, query, 200, segment)
        assert rows.tolist() == exact(matrix, alive, query, 200)
        assert np.allclose(scores, (matrix @ query)[rows])
    unsegmented, _ = top(matrix, len(matrix), alive, query, 200, None)
    assert unsegmented.tolist() == exact(matrix, alive, query, 200)


def test_fewer_live_rows_than_asked_gives_them_all() -> None:
    matrix = unit_rows(5000, 3)
    alive = np.zeros(len(matrix), dtype=bool)
    alive[[10, 20, 30]] = True
    rows, _ = top(matrix, len(matrix), alive, matrix[20], 200, Int8Segment(matrix))
    assert sorted(rows.tolist()) == [10, 20, 30]
    assert rows[0] == 20
