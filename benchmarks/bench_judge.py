"""What chaining control's judging on one worker costs: its ids compacted through a table against a sort.

`chaining._judge_on_one_worker` holds every scored pair of a run with no component rounds (the local presets)
as columns, numbers the pairs' ends, finds the components and cuts the ones too large. At 1M rows that is 6M
pairs and 12M ends. It numbers them with `chaining.compact_ids`: a table where the ids are row ids (since the
forty-ninth session), else a sort (`np.unique` with the inverse, as before). This runs it both ways on the same
pairs, `DENSE_SPAN` 0 forcing the sort, and checks that both give the same outputs.

Each repetition runs in a process of its own, the two ways interleaved (table, sort, sort, table, ...): large
new arrays are slow to touch on this machine's VM, so in one process the second way would run on memory the
first had touched. Timed: CPU seconds of the judging alone, not of reading the pairs.

    python -m benchmarks.bench_judge --pairs RUN/pairs [--repeat 5]
    python -m benchmarks.bench_judge --synthetic 200000 [--repeat 5]

`--pairs`: a run's pairs/ (its blocking pairs are judged; those chaining control scored are left out, as the
judging never sees them); `--synthetic N`: N random pairs over N / 8 row ids, scores uniform (one large
component, cut, as a random scorer's run gives).
"""
from __future__ import annotations

import argparse
import glob
import hashlib
import json
import os
import pickle
import statistics
import subprocess
import sys
import time
from typing import Optional

import numpy as np
import pyarrow.parquet as pq

from transforms import chaining
from transforms.records import ScoredPair

WAYS = {"table": chaining.DENSE_SPAN, "sort": 0}
BATCH = 2000  # pairs a scored batch holds as it reaches the judging


def scored_pairs(pairs_dir: Optional[str], synthetic: int) -> list[ScoredPair]:
    """The pairs to judge: a run's blocking pairs, or `synthetic` random ones."""
    if pairs_dir:
        table = pq.read_table(sorted(glob.glob(os.path.join(pairs_dir, "*.parquet")))).to_pydict()
        return [ScoredPair(a, b, score, similarity, source, False) for a, b, score, similarity, source in zip(
            table["id_a"], table["id_b"], table["score"], table["similarity"], table["source"])
            if source != chaining.RESPLIT]
    rng = np.random.default_rng(7)
    ends = rng.integers(0, max(2, synthetic // 8), (synthetic, 2))
    ends = ends[ends[:, 0] != ends[:, 1]]
    return [ScoredPair(int(min(a, b)), int(max(a, b)), float(score), None, "lexical", False)
            for (a, b), score in zip(ends.tolist(), rng.random(len(ends)).tolist())]


class _Counter:
    def inc(self, n: int = 1) -> None:
        pass


def judge_once(pairs: list[ScoredPair], way: str) -> dict:
    """Judges `pairs` with ids compacted `way`: its CPU seconds and a digest of its outputs."""
    lists = [chaining.pair_columns(pairs[start:start + BATCH]) for start in range(0, len(pairs), BATCH)]
    settings = chaining.ChainingSettings(one_worker_pairs=len(pairs) + 1)
    counters = {name: _Counter() for name in ("resplit", "cut", "too_large")}
    saved, chaining.DENSE_SPAN = chaining.DENSE_SPAN, WAYS[way]
    try:
        started = time.process_time()
        outputs = [(getattr(out, "tag", None), getattr(out, "value", out)) for out in
                   chaining._judge_on_one_worker((None, lists), settings, chaining.cut_thresholds(settings), counters)]
        seconds = time.process_time() - started
    finally:
        chaining.DENSE_SPAN = saved
    return {"way": way, "cpu_s": round(seconds, 3), "outputs": len(outputs),
            "digest": hashlib.sha256(pickle.dumps(outputs)).hexdigest()}


def main(argv: Optional[list[str]] = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--pairs", help="a run's pairs/ folder")
    parser.add_argument("--synthetic", type=int, default=200_000)
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--one", choices=sorted(WAYS), help=argparse.SUPPRESS)  # one repetition, in this process
    args = parser.parse_args(argv)
    if args.one:
        result = judge_once(scored_pairs(args.pairs, args.synthetic), args.one)
        print(json.dumps(result))
        return result
    given = ["--pairs", args.pairs] if args.pairs else ["--synthetic", str(args.synthetic)]
    runs = []
    for i in range(args.repeat):
        for way in (("table", "sort") if i % 2 == 0 else ("sort", "table")):
            done = subprocess.run([sys.executable, "-m", "benchmarks.bench_judge", *given, "--one", way],
                                  check=True, capture_output=True, text=True)
            runs.append(json.loads(done.stdout.strip().splitlines()[-1]))
            print(f"{way}: {runs[-1]['cpu_s']} CPU s", file=sys.stderr, flush=True)
    digests = {run["digest"] for run in runs}
    assert len(digests) == 1, "the two ways judged the pairs differently"
    result = {"pairs": "synthetic %d" % args.synthetic if not args.pairs else args.pairs, "repeat": args.repeat,
              "outputs": runs[0]["outputs"], "cpu_s": {}}
    for way in WAYS:
        seconds = [run["cpu_s"] for run in runs if run["way"] == way]
        result["cpu_s"][way] = {"median": statistics.median(seconds), "min": min(seconds), "max": max(seconds),
                                "runs": seconds}
    print(json.dumps(result))
    return result


if __name__ == "__main__":
    main()
