"""Recall of lexical blocking on labelled pairs: the share of positive pairs that become candidates.

Builds the corpus of unique questions of a labelled file, embeds and searches it
with the same functions the pipeline uses (one partition), and prints, per
dimension and k, recall of positive pairs and candidate pairs per question.

    python benchmarks/bench_lexical_recall.py [--pairs ../shared/data/lcqmc/dev.tsv]
"""
from __future__ import annotations

import argparse
import os
import time

from pipelines.recall import read_labelled_pairs
from pipelines.train_blocker import lexical_vectors
from transforms.block import knn_pairs
from transforms.normalize import normalize_text

DEFAULT_PAIRS = os.path.normpath(
    os.path.join(os.path.dirname(__file__), "..", "..", "shared", "data", "lcqmc", "dev.tsv"))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--pairs", default=DEFAULT_PAIRS)
    parser.add_argument("--dims", default="256,512,1024")
    parser.add_argument("--ks", default="5,10")
    parser.add_argument("--min-similarity", type=float, default=0.3)
    args = parser.parse_args()

    pairs = read_labelled_pairs(args.pairs)
    questions = sorted({normalize_text(t) for a, b, _ in pairs for t in (a, b)})
    index = {q: i for i, q in enumerate(questions)}
    positives = [(normalize_text(a), normalize_text(b)) for a, b, label in pairs if label == 1]
    print(f"{args.pairs}: {len(pairs)} pairs, {len(questions)} unique questions, {len(positives)} positives, "
          f"min similarity {args.min_similarity}")
    print("| dim | k | recall of positives | candidate pairs per question | kNN seconds |")
    print("| --- | --- | --- | --- | --- |")
    for dim in map(int, args.dims.split(",")):
        vectors = lexical_vectors(questions, dim)
        for k in map(int, args.ks.split(",")):
            start = time.perf_counter()
            candidates = knn_pairs(list(range(len(questions))), vectors, k, args.min_similarity)
            seconds = time.perf_counter() - start
            found = sum(1 for a, b in positives if a == b or tuple(sorted((index[a], index[b]))) in candidates)
            print(f"| {dim} | {k} | {found / len(positives):.2%} | {len(candidates) / len(questions):.2f} "
                  f"| {seconds:.1f} |")


if __name__ == "__main__":
    main()
