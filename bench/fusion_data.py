"""The inputs of ``bench/fusion_cv.py``: a LoCoMo-format file's turns and questions, with
what the pipeline derives from them, cached under :data:`CACHE`.

- turn vectors of each message's content (what the enricher embeds) and of each rendered
  turn (BASELINES.md's dense channel), and a vector of every query text (``Embedder``);
- each turn's english lexemes as Postgres stores them (``tsv``, read from an embedded
  Postgres holding the file), and each question's terms as
  ``PostgresProjectionStore.analyse`` takes them;
- token counts of ``render(message)`` (``TokenCounter``).
"""

from __future__ import annotations

import asyncio
import hashlib
import json
from collections import Counter
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np
import numpy.typing as npt
from baseline import WORD, Turns
from pipeline import read_messages

from projectors.enrichment.embedder import Embedder
from rehydrator.context import render
from rehydrator.fusion import without_names
from rehydrator.tokens import TokenCounter
from schemas.events import Message

F64 = npt.NDArray[np.float64]
I64 = npt.NDArray[np.int64]

CACHE = Path("/var/tmp/amem-fusion-cache")
PGDATA = Path("/var/tmp/amem-fusion-pg")
BUDGETS = (1000, 2000, 4000, 8000)
LAYOUTS = ("conversation", "long", "sessions")
TENANT = "bench-fusion"
ADVERSARIAL = 5


@dataclass(frozen=True, slots=True)
class Question:
    sample: str
    text: str
    evidence: tuple[int, ...]
    """Global turn index per evidence id of the question's conversation (-1: no such turn)."""


@dataclass(slots=True)
class Corpus:
    messages: list[Message]
    """Every turn of the file, conversation after conversation, in log order."""
    questions: list[Question]
    content: F64  # unit vectors of each message's content (what the enricher embeds)
    rendered: Turns  # each rendered turn: unit vector, words (BASELINES.md), tokens
    queries: dict[str, F64]  # unit vector of each query text
    lexemes: list[dict[str, int]]  # per turn: english lexeme → positions (tf)
    terms: list[list[str]]  # per question: distinct lexemes of its words
    name_lexemes: dict[str, list[str]]  # per speaker name: its lexemes
    counter: TokenCounter

    @property
    def samples(self) -> list[str]:
        return list(dict.fromkeys(m.session_id for m in self.messages))


def read_corpus(path: Path) -> Corpus:
    raw = path.read_bytes()
    messages = read_messages(path, TENANT)
    index = {(m.session_id, m.id): i for i, m in enumerate(messages)}
    questions = []
    for sample in json.loads(raw):
        for qa in sample.get("qa", []):
            evidence = [str(e) for e in qa.get("evidence") or []]
            if qa.get("category") != ADVERSARIAL and evidence:
                sid = str(sample["sample_id"])
                ev = tuple(index.get((sid, e), -1) for e in evidence)
                questions.append(Question(sid, str(qa["question"]), ev))
    folder = CACHE / hashlib.sha256(raw).hexdigest()[:16]
    folder.mkdir(parents=True, exist_ok=True)
    texts = [render(m) for m in messages]
    counter = TokenCounter.load()
    vectors = _embeddings(folder, messages, texts)
    every = sorted({m.name for m in messages if m.name})
    pairs = {
        s: sorted({m.name for m in messages if m.name and m.session_id == s})
        for s in dict.fromkeys(m.session_id for m in messages)
    }
    queries = [q.text for q in questions]
    queries += [without_names(q.text, pairs[q.sample]) for q in questions]
    queries += [without_names(q.text, every) for q in questions]
    queries_vectors = _query_vectors(folder, queries)
    lexemes, terms, name_lexemes = _lexemes(folder, messages, [q.text for q in questions])
    return Corpus(
        messages=messages,
        questions=questions,
        content=vectors["content"],
        rendered=Turns(
            vectors=vectors["rendered"],
            words=[Counter(WORD.findall(t.lower())) for t in texts],
            tokens=counter.count(texts),
        ),
        queries=queries_vectors,
        lexemes=lexemes,
        terms=terms,
        name_lexemes=name_lexemes,
        counter=counter,
    )


def _embeddings(folder: Path, messages: list[Message], texts: list[str]) -> dict[str, F64]:
    file = folder / "turns.npz"
    if not file.is_file():
        embedder = _embedder()
        content = embedder.embed([m.content for m in messages])
        np.savez(file, content=np.array(content), rendered=np.array(embedder.embed(texts)))
    with np.load(file) as stored:
        return {k: np.asarray(stored[k], dtype=np.float64) for k in ("content", "rendered")}


def _query_vectors(folder: Path, queries: list[str]) -> dict[str, F64]:
    """Unit vectors of every query text (the questions, with and without speaker names)."""
    file, names = folder / "queries.npy", folder / "queries.json"
    known: list[str] = json.loads(names.read_text()) if names.is_file() else []
    if not set(queries) <= set(known):
        known = sorted(set(queries) | set(known))
        np.save(file, np.array(_embedder().embed(known)))
        names.write_text(json.dumps(known))
    vectors = np.asarray(np.load(file), dtype=np.float64)
    return dict(zip(known, vectors, strict=True))


_EMBEDDER: list[Embedder] = []


def _embedder() -> Embedder:
    if not _EMBEDDER:
        _EMBEDDER.append(Embedder.load())
    return _EMBEDDER[0]


def _lexemes(
    folder: Path, messages: list[Message], questions: list[str]
) -> tuple[list[dict[str, int]], list[list[str]], dict[str, list[str]]]:
    file = folder / "lexemes.json"
    if not file.is_file():
        file.write_text(json.dumps(asyncio.run(postgres_lexemes(messages, questions))))
    stored = json.loads(file.read_text())
    return (
        [dict(d) for d in stored["turns"]],
        [list(t) for t in stored["terms"]],
        {k: list(v) for k, v in stored["names"].items()},
    )


async def postgres_lexemes(messages: list[Message], questions: list[str]) -> dict[str, Any]:
    """The english lexemes Postgres stores for each turn (``tsv``), each question's terms
    (``PostgresProjectionStore.analyse``: the distinct lexemes of its words, as ``lexical``
    takes them) and each speaker name's lexemes."""
    from projectors.stores.postgres import PostgresProjectionStore

    async with database(messages) as pool:
        found = await pool.fetch(
            """SELECT message_id, u.lexeme, coalesce(array_length(u.positions, 1), 1)
            FROM amem_messages m, unnest(m.tsv) u WHERE tenant_id = $1 AND session_id = $2""",
            TENANT,
            "long",
        )
        turns: dict[str, dict[str, int]] = {f"{m.session_id}:{m.id}": {} for m in messages}
        for message_id, lexeme, tf in found:
            turns[message_id][lexeme] = tf
        analyse: Any = PostgresProjectionStore.analyse
        store = SimpleNamespace(_pool=pool)
        terms = [sorted(await analyse(store, q)) for q in questions]
        names = {}
        for name in sorted({m.name for m in messages if m.name}):
            got = await pool.fetch(
                "SELECT DISTINCT lexeme FROM unnest(to_tsvector('english', $1))", name
            )
            names[name] = sorted(r[0] for r in got)
    return {
        "turns": [turns[f"{m.session_id}:{m.id}"] for m in messages],
        "terms": terms,
        "names": names,
    }


@asynccontextmanager
async def database(messages: Sequence[Message]) -> AsyncIterator[Any]:
    """A pool on an embedded Postgres whose ``amem_messages`` holds the file twice: each
    conversation its own session, and all of them in one session ``long``."""
    import asyncpg
    from pgserver.postgres_server import get_server

    from projectors.stores.postgres import SCHEMA

    server = get_server(str(PGDATA), cleanup_mode="stop")
    pool = await asyncpg.create_pool(server.get_uri(), min_size=1, max_size=2)
    try:
        await pool.execute(SCHEMA)
        await pool.execute("DELETE FROM amem_messages WHERE tenant_id = $1", TENANT)
        rows = [
            (
                TENANT,
                session,
                message_id,
                0,
                n,
                0,
                m.role,
                m.name,
                m.content,
                m.created_at,
                json.dumps(dict(m.metadata)),
            )
            for n, m in enumerate(messages)
            for session, message_id in ((m.session_id, m.id), ("long", f"{m.session_id}:{m.id}"))
        ]
        await pool.executemany(
            """INSERT INTO amem_messages (tenant_id, session_id, message_id, partition, pos_ms,
            pos_seq, role, name, content, created_at, metadata)
            VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11::jsonb)""",
            rows,
        )
        yield pool
    finally:
        await pool.close()
