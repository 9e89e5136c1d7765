"""One blocking work item's search: faiss's dense exact search against sparse products, interleaved.

Lexical vectors have tens of non-zeros in 1,024 dimensions; `transforms/block.propose` multiplies
them as they are by the work item's dense index instead of handing both to faiss as dense matrices.
This times `knn_lists` (proposal, exact re-ranking and lists, what `block`'s stage seconds count) on
one work item of N questions searched against themselves, the questions made as
`bench_blocking.py` makes them (the shared LCQMC and BQ questions, later copies with 1-3 character
edits), three ways in this process, A B C C B A ..., and checks that all give the same lists: faiss,
the sparse product on one thread, and the sparse product split over `--threads` threads
(`--search-threads`, `knn_lists(threads=...)`).

A second table times what `block._search` does before it: the work item's query and index matrices made
from its `SparseVector`s, vector by vector (`to_dense` and `np.stack` for each matrix, as until the
twenty-ninth session) against `vectors.dense_rows` (laid out once as a sparse matrix, made dense in one
call, and the index taken from the queries when they are the same rows), interleaved, checking that
both give the same arrays.

    python -m benchmarks.bench_search [--sizes 5000,12000,20000] [--repeat 5] [--threads 2] [--tables search,layout]

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
from transforms.embed import fit_idf, tfidf_rows
from transforms.normalize import normalize_text
from transforms.vectors import dense_rows, sparse_rows, to_dense


def work_item_vectors(n: int) -> list:
    """The `SparseVector`s of N questions, with the idf of their own document frequencies."""
    base = base_questions()
    alphabet = "".join(sorted({ch for text in base for ch in text}))
    texts = [normalize_text(question(i, base, alphabet)) for i in range(n)]
    return tfidf_rows(texts, fit_idf(texts, DIM))


def work_item(n: int) -> tuple[list, np.ndarray, object]:
    """(ids, dense vectors, the same as sparse rows) of N questions."""
    dense, sparse = dense_rows(work_item_vectors(n))
    return list(range(n)), dense, sparse


def _vector_by_vector(vectors: list) -> tuple:
    """The work item's matrices as `block._search` made them until the twenty-ninth session."""
    return np.stack([to_dense(v) for v in vectors]), np.stack([to_dense(v) for v in vectors]), sparse_rows(vectors)


def _at_once(vectors: list) -> tuple:
    dense, sparse = dense_rows(vectors)
    return dense, dense, sparse


def layout_table(sizes: list[int], repeat: int) -> None:
    """Milliseconds to make a work item's matrices both ways, interleaved A B B A ..."""
    print("| questions | vector by vector, ms: median (min-max) | at once, ms: median (min-max) | same arrays |")
    print("| --- | --- | --- | --- |")
    ways = {"by vector": _vector_by_vector, "at once": _at_once}
    for n in sizes:
        vectors = work_item_vectors(n)
        seconds: dict = {way: [] for way in ways}
        made: dict = {}
        for i in range(repeat):
            for way in (list(ways) if i % 2 == 0 else list(ways)[::-1]):
                started = time.perf_counter()
                made[way] = ways[way](vectors)
                seconds[way].append(time.perf_counter() - started)
        (a_q, a_i, a_s), (b_q, b_i, b_s) = made["by vector"], made["at once"]
        same = (np.array_equal(a_q, b_q) and np.array_equal(a_i, b_i) and a_q.dtype == b_q.dtype
                and (a_s != b_s).nnz == 0)
        cells = [f"{statistics.median(s) * 1e3:.1f} ({min(s) * 1e3:.1f}-{max(s) * 1e3:.1f})" for s in seconds.values()]
        print(f"| {n:,} | {' | '.join(cells)} | {same} |", flush=True)


def search_table(sizes: list[int], repeat: int, threads: int) -> None:
    """Seconds of `knn_lists` on a work item three ways, interleaved A B C C B A ..."""
    settings = BlockingSettings()
    print(f"| questions | faiss, s: median (min-max) | sparse, s: median (min-max) | sparse on {threads} threads, "
          f"s: median (min-max) | same lists |")
    print("| --- | --- | --- | --- | --- |")
    ways = ("faiss", "sparse", "threads")
    for n in sizes:
        ids, dense, sparse = work_item(n)
        seconds: dict = {way: [] for way in ways}
        found: dict = {}
        for i in range(repeat):
            for way in (ways if i % 2 == 0 else ways[::-1]):
                started = time.perf_counter()
                found[way] = knn_lists(ids, dense, ids, dense, settings.top_k, settings.min_similarity,
                                       settings.margin, None if way == "faiss" else sparse,
                                       threads if way == "threads" else 1)
                seconds[way].append(time.perf_counter() - started)
        cells = [f"{statistics.median(s):.2f} ({min(s):.2f}-{max(s):.2f})" for s in seconds.values()]
        same = found["faiss"] == found["sparse"] == found["threads"]
        print(f"| {n:,} | {' | '.join(cells)} | {same} |", flush=True)


def main(argv: Optional[list[str]] = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", default="5000,12000,20000")
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--threads", type=int, default=2, help="threads of the third way")
    parser.add_argument("--tables", default="search,layout", help="which tables: search, layout, or both")
    args = parser.parse_args(argv)
    sizes = [int(size) for size in args.sizes.split(",")]
    if "search" in args.tables.split(","):
        search_table(sizes, args.repeat, args.threads)
        print()
    if "layout" in args.tables.split(","):
        layout_table(sizes, args.repeat)


if __name__ == "__main__":
    main()
