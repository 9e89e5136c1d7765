"""OpenMP's spin after work, as libgomp sets it and as the package sets it (`transforms/openmp.py`).

Each variant runs in a fresh process (OpenMP reads the setting once, when torch loads it), interleaved
A B B A ...: "openmp" sets GOMP_SPINCOUNT=300000, libgomp's own default where OMP_WAIT_POLICY is unset and
threads do not outnumber cores; "package" leaves it to the package's import. Each process scores
`--batches` batches of `--pairs` shared LCQMC/BQ dev questions paired at random (seeded) with a random
model on every core, and after each batch runs `--gap-ms` of Python (the pipeline's own work between two
batches); then the same for a faiss search of `--queries` random vectors against 50,000. Per batch:
the forward's (or search's) wall ms, and the CPU ms the other threads burn during the gap.

    python -m benchmarks.bench_openmp [--repeats 5] [--erlangshen-model DIR]

The tiny random scorer is made here; `--erlangshen-model` (`python -m pipelines.random_model DIR
--erlangshen-shape`) adds a model of the full Erlangshen shape. Prints a table, median (min-max) over
the repeats.
"""
from __future__ import annotations

import argparse
import json
import os
import random
import statistics
import subprocess
import sys
import tempfile
import time

import transforms  # noqa: F401  (sets the spin, as in any qdedup process, before torch or faiss loads)

VARIANTS = {"openmp": {"GOMP_SPINCOUNT": "300000"}, "package": {}}


def _others_cpu() -> float:
    """CPU seconds of every thread of this process but the calling one."""
    return time.process_time() - time.clock_gettime(time.CLOCK_THREAD_CPUTIME_ID)


def _gap(seconds: float) -> None:
    end = time.perf_counter() + seconds
    while time.perf_counter() < end:
        sum(range(100))


def _measure(work, batches: int, gap: float) -> dict:
    """ms per batch: `work`'s wall time, and the other threads' CPU during the gap after it."""
    work()  # warm-up
    walls, idle = [], []
    for _ in range(batches):
        began = time.perf_counter()
        work()
        walls.append(time.perf_counter() - began)
        before = _others_cpu()
        _gap(gap)
        idle.append(max(0.0, _others_cpu() - before))  # clocks of two granularities: never below 0
    return {"work_ms": 1000 * statistics.median(walls), "gap_others_cpu_ms": 1000 * statistics.median(idle)}


def child(models: dict, pairs: int, batches: int, gap: float, queries: int) -> dict:
    import faiss
    import numpy as np
    import torch
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    from benchmarks.bench_blocking import base_questions

    torch.set_num_threads(len(os.sched_getaffinity(0)))
    texts = base_questions()
    rng = random.Random(0)
    firsts, seconds = [rng.choice(texts) for _ in range(pairs)], [rng.choice(texts) for _ in range(pairs)]
    found = {"GOMP_SPINCOUNT": os.environ.get("GOMP_SPINCOUNT")}
    for name, directory in models.items():
        tokenizer = AutoTokenizer.from_pretrained(directory)
        model = AutoModelForSequenceClassification.from_pretrained(directory).eval()
        encoded = tokenizer(firsts, seconds, padding=True, truncation=True, return_tensors="pt")

        def forward():
            with torch.inference_mode():
                model(**encoded)

        found[name] = _measure(forward, batches, gap)
    vectors = np.random.default_rng(0).random((50_000, 256), dtype=np.float32)
    index = faiss.IndexFlatIP(256)
    index.add(vectors)
    found["faiss"] = _measure(lambda: index.search(vectors[:queries], 10), batches, gap)
    return found


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=5, help="processes per variant")
    parser.add_argument("--batches", type=int, default=20)
    parser.add_argument("--pairs", type=int, default=256, help="pairs a batch")
    parser.add_argument("--gap-ms", type=float, default=10.0)
    parser.add_argument("--queries", type=int, default=500, help="vectors a search looks up")
    parser.add_argument("--erlangshen-model", help="a model of the full Erlangshen shape, to time as well")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        print(json.dumps(child(json.loads(args.child), args.pairs, args.batches, args.gap_ms / 1000, args.queries)))
        return
    from pipelines.random_model import make_random_model
    with tempfile.TemporaryDirectory() as work:
        models = {"tiny": make_random_model(os.path.join(work, "tiny"))}
        if args.erlangshen_model:
            models["erlangshen-shaped"] = args.erlangshen_model
        order = [name for i in range(args.repeats) for name in (("openmp", "package"), ("package", "openmp"))[i % 2]]
        results: dict = {name: [] for name in VARIANTS}
        for name in order:
            environment = {k: v for k, v in os.environ.items() if k not in ("GOMP_SPINCOUNT", "OMP_WAIT_POLICY")}
            command = [sys.executable, "-m", "benchmarks.bench_openmp", "--child", json.dumps(models),
                       "--batches", str(args.batches), "--pairs", str(args.pairs), "--gap-ms", str(args.gap_ms),
                       "--queries", str(args.queries)]
            done = subprocess.run(command, check=True, capture_output=True, text=True,
                                  env={**environment, **VARIANTS[name]})
            results[name].append(json.loads(done.stdout.strip().splitlines()[-1]))
    print(f"order: {' '.join(order)}; {args.batches} batches of {args.pairs} pairs (search: {args.queries} "
          f"queries), {args.gap_ms:g} ms of Python after each; median (min-max) of {args.repeats} processes")
    print(f"{'work':18} {'variant':8} {'GOMP_SPINCOUNT':>14} {'work ms':>22} {'others CPU ms in gap':>24}")
    for work_name in [*models, "faiss"]:
        for name, runs in results.items():
            cells = []
            for field in ("work_ms", "gap_others_cpu_ms"):
                values = [run[work_name][field] for run in runs]
                cells.append(f"{statistics.median(values):.2f} ({min(values):.2f}-{max(values):.2f})")
            print(f"{work_name:18} {name:8} {str(runs[0]['GOMP_SPINCOUNT']):>14} {cells[0]:>22} {cells[1]:>24}")


if __name__ == "__main__":
    main()
