"""Benchmark of enrichment: embedding and token-count throughput, entity extraction time.

Run from the repository root::

    .venv/bin/python bench/enrichment.py [--turns N] [--rounds R] [--threads T] [--data PATH]

On the first ``--turns`` LoCoMo turns (default 1,000) it times ``Embedder.embed`` against raw
``SentenceTransformer.encode`` of the same texts, interleaved in the same run; one-text
latency; ``embed_async``; ``count_tokens`` against the transformers tokenizer call; and
``extract_entities`` on every turn. Writes ``enrichment.json`` to ``--out`` (default
``bench/reports``) and prints a summary. A measurement, not a test: figures depend on the
machine and on what else runs there, so compare ratios taken in one run.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import statistics
import sys
import time
from collections.abc import Callable
from datetime import UTC, datetime
from functools import partial
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # run as a script from anywhere

from projectors.enrichment.embedder import Embedder  # noqa: E402
from projectors.enrichment.entities import extract_entities  # noqa: E402

DEFAULT_DATA = ROOT.parent / "shared/data/locomo-dev.json"


def load_turns(path: Path) -> list[str]:
    """Every turn's ``text`` of a LoCoMo file, in conversation and session order."""
    samples = json.loads(path.read_text())
    turns: list[str] = []
    for sample in samples:
        conversation = sample["conversation"]
        sessions = sorted(
            (
                k
                for k, v in conversation.items()
                if k.startswith("session_") and isinstance(v, list)
            ),
            key=lambda k: int(k.removeprefix("session_")),
        )
        turns += [turn["text"] for key in sessions for turn in conversation[key]]
    return turns


def rate(op: Callable[[], object], count: int) -> float:
    start = time.perf_counter()
    op()
    return count / (time.perf_counter() - start)


def rounds_summary(rates: list[float]) -> dict[str, Any]:
    return {"rounds": [round(r, 1) for r in rates], "median": round(statistics.median(rates), 1)}


def bench_embedding(embedder: Embedder, texts: list[str], rounds: int) -> dict[str, Any]:
    model = embedder._model  # raw sentence-transformers, the baseline
    batch = embedder.batch_size

    def raw(part: list[str]) -> object:
        return model.encode(
            part, batch_size=batch, normalize_embeddings=True, show_progress_bar=False
        )

    embedder.embed(texts[:batch])  # warm-up
    # Interleaved in slices of 200 texts, alternating which goes first, so that both see
    # the same share of whatever else the machine runs; each round sums its slices.
    slices = [texts[i : i + 200] for i in range(0, len(texts), 200)]
    ours_rates: list[float] = []
    raw_rates: list[float] = []
    for round_ in range(rounds):
        spent = {"ours": 0.0, "raw": 0.0}
        for j, part in enumerate(slices):
            ops: list[tuple[str, Callable[[], object]]] = [
                ("ours", partial(embedder.embed, part)),
                ("raw", partial(raw, part)),
            ]
            for name, op in ops if (round_ + j) % 2 == 0 else ops[::-1]:
                start = time.perf_counter()
                op()
                spent[name] += time.perf_counter() - start
        ours_rates.append(len(texts) / spent["ours"])
        raw_rates.append(len(texts) / spent["raw"])
    ratios = [o / r for o, r in zip(ours_rates, raw_rates, strict=True)]
    single = []
    for text in texts[:100]:
        start = time.perf_counter()
        embedder.embed([text])
        single.append((time.perf_counter() - start) * 1000)
    async_rate = rate(lambda: asyncio.run(embedder.embed_async(texts)), len(texts))
    return {
        "texts": len(texts),
        "batch_size": batch,
        "embed_texts_per_s": rounds_summary(ours_rates),
        "raw_encode_texts_per_s": rounds_summary(raw_rates),
        "ratio_embed_over_raw": round(statistics.median(ratios), 3),
        "embed_async_texts_per_s": round(async_rate, 1),
        "one_text_ms": {
            "p50": round(statistics.median(single), 2),
            "p90": round(statistics.quantiles(single, n=10)[-1], 2),
        },
    }


def bench_tokens(embedder: Embedder, texts: list[str], rounds: int) -> dict[str, Any]:
    tokenizer = embedder._model.tokenizer
    ours = [rate(lambda: embedder.count_tokens(texts), len(texts)) for _ in range(rounds)]
    raw = [
        rate(lambda: tokenizer(texts, add_special_tokens=False), len(texts)) for _ in range(rounds)
    ]
    counts = embedder.count_tokens(texts)
    return {
        "texts": len(texts),
        "count_tokens_texts_per_s": rounds_summary(ours),
        "transformers_tokenizer_texts_per_s": rounds_summary(raw),
        "mean_tokens_per_text": round(statistics.fmean(counts), 1),
        "max_tokens": max(counts),
    }


def bench_entities(texts: list[str], rounds: int) -> dict[str, Any]:
    per_turn_us = []
    for _ in range(rounds * 3):
        start = time.perf_counter()
        for text in texts:
            extract_entities(text)
        per_turn_us.append((time.perf_counter() - start) / len(texts) * 1e6)
    entities = [extract_entities(t) for t in texts]
    big = " ".join(texts)
    big = big[: 256 * 1024]
    start = time.perf_counter()
    extract_entities(big)
    big_ms = (time.perf_counter() - start) * 1000
    return {
        "texts": len(texts),
        "mean_words_per_text": round(statistics.fmean(len(t.split()) for t in texts), 1),
        "us_per_text": {
            "median": round(statistics.median(per_turn_us), 1),
            "best": round(min(per_turn_us), 1),
        },
        "texts_with_entities": round(sum(bool(e) for e in entities) / len(texts), 3),
        "mean_entities_per_text": round(statistics.fmean(len(e) for e in entities), 2),
        "distinct_entities": len({x.casefold() for e in entities for x in e}),
        "one_256_kib_text_ms": round(big_ms, 1),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--turns", type=int, default=1000, help="turns to embed")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--threads", type=int, default=None, help="torch threads")
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA)
    parser.add_argument("--out", type=Path, default=ROOT / "bench/reports")
    args = parser.parse_args()
    turns = load_turns(args.data)
    texts = turns[: args.turns]

    start = time.perf_counter()
    import sentence_transformers
    import torch

    imports_s = time.perf_counter() - start
    start = time.perf_counter()
    embedder = Embedder.load(threads=args.threads)
    load_s = time.perf_counter() - start
    report: dict[str, Any] = {
        "environment": {
            "date": datetime.now(UTC).isoformat(timespec="seconds"),
            "python": platform.python_version(),
            "torch": torch.__version__,
            "sentence_transformers": sentence_transformers.__version__,
            "model": embedder.model_name,
            "cpus": os.cpu_count(),
            "torch_threads": torch.get_num_threads(),
            "loadavg_1m_at_start": os.getloadavg()[0],
            "source": f"LoCoMo {args.data.name} ({len(turns)} turns)",
            "import_s": round(imports_s, 2),
            "load_s": round(load_s, 2),
        },
        "embedding": bench_embedding(embedder, texts, args.rounds),
        "tokens": bench_tokens(embedder, turns, args.rounds),
        "entities": bench_entities(turns, args.rounds),
    }
    embedder.close()
    report["environment"]["loadavg_1m_at_end"] = os.getloadavg()[0]
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "enrichment.json").write_text(json.dumps(report, indent=2) + "\n")
    env, emb, tok, ent = (report[k] for k in ("environment", "embedding", "tokens", "entities"))
    print(
        f"{env['date']} · {env['cpus']} CPUs, {env['torch_threads']} torch threads"
        f" · load {env['load_s']} s (imports {env['import_s']} s)\n"
        f"embed {emb['texts']} turns: {emb['embed_texts_per_s']['median']:,.0f} texts/s,"
        f" raw encode {emb['raw_encode_texts_per_s']['median']:,.0f} texts/s"
        f" (ratio {emb['ratio_embed_over_raw']}); one text p50 {emb['one_text_ms']['p50']} ms;"
        f" embed_async {emb['embed_async_texts_per_s']:,.0f} texts/s\n"
        f"count_tokens {tok['texts']} turns: {tok['count_tokens_texts_per_s']['median']:,.0f}"
        f" texts/s (transformers call {tok['transformers_tokenizer_texts_per_s']['median']:,.0f})\n"
        f"extract_entities {ent['texts']} turns: {ent['us_per_text']['median']} µs/turn median,"
        f" {ent['us_per_text']['best']} best; 256 KiB text {ent['one_256_kib_text_ms']} ms\n"
        f"report: {args.out / 'enrichment.json'}"
    )


if __name__ == "__main__":
    main()
