"""The embedding step's CPU a question: its n-grams hashed one by one, as the code did before, or a batch of
questions at a time (`transforms/embed.py`: `ngram_crcs`, `EMBED_BATCH`).

Every distinct normalized question of the shared BQ and LCQMC dev files. Lexical: the document frequencies
(`DocumentFrequency`) and the vectors (`tfidf_rows`), as `EmbedLexical` makes them; static: the vectors of a
random table of the default shape (`static_rows`). The "before" ways are the code as it was (a crc32 call an
n-gram, a text at a time), kept here as the baseline; each run checks that both ways give the same idf and
vectors, bit for bit. Interleaved before, batched, batched, before, ..., `--repeat` runs each; CPU (process
time) a question, median (min-max).

    python -m benchmarks.bench_embed [--repeat 5] [--dim 1024] [--questions N]
"""
from __future__ import annotations

import argparse
import json
import statistics
import time
import zlib
from typing import Optional

import numpy as np

from benchmarks.bench_blocker import FILES
from pipelines.recall import read_labelled_pairs
from pipelines.train_blocker import TrainSettings
from transforms.embed import EMBED_BATCH, UNIGRAM_WEIGHT, DocumentFrequency, idf_weights, static_rows, tfidf_rows
from transforms.normalize import normalize_text
from transforms.vectors import SparseVector, unit


def _before_hashed(text: str, dim: int) -> tuple[np.ndarray, np.ndarray]:
    """`hashed_ngrams` as it was: one crc32 call an n-gram, weights summed in a dict."""
    text = text.replace(" ", "")
    summed: dict = {}
    for char in text:
        bucket = zlib.crc32(char.encode("utf-8")) % dim
        summed[bucket] = summed.get(bucket, 0.0) + UNIGRAM_WEIGHT
    for i in range(len(text) - 1):
        bucket = zlib.crc32(text[i:i + 2].encode("utf-8")) % dim
        summed[bucket] = summed.get(bucket, 0.0) + 1.0
    buckets = sorted(summed)
    return np.array(buckets, dtype=np.int64), np.array([summed[b] for b in buckets], dtype=np.float64)


def before_lexical(texts: list[str], dim: int) -> tuple[np.ndarray, list]:
    df = np.zeros(dim, dtype=np.int64)
    for text in texts:
        df[_before_hashed(text, dim)[0]] += 1
    idf = idf_weights(df, len(texts))
    vectors = []
    for text in texts:
        buckets, weights = _before_hashed(text, dim)
        values = (weights * idf[buckets]).astype(np.float32)
        norm = np.linalg.norm(values)
        vectors.append(SparseVector(buckets.astype(np.int32), values / norm if norm > 0 else values, dim))
    return idf, vectors


def batched_lexical(texts: list[str], dim: int) -> tuple[np.ndarray, list]:
    combine = DocumentFrequency(dim)
    idf = combine.extract_output(combine.add_inputs(combine.create_accumulator(), texts))
    return idf, [v for i in range(0, len(texts), EMBED_BATCH) for v in tfidf_rows(texts[i:i + EMBED_BATCH], idf)]


def before_static(texts: list[str], table: np.ndarray) -> list:
    vectors = []
    for text in texts:
        stripped = text.replace(" ", "")
        grams = list(stripped) + [stripped[i:i + 2] for i in range(len(stripped) - 1)]
        buckets = np.fromiter((zlib.crc32(g.encode("utf-8")) % len(table) for g in grams), np.int64, len(grams))
        vectors.append(unit(table[buckets].mean(axis=0)) if len(buckets) else np.zeros(table.shape[1], np.float32))
    return vectors


def batched_static(texts: list[str], table: np.ndarray) -> list:
    return [v for i in range(0, len(texts), EMBED_BATCH) for v in static_rows(texts[i:i + EMBED_BATCH], table)]


def _same(a, b) -> bool:
    if isinstance(a, SparseVector):
        return a.indices.tobytes() == b.indices.tobytes() and a.values.tobytes() == b.values.tobytes()
    return a.dtype == b.dtype and a.tobytes() == b.tobytes()


def main(argv: Optional[list[str]] = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--dim", type=int, default=1024, help="lexical dimension (--lexical-dim)")
    parser.add_argument("--questions", type=int, default=0, help="the first N questions only (0: all)")
    args = parser.parse_args(argv)
    texts = sorted({normalize_text(t) for path in FILES.values() for a, b, _ in read_labelled_pairs(path)
                    for t in (a, b) if isinstance(t, str)})
    texts = texts[:args.questions] if args.questions else texts
    settings = TrainSettings()
    table = np.random.default_rng(0).standard_normal((settings.buckets, settings.dims)).astype(np.float32)
    ways = {"lexical before": lambda: before_lexical(texts, args.dim), "lexical batched": lambda: batched_lexical(
        texts, args.dim), "static before": lambda: before_static(texts, table),
        "static batched": lambda: batched_static(texts, table)}
    made, runs = {}, {name: [] for name in ways}
    for run in range(args.repeat):
        for kind in ("lexical", "static"):
            for way in ("before", "batched") if run % 2 == 0 else ("batched", "before"):  # A B, then B A, ...
                started = time.process_time()
                made[way] = ways[f"{kind} {way}"]()
                runs[f"{kind} {way}"].append((time.process_time() - started) / len(texts) * 1e6)
            if kind == "lexical":  # both ways must agree, bit for bit
                assert made["before"][0].tobytes() == made["batched"][0].tobytes()
                assert all(map(_same, made["before"][1], made["batched"][1]))
            else:
                assert all(map(_same, made["before"], made["batched"]))
    print(json.dumps({"questions": len(texts), "dim": args.dim, "static_table": list(table.shape),
                      "batch": EMBED_BATCH, "cpu_us_per_question": {
                          name: {"median": round(statistics.median(v), 2), "min": round(min(v), 2),
                                 "max": round(max(v), 2), "runs": len(v)} for name, v in runs.items()}}, indent=1))


if __name__ == "__main__":
    main()
