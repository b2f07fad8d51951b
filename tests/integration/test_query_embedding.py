"""The ONNX query embedder against sentence-transformers, and its cached export, offline."""

from __future__ import annotations

import asyncio
import json
import logging
import math
import shutil
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch

from projectors.enrichment.embedder import MODEL_NAME, Embedder
from rehydrator.query_embedding import (
    EXPORT_FORMAT,
    MAX_SEQ_LENGTH,
    ONNX_FILENAME,
    QueryEmbedder,
)

LOGGER = "rehydrator.query_embedding.QueryEmbedder"
SIDECAR = ONNX_FILENAME + ".json"

LONG_TEXT = " ".join(f"Caroline mentioned topic{i % 37} during session {i}." for i in range(120))

TEXTS = [
    "",
    "?",
    "hi",
    "When did Caroline go to the LGBTQ support group?",
    "What did Melanie paint recently?",
    "How many children does Melanie have, and what are their names?",
    "Where did Caroline move from 4 years ago?",
    "What is Jon's plan for his dance studio after losing his banking job in January 2023?",
    "Would Caroline likely pursue writing as a career option? Why or why not?",
    "Ünïcödé café naïve façade — Zoë's résumé 🙂",
    "東京で一番おいしいラーメン屋はどこですか？",  # noqa: RUF001  (full-width "?" on purpose)
    "Как прошла встреча в группе поддержки?",
    "   leading and trailing whitespace   ",
    "line one\nline two\ttabbed",
    "URL https://example.com/a?b=c&d=e and e-mail jo@example.org",
    "Numbers: 3.14159, 2,718, 1e-9, #42, $1,000,000 on 2023-05-07T14:30:00Z",
    "ALL CAPS SHOUTING ABOUT THE PUPPY WE ADOPTED",
    "antidisestablishmentarianism pneumonoultramicroscopicsilicovolcanoconiosis",
    "Hmm... I'm not sure — maybe next week?!",
    LONG_TEXT,
]


@pytest.fixture(scope="module")
def reference() -> Iterator[Embedder]:
    threads = torch.get_num_threads()
    loaded = Embedder.load(threads=1)
    yield loaded
    loaded.close()
    torch.set_num_threads(threads)  # Embedder.load set it for the whole process


@pytest.fixture(scope="module")
def cache_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("query-embedding-cache")


@pytest.fixture(scope="module")
def query_embedder(cache_dir: Path, reference: Embedder) -> Iterator[QueryEmbedder]:
    # After ``reference``: torch is imported and single-threaded when the export runs.
    loaded = QueryEmbedder.load(cache_dir, threads=1)
    yield loaded
    loaded.close()


def _dot(a: list[float], b: list[float]) -> float:
    return sum(x * y for x, y in zip(a, b, strict=True))


def _exports(caplog: pytest.LogCaptureFixture) -> list[logging.LogRecord]:
    return [r for r in caplog.records if r.name == LOGGER and "exported" in r.getMessage()]


def test_identity(query_embedder: QueryEmbedder) -> None:
    assert query_embedder.model_name == MODEL_NAME == "all-MiniLM-L6-v2"
    assert query_embedder.dimension == 384
    assert query_embedder.max_seq_length == MAX_SEQ_LENGTH == 256


def test_vectors_equal_sentence_transformers(
    query_embedder: QueryEmbedder, reference: Embedder
) -> None:
    # The long text really is truncated, so the 256-word-piece limit is being compared.
    assert reference.count_tokens([LONG_TEXT], special_tokens=True)[0] > 2 * MAX_SEQ_LENGTH
    expected = reference.embed(TEXTS)
    for text, want in zip(TEXTS, expected, strict=True):
        got = query_embedder.embed(text)
        assert len(got) == 384
        assert all(isinstance(x, float) and math.isfinite(x) for x in got)
        assert math.isclose(_dot(got, got), 1.0, abs_tol=1e-5), text
        assert _dot(got, want) >= 0.9999, text


def test_only_the_first_256_word_pieces_count(query_embedder: QueryEmbedder) -> None:
    first = query_embedder.embed(LONG_TEXT + " The end.")
    second = query_embedder.embed(LONG_TEXT + " Something else entirely, about tax reports.")
    assert first == second


def test_embed_array_is_float32_and_equals_embed(query_embedder: QueryEmbedder) -> None:
    text = "When did Caroline go to the LGBTQ support group?"
    array = query_embedder.embed_array(text)
    assert array.shape == (384,)
    assert array.dtype.name == "float32"
    assert array.tolist() == query_embedder.embed(text)


async def test_embed_async_equals_embed(query_embedder: QueryEmbedder) -> None:
    texts = [f"{text} ({i})" for i, text in enumerate(TEXTS[3:9])]
    results = await asyncio.gather(*(query_embedder.embed_async(t) for t in texts))
    assert results == [query_embedder.embed(t) for t in texts]


def test_a_non_string_is_refused(query_embedder: QueryEmbedder) -> None:
    with pytest.raises(TypeError, match="must be a string"):
        query_embedder.embed(["a list"])  # type: ignore[arg-type]


def test_threads_must_be_positive(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="at least 1"):
        QueryEmbedder.load(tmp_path, threads=0)
    assert not (tmp_path / ONNX_FILENAME).exists()


def test_missing_onnxruntime_is_named(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "onnxruntime", None)  # makes the import fail
    with pytest.raises(ImportError, match=r"'onnxruntime' package"):
        QueryEmbedder.load(tmp_path)


def test_a_second_load_reuses_the_export(
    query_embedder: QueryEmbedder, cache_dir: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger=LOGGER)
    before = (cache_dir / ONNX_FILENAME).stat()
    sidecar_before = (cache_dir / SIDECAR).read_bytes()
    text = "What did Melanie paint recently?"
    again = QueryEmbedder.load(cache_dir, threads=2)
    try:
        assert _dot(again.embed(text), query_embedder.embed(text)) >= 0.99999
    finally:
        again.close()
    after = (cache_dir / ONNX_FILENAME).stat()
    assert (after.st_ino, after.st_mtime_ns) == (before.st_ino, before.st_mtime_ns)
    assert (cache_dir / SIDECAR).read_bytes() == sidecar_before
    assert _exports(caplog) == []
    assert sorted(p.name for p in cache_dir.iterdir()) == [ONNX_FILENAME, SIDECAR]


def _copy_cache(source: Path, target: Path) -> None:
    for name in (ONNX_FILENAME, SIDECAR):
        shutil.copy2(source / name, target / name)


def _edit_sidecar(cache: Path, **changes: object) -> dict[str, object]:
    path = cache / SIDECAR
    data: dict[str, object] = json.loads(path.read_text(encoding="utf-8"))
    data.update(changes)
    path.write_text(json.dumps(data), encoding="utf-8")
    return data


@pytest.mark.parametrize(
    "stale",
    [
        pytest.param({"wheel_version": "0.0.0"}, id="other-wheel-version"),
        pytest.param({"format": EXPORT_FORMAT - 1}, id="other-export-format"),
        # Other weights also have another size or mtime: a matching stat means unchanged.
        pytest.param(
            {
                "sha256": {"config.json": "0" * 64, "model.safetensors": "0" * 64},
                "stat": {"config.json": [0, 0], "model.safetensors": [0, 0]},
            },
            id="other-weights",
        ),
    ],
)
def test_a_stale_sidecar_triggers_a_new_export(
    query_embedder: QueryEmbedder,
    cache_dir: Path,
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
    stale: dict[str, object],
) -> None:
    caplog.set_level(logging.INFO, logger=LOGGER)
    _copy_cache(cache_dir, tmp_path)
    fresh = json.loads((tmp_path / SIDECAR).read_text(encoding="utf-8"))
    _edit_sidecar(tmp_path, **stale)
    before = (tmp_path / ONNX_FILENAME).stat()
    text = "When did Caroline go to the LGBTQ support group?"
    reloaded = QueryEmbedder.load(tmp_path)
    try:
        assert _dot(reloaded.embed(text), query_embedder.embed(text)) >= 0.99999
    finally:
        reloaded.close()
    assert len(_exports(caplog)) == 1
    after = (tmp_path / ONNX_FILENAME).stat()
    assert after.st_ino != before.st_ino  # renamed into place, not rewritten
    rewritten = json.loads((tmp_path / SIDECAR).read_text(encoding="utf-8"))
    assert {k: v for k, v in rewritten.items() if k != "stat"} == {
        k: v for k, v in fresh.items() if k != "stat"
    }
    assert sorted(p.name for p in tmp_path.iterdir()) == [ONNX_FILENAME, SIDECAR]


def test_a_missing_or_unreadable_sidecar_triggers_a_new_export(
    cache_dir: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger=LOGGER)
    _copy_cache(cache_dir, tmp_path)
    (tmp_path / SIDECAR).write_text("{not json", encoding="utf-8")
    QueryEmbedder.load(tmp_path).close()
    assert len(_exports(caplog)) == 1
    assert json.loads((tmp_path / SIDECAR).read_text(encoding="utf-8"))["format"] == EXPORT_FORMAT


def test_new_mtimes_with_the_same_weights_do_not_export(
    cache_dir: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """A reinstalled wheel has new mtimes: the weights are hashed again, not re-exported."""
    caplog.set_level(logging.INFO, logger=LOGGER)
    _copy_cache(cache_dir, tmp_path)
    fresh = json.loads((tmp_path / SIDECAR).read_text(encoding="utf-8"))
    _edit_sidecar(tmp_path, stat={"config.json": [0, 0], "model.safetensors": [0, 0]})
    before = (tmp_path / ONNX_FILENAME).stat()
    QueryEmbedder.load(tmp_path).close()
    assert _exports(caplog) == []
    assert (tmp_path / ONNX_FILENAME).stat().st_ino == before.st_ino
    # The sidecar records the real mtimes again, so the next load skips hashing.
    assert json.loads((tmp_path / SIDECAR).read_text(encoding="utf-8")) == fresh
