"""Blocking wall time and peak memory against corpus size, one partition against partitioned.

Corpora of N questions are made from the unique questions of the shared LCQMC
and BQ files: the first copy of each question as it is, later copies with 1-3
random character edits (substitution, deletion or insertion of a character
drawn from the corpus), seeded by the question's index, so every N is the same
corpus on every run. Each (N, mode) runs in its own process, on the in-process
Beam runner: lexical embedding then BlockCandidates. Blocking seconds = that
pipeline's wall time minus the same pipeline with embedding only; peak memory
is the process's maximum resident set.

    python -m benchmarks.bench_blocking [--sizes 25000,50000,100000,200000] [--modes single,partitioned]

`--margins 10,0 --repeat 5`: instead, blocking with each margin (neighbours faiss proposes beyond k
before they are re-ranked by exact similarity) at the first size, partitioned, interleaved A B B A ...,
median and min-max of wall and kNN seconds.
"""
from __future__ import annotations

import argparse
import csv
import json
import os
import random
import resource
import statistics
import subprocess
import sys
import time

import apache_beam as beam
import numpy as np
from apache_beam.options.pipeline_options import PipelineOptions

from transforms.block import BlockCandidates, BlockingSettings, partition_count
from transforms.embed import EMBED_BATCH, fit_idf, tfidf_rows
from transforms.metrics import STAGE_NAMESPACE
from transforms.normalize import normalize_text, text_key
from transforms.records import Representative

SHARED = os.path.join(os.path.dirname(__file__), "..", "..", "shared", "data")
DIM = 1024


def base_questions() -> list[str]:
    texts = set()
    with open(os.path.join(SHARED, "lcqmc", "dev.tsv"), encoding="utf-8") as handle:
        for line in handle:
            a, b, _ = line.rstrip("\n").split("\t")
            texts.update((a, b))
    with open(os.path.join(SHARED, "bq", "dev.csv"), encoding="utf-8-sig", newline="") as handle:
        for row in csv.DictReader(handle):
            texts.update((row["sentence1"], row["sentence2"]))
    return sorted(texts)


def question(i: int, base: list[str], alphabet: str) -> str:
    text = base[i % len(base)]
    if i < len(base):
        return text
    rng = random.Random(i)
    chars = list(text)
    for _ in range(rng.randint(1, 3)):
        where = rng.randrange(len(chars) + 1)
        action = rng.random()
        if action < 0.4 and where < len(chars):
            chars[where] = rng.choice(alphabet)
        elif action < 0.7 and where < len(chars) and len(chars) > 2:
            del chars[where]
        else:
            chars.insert(where, rng.choice(alphabet))
    return "".join(chars)


def _embedded(start: int, n: int, base: list[str], alphabet: str, idf: np.ndarray):
    """Questions start to start + `EMBED_BATCH` (below n), embedded together as the pipeline embeds them."""
    texts = [question(i, base, alphabet) for i in range(start, min(start + EMBED_BATCH, n))]
    normalized = [normalize_text(text) or text for text in texts]
    return [(Representative(i, text, norm, text_key(norm), 1), vector)
            for i, text, norm, vector in zip(range(start, n), texts, normalized, tfidf_rows(normalized, idf))]


def run_one(n: int, mode: str, block: bool, margin: int = BlockingSettings.margin) -> dict:
    base = base_questions()
    alphabet = "".join(sorted({ch for text in base for ch in text}))
    idf = fit_idf((normalize_text(question(i, base, alphabet)) for i in range(n)), DIM)  # streamed, not listed
    settings = BlockingSettings(partitions=1, margin=margin) if mode == "single" else BlockingSettings(margin=margin)
    start = time.perf_counter()
    pipeline = beam.Pipeline(options=PipelineOptions(["--runner=FnApiRunner"]))
    embedded = pipeline | beam.Create(range(0, n, EMBED_BATCH), reshuffle=False) | beam.FlatMap(
        _embedded, n, base, alphabet, idf)
    out = (embedded | BlockCandidates(settings)).pairs if block else embedded
    _ = out | beam.combiners.Count.Globally()
    result = pipeline.run()
    result.wait_until_finish()
    seconds = time.perf_counter() - start
    metrics = result.metrics().query()
    knn_us = sum(c.committed for c in metrics["counters"]
                 if c.key.metric.namespace == STAGE_NAMESPACE and c.key.metric.name == "block")
    largest = max((d.committed.max for d in metrics["distributions"]
                   if d.key.metric.name == "blocking_work_item"), default=0)
    return {"n": n, "mode": mode, "block": block, "seconds": seconds, "knn_seconds": knn_us / 1e6,
            "largest_work_item": largest, "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
            "partitions": partition_count(n, settings)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", default="25000,50000,100000,200000")
    parser.add_argument("--modes", default="single,partitioned")
    parser.add_argument("--margins", help="compare these margins, interleaved (e.g. 10,0)")
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--one", help=argparse.SUPPRESS)  # n,mode,block,margin: one measurement in this process
    args = parser.parse_args()
    if args.one:
        n, mode, block, margin = args.one.split(",")
        print(json.dumps(run_one(int(n), mode, block == "1", int(margin))))
        return

    def measure(n, mode, block, margin=BlockingSettings.margin):
        done = subprocess.run([sys.executable, "-m", "benchmarks.bench_blocking", "--one",
                               f"{n},{mode},{int(block)},{margin}"], capture_output=True, text=True, check=True)
        return json.loads(done.stdout.strip().splitlines()[-1])

    if args.margins:
        n = int(args.sizes.split(",")[0])
        a, b = (int(m) for m in args.margins.split(","))
        order = [m for i in range(args.repeat) for m in ((a, b) if i % 2 == 0 else (b, a))]
        found: dict = {a: [], b: []}
        for margin in order:
            found[margin].append(measure(n, "partitioned", True, margin))
        print(f"{n:,} questions, partitioned, order {' '.join(map(str, order))}")
        print("| margin | wall seconds, median (min-max) | kNN seconds, median (min-max) |\n| --- | --- | --- |")
        for margin, runs in found.items():
            wall, knn = [r["seconds"] for r in runs], [r["knn_seconds"] for r in runs]
            print(f"| {margin} | {statistics.median(wall):.1f} ({min(wall):.1f}-{max(wall):.1f}) "
                  f"| {statistics.median(knn):.1f} ({min(knn):.1f}-{max(knn):.1f}) |")
        return

    print("| N | mode | partitions | blocking seconds | x previous N | kNN seconds "
          "| largest work item (MiB of vectors) | peak RSS MiB (embed only) |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- |")
    for mode in args.modes.split(","):
        previous = None
        for n in map(int, args.sizes.split(",")):
            baseline = measure(n, mode, False)
            full = measure(n, mode, True)
            seconds = full["seconds"] - baseline["seconds"]
            growth = f"{seconds / previous:.2f}" if previous else "-"
            previous = seconds
            item = full["largest_work_item"]
            print(f"| {n:,} | {mode} | {full['partitions']} | {seconds:.1f} | {growth} | {full['knn_seconds']:.1f} "
                  f"| {item:,} ({item * DIM * 4 / 2**20:.0f}) | {full['peak_rss_mib']:.0f} "
                  f"({baseline['peak_rss_mib']:.0f}) |", flush=True)


if __name__ == "__main__":
    main()
