"""One blocking work item's search: faiss's dense exact search against sparse products, interleaved.

Lexical vectors have tens of non-zeros in 1,024 dimensions; `transforms/block.propose` multiplies
them as they are by the work item's dense index instead of handing both to faiss as dense matrices.
This times `knn_lists` (proposal, exact re-ranking and lists, what `block`'s stage seconds count) on
one work item of N questions searched against themselves, the questions made as
`bench_blocking.py` makes them (the shared LCQMC and BQ questions, later copies with 1-3 character
edits), three ways in this process, A B C C B A ..., and checks that all give the same lists: faiss,
the sparse product on one thread, and the sparse product split over `--threads` threads
(`--search-threads`, `knn_lists(threads=...)`).

    python -m benchmarks.bench_search [--sizes 5000,12000,20000] [--repeat 5] [--threads 2]

faiss uses the threads OpenMP gives it (every core, as in a run).
"""
from __future__ import annotations

import argparse
import statistics
import time
from typing import Optional

import numpy as np

from benchmarks.bench_blocking import DIM, base_questions, question
from transforms.block import BlockingSettings, knn_lists
from transforms.embed import hashed_ngrams, idf_weights, tfidf_sparse
from transforms.normalize import normalize_text
from transforms.vectors import sparse_rows, to_dense


def work_item(n: int) -> tuple[list, np.ndarray, object]:
    """(ids, dense vectors, the same as sparse rows) of N questions."""
    base = base_questions()
    alphabet = "".join(sorted({ch for text in base for ch in text}))
    texts = [normalize_text(question(i, base, alphabet)) for i in range(n)]
    df = np.zeros(DIM, dtype=np.int64)
    for text in texts:
        df[hashed_ngrams(text, DIM)[0]] += 1
    idf = idf_weights(df, n)
    vectors = [tfidf_sparse(text, idf) for text in texts]
    return list(range(n)), np.stack([to_dense(v) for v in vectors]), sparse_rows(vectors)


def main(argv: Optional[list[str]] = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", default="5000,12000,20000")
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--threads", type=int, default=2, help="threads of the third way")
    args = parser.parse_args(argv)
    settings = BlockingSettings()
    print(f"| questions | faiss, s: median (min-max) | sparse, s: median (min-max) | sparse on {args.threads} threads, "
          f"s: median (min-max) | same lists |")
    print("| --- | --- | --- | --- | --- |")
    ways = ("faiss", "sparse", "threads")
    for n in (int(size) for size in args.sizes.split(",")):
        ids, dense, sparse = work_item(n)
        seconds: dict = {way: [] for way in ways}
        found: dict = {}
        for i in range(args.repeat):
            for way in (ways if i % 2 == 0 else ways[::-1]):
                started = time.perf_counter()
                found[way] = knn_lists(ids, dense, ids, dense, settings.top_k, settings.min_similarity,
                                       settings.margin, None if way == "faiss" else sparse,
                                       args.threads if way == "threads" else 1)
                seconds[way].append(time.perf_counter() - started)
        cells = [f"{statistics.median(s):.2f} ({min(s):.2f}-{max(s):.2f})" for s in seconds.values()]
        same = found["faiss"] == found["sparse"] == found["threads"]
        print(f"| {n:,} | {' | '.join(cells)} | {same} |", flush=True)


if __name__ == "__main__":
    main()
