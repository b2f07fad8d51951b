"""What ``bench/fusion_cv.py`` ranks over: the scopes of its three layouts, the BM25 the
full-text channel computes over a scope (checked against Postgres), and each question's
scores in its scope."""

from __future__ import annotations

import asyncio
import math
from collections import Counter, defaultdict
from collections.abc import Sequence
from dataclasses import dataclass
from types import SimpleNamespace
from typing import Any

import baseline
import numpy as np
import numpy.typing as npt
from fusion_data import F64, I64, TENANT, Corpus, database

from projectors.position import Position
from projectors.store import SessionSummary, participant
from rehydrator.fusion import named_speakers, without_names
from rehydrator.packing import header_line
from schemas.events import Message

Mask = npt.NDArray[np.bool_]


@dataclass(slots=True)
class Scope:
    """What one call ranks over: turns in log order, cut into sessions."""

    turns: I64  # global turn indices, log order
    at: dict[int, int]  # position of each global turn index
    cost: list[int]  # tokens of each rendered turn
    segment: I64  # session of each turn (the neighbour window stays within one)
    header: int  # tokens of the header line (0: none)
    recent: list[int]  # positions of the recent window, newest first
    names: list[str]  # speaker names of the scope
    speakers: list[str | None]  # speaker of each turn
    postings: dict[str, tuple[I64, F64]]  # english lexeme → (positions, tf)
    dl: F64  # distinct lexemes per turn (Postgres ``length(tsv)``)
    rrf: baseline.Scope  # BASELINES.md's method over the same turns

    @property
    def n(self) -> int:
        return len(self.turns)


def _postings(bags: Sequence[dict[str, int]]) -> dict[str, tuple[I64, F64]]:
    lists: dict[str, tuple[list[int], list[float]]] = defaultdict(lambda: ([], []))
    for pos, bag in enumerate(bags):
        for term, tf in bag.items():
            lists[term][0].append(pos)
            lists[term][1].append(float(tf))
    return {t: (np.array(p, dtype=np.int64), np.array(f)) for t, (p, f) in lists.items()}


def summary(ms: Sequence[Message]) -> SessionSummary:
    """The session these turns make, as the store sums it up (``locomo``: several)."""
    sessions = {m.session_id for m in ms}
    return SessionSummary(
        tenant_id=TENANT,
        session_id=sessions.pop() if len(sessions) == 1 else "locomo",
        message_count=len(ms),
        participants=frozenset(participant(m.role, m.name) for m in ms),
        first_at=min(m.created_at for m in ms),
        last_at=max(m.created_at for m in ms),
        last_position=Position(0, 0),  # not in the header line
    )


def make_scope(
    corpus: Corpus, turns: list[int], segment: list[int], header_too: bool, recent: int
) -> Scope:
    ms = [corpus.messages[i] for i in turns]
    line = header_line(summary(ms)) if header_too else None
    bags = [corpus.lexemes[i] for i in turns]
    n = len(turns)
    return Scope(
        turns=np.array(turns, dtype=np.int64),
        at={t: p for p, t in enumerate(turns)},
        cost=[corpus.rendered.tokens[i] for i in turns],
        segment=np.array(segment, dtype=np.int64),
        header=corpus.counter.count([line])[0] if line else 0,
        recent=list(range(n - 1, n - 1 - recent, -1)),
        names=sorted({m.name for m in ms if m.name}),
        speakers=[m.name for m in ms],
        postings=_postings(bags),
        dl=np.array([float(len(b)) for b in bags]),
        rrf=baseline.Scope(corpus.rendered, turns),
    )


Layout = tuple[list[Scope], list[int]]
"""A layout's scopes, and the scope each question is asked in."""


def layouts(corpus: Corpus) -> dict[str, Layout]:
    by_sample: dict[str, list[int]] = defaultdict(list)
    for i, m in enumerate(corpus.messages):
        by_sample[m.session_id].append(i)
    samples = corpus.samples
    asked = [samples.index(q.sample) for q in corpus.questions]
    session = [int(str(m.metadata["session"])) for m in corpus.messages]
    everything = list(range(len(corpus.messages)))
    return {
        "conversation": (
            [make_scope(corpus, by_sample[s], [0] * len(by_sample[s]), True, 4) for s in samples],
            asked,
        ),
        "long": (
            [make_scope(corpus, everything, [0] * len(everything), True, 4)],
            [0] * len(asked),
        ),
        "sessions": (
            [
                make_scope(corpus, by_sample[s], [session[i] for i in by_sample[s]], False, 0)
                for s in samples
            ],
            asked,
        ),
    }


def bm25(
    postings: dict[str, tuple[I64, F64]],
    dl: F64,
    terms: Sequence[str],
    k1: float = 1.2,
    b: float = 0.75,
) -> F64:
    """Okapi BM25 of every turn, as ``PostgresProjectionStore.lexical`` means to compute it."""
    n = len(dl)
    avgdl = max(float(dl.mean()) if n else 1.0, 1.0)
    scores = np.zeros(n)
    for term in dict.fromkeys(terms):
        if term not in postings:
            continue
        pos, tf = postings[term]
        df = len(pos)
        idf = math.log(1 + (n - df + 0.5) / (df + 0.5))
        scores[pos] += idf * tf * (k1 + 1) / (tf + k1 * (1 - b + b * dl[pos] / avgdl))
    return scores


def check_sql(corpus: Corpus, scopes: dict[str, Layout], every: int) -> dict[str, Any]:
    """BM25 here against ``PostgresProjectionStore.lexical`` itself (its SQL, on a real
    Postgres), on every ``every``-th question of the ``conversation`` and ``long`` layouts:
    how many give the same matched turns and scores, with the intended parameters (k1 1.2,
    b 0.75) and with k1 1, b 0."""

    async def run() -> dict[str, Any]:
        from projectors import store
        from projectors.stores.postgres import PostgresProjectionStore

        lexical: Any = PostgresProjectionStore.lexical
        same: Counter[str] = Counter()
        compared = 0
        async with database(corpus.messages) as pool:
            shim: Any = SimpleNamespace(_pool=pool, bm25_k1=1.2, bm25_b=0.75)
            for layout in ("conversation", "long"):
                group, asked = scopes[layout]
                for qi in range(0, len(corpus.questions), every):
                    q = corpus.questions[qi]
                    scope = group[asked[qi]]
                    where = store.Scope(session_id=q.sample if layout == "conversation" else "long")
                    hits = await lexical(shim, TENANT, q.text, limit=scope.n, scope=where)
                    theirs = {h.message_id: h.score for h in hits}
                    ids = [message_id(corpus, int(t), layout == "long") for t in scope.turns]
                    compared += 1
                    for k1, b in ((1.2, 0.75), (1.0, 0.0)):
                        ours = bm25(scope.postings, scope.dl, corpus.terms[qi], k1, b)
                        mine = {ids[p]: float(ours[p]) for p in np.flatnonzero(ours > 0)}
                        if mine.keys() == theirs.keys() and all(
                            abs(theirs[k] - v) < 1e-9 for k, v in mine.items()
                        ):
                            same[f"k1={k1:g}, b={b:g}"] += 1
        return {"queries": compared, "equal": dict(same)}

    try:
        return asyncio.run(run())
    except Exception as exc:  # a measurement: say why the check could not run
        return {"error": f"{type(exc).__name__}: {exc}"}


def message_id(corpus: Corpus, turn: int, long: bool) -> str:
    m = corpus.messages[turn]
    return f"{m.session_id}:{m.id}" if long else m.id


@dataclass(slots=True)
class Asked:
    """One question in one layout: its scope and both channels' scores over all of it."""

    scope: Scope
    query: str
    dense: dict[bool, F64]  # cosine of every turn, by "speaker names taken out of the query"
    by_dense: dict[bool, I64]  # positions, best cosine first
    lexical: dict[bool, F64]  # BM25 of every turn (0: not matched), likewise
    by_lexical: dict[bool, I64]  # matched positions, best BM25 first (ties: message id)
    evidence: list[int]  # position of each evidence id in the scope (-1: not there)
    one: Mask  # turns of the speaker the question names, if it names exactly one
    any: Mask  # turns of any speaker the question names


def prepare(corpus: Corpus, layout: Layout, k1: float, b: float, long: bool) -> list[Asked]:
    scopes, asked = layout
    out = []
    for qi, q in enumerate(corpus.questions):
        scope = scopes[asked[qi]]
        vectors = corpus.content[scope.turns]
        dense = {
            False: vectors @ corpus.queries[q.text],
            True: vectors @ corpus.queries[without_names(q.text, scope.names)],
        }
        names = {x for n in scope.names for x in corpus.name_lexemes.get(n, [])}
        lexical = {
            strip: bm25(
                scope.postings,
                scope.dl,
                [t for t in corpus.terms[qi] if not (strip and t in names)],
                k1,
                b,
            )
            for strip in (False, True)
        }
        by_lexical = {}
        for strip, values in lexical.items():
            matched = np.flatnonzero(values > 0)
            ids = [message_id(corpus, int(scope.turns[p]), long) for p in matched]
            keyed = sorted(range(len(matched)), key=lambda j: (-values[matched[j]], ids[j]))
            by_lexical[strip] = matched[keyed]
        said = named_speakers(q.text, scope.names)
        out.append(
            Asked(
                scope=scope,
                query=q.text,
                dense=dense,
                by_dense={k: np.argsort(-v, kind="stable") for k, v in dense.items()},
                lexical=lexical,
                by_lexical=by_lexical,
                evidence=[scope.at.get(e, -1) if e >= 0 else -1 for e in q.evidence],
                one=np.array([len(said) == 1 and s in said for s in scope.speakers]),
                any=np.array([s in said for s in scope.speakers]),
            )
        )
    return out
