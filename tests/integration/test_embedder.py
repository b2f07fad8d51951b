"""The real all-MiniLM-L6-v2 from its wheel, loaded once for the module, offline."""

from __future__ import annotations

import asyncio
import math
from collections.abc import Iterator

import pytest

from projectors.enrichment.embedder import MODEL_NAME, PASS_TOKENS, Embedder


@pytest.fixture(scope="module")
def embedder() -> Iterator[Embedder]:
    loaded = Embedder.load()
    yield loaded
    loaded.close()


def _dot(a: list[float], b: list[float]) -> float:
    return sum(x * y for x, y in zip(a, b, strict=True))


def test_identity(embedder: Embedder) -> None:
    assert embedder.model_name == MODEL_NAME == "all-MiniLM-L6-v2"
    assert embedder.dimension == 384
    assert embedder.max_seq_length == 256


def test_vectors_have_the_dimension_and_unit_norm(embedder: Embedder) -> None:
    vectors = embedder.embed(["Book a table for two", "", "a" * 5000, "Ünïcödé 🙂 テキスト"])
    assert len(vectors) == 4
    for vector in vectors:
        assert len(vector) == embedder.dimension
        assert all(isinstance(x, float) and math.isfinite(x) for x in vector)
        assert math.isclose(_dot(vector, vector), 1.0, abs_tol=1e-5)


def test_identical_text_gives_identical_vector(embedder: Embedder) -> None:
    text = "Caroline went to the LGBTQ support group on 7 May."
    first, second = embedder.embed([text, text])
    assert first == second
    assert embedder.embed([text]) == embedder.embed([text])
    # In another batch (other padding) the vector is the same up to float rounding.
    mixed = embedder.embed(["short", text, "a much longer sentence " * 10])[1]
    assert _dot(first, mixed) > 0.99999


def test_a_close_sentence_is_closer_than_an_unrelated_one(embedder: Embedder) -> None:
    query, close, unrelated = embedder.embed(
        [
            "I adopted a puppy last week.",
            "We got a new dog a few days ago.",
            "The quarterly tax report is due on Friday.",
        ]
    )
    assert _dot(query, close) > _dot(query, unrelated) + 0.2


def test_order_and_batching_do_not_change_results(embedder: Embedder) -> None:
    texts = [f"message number {i} about topic {i % 7}" for i in range(150)]
    small = Embedder(embedder._model, batch_size=8)  # same model, other batch size
    for a, b in zip(embedder.embed(texts), small.embed(texts), strict=True):
        assert _dot(a, b) > 0.99999
    small.close()


def test_mixed_lengths_come_back_in_order_within_pass_bounds(embedder: Embedder) -> None:
    long = " ".join(f"word{i}" for i in range(400))  # past the 256-piece window
    texts = [("short " * (i % 9)).strip() or "hi" for i in range(90)] + [long, long + " x"]
    texts.reverse()
    passes = embedder._passes(texts)
    assert sorted(i for p in passes for i in p) == list(range(len(texts)))
    lengths = [min(n, 256) for n in embedder.count_tokens(texts, special_tokens=True)]
    for p in passes:
        assert len(p) <= embedder.batch_size
        assert len(p) == 1 or len(p) * max(lengths[i] for i in p) <= PASS_TOKENS
    together = embedder.embed(texts)
    for i in (0, 1, 2, 50, len(texts) - 1):
        assert _dot(together[i], embedder.embed([texts[i]])[0]) > 0.99999


async def test_embed_async_equals_embed(embedder: Embedder) -> None:
    texts = ["hello there", "the weather is nice today", "Harry Potter and the Goblet of Fire"]
    assert await embedder.embed_async(texts) == embedder.embed(texts)
    # Concurrent calls queue on the embedder's one thread and each gets its own answer.
    batches = [[f"{t} ({i})" for t in texts] for i in range(4)]
    results = await asyncio.gather(*(embedder.embed_async(b) for b in batches))
    assert results == [embedder.embed(b) for b in batches]


async def test_empty_input_gives_empty_output(embedder: Embedder) -> None:
    assert embedder.embed([]) == []
    assert await embedder.embed_async([]) == []
    assert embedder.count_tokens([]) == []


def test_a_single_string_is_refused(embedder: Embedder) -> None:
    with pytest.raises(TypeError, match="sequence of strings"):
        embedder.embed("not a list")
    with pytest.raises(TypeError, match="sequence of strings"):
        embedder.count_tokens("not a list")


def test_count_tokens_counts_long_texts_whole(embedder: Embedder) -> None:
    long_text = " ".join(f"word{i % 50}" for i in range(1000))  # several pieces per word
    (count,) = embedder.count_tokens([long_text])
    assert count > 512
    assert count > embedder.max_seq_length
    tokenizer = embedder._model.tokenizer
    assert count == len(tokenizer(long_text, add_special_tokens=False).input_ids)


def test_count_tokens_without_and_with_special_tokens(embedder: Embedder) -> None:
    texts = ["hello world", "", "Unbelievably, antidisestablishmentarianism!"]
    counts = embedder.count_tokens(texts)
    assert counts[:2] == [2, 0]
    assert counts[2] > 3
    assert embedder.count_tokens(texts, special_tokens=True) == [c + 2 for c in counts]
