"""CPU a pair of scoring's own Python around the model: assembling a pair's token ids, packing, padding.

`bench_feeding.py` measures the whole scoring stage inside Beam, where the
runner's own work and the machine's drift make a few µs a pair hard to see;
this times the pure functions it runs a sort window at a time
(`feeding.tokenize` on texts tokenized ahead, `feeding.pack_batches`,
`feeding.collate`), on the shared LCQMC and BQ dev questions paired at random
(seeded), with the tiny random scorer's tokenizer (the same vocabulary as the
Erlangshen-shaped one). For a before/after, run it from two checkouts, interleaved.

    python -m benchmarks.bench_tokenize [--pairs 40960] [--window 4096] [--repeats 5]

Prints one line of JSON: µs a pair for each function, the median of `--repeats` timings (min-max).
"""
from __future__ import annotations

import argparse
import json
import os
import random
import statistics
import tempfile
import time

from benchmarks.bench_blocking import base_questions
from pipelines.random_model import make_random_model
from transforms import sources
from transforms.feeding import ahead_of_scoring, collate, pack_batches, tokenize

BUDGET = 8192  # the tiny scorer's automatic CPU budget


def timings(tokenizer, pairs: list, window: int) -> dict:
    """Seconds each function took over all `pairs`, a window at a time."""
    spent = {"tokenize": 0.0, "pack": 0.0, "collate": 0.0}
    for start in range(0, len(pairs), window):
        began = time.process_time()
        encoded = tokenize(tokenizer, pairs[start:start + window], 512)
        tokenized = time.process_time()
        batches = pack_batches([len(ids) for (ids, _), _ in encoded], BUDGET)
        packed = time.process_time()
        for batch in batches:
            collate([encoded[i][0] for i in batch], 0)
        spent["tokenize"] += tokenized - began
        spent["pack"] += packed - tokenized
        spent["collate"] += time.process_time() - packed
    return spent


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--pairs", type=int, default=40_960)
    parser.add_argument("--window", type=int, default=4096, help="pairs tokenized together (--sort-window)")
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory() as work:
        tokenizer = sources.load_tokenizer(make_random_model(os.path.join(work, "model")))
    texts = base_questions()
    forms = ahead_of_scoring(tokenizer, 512)(texts)
    rng = random.Random(0)
    pairs = [(forms[rng.randrange(len(forms))], forms[rng.randrange(len(forms))]) for _ in range(args.pairs)]
    runs = [timings(tokenizer, pairs, args.window) for _ in range(args.repeats)]
    figures = {}
    for name in runs[0]:
        per_pair = [run[name] / args.pairs * 1e6 for run in runs]
        figures[name] = {"median": round(statistics.median(per_pair), 2), "min": round(min(per_pair), 2),
                         "max": round(max(per_pair), 2)}
    print(json.dumps({"pairs": args.pairs, "window": args.window, "us_per_pair": figures}))


if __name__ == "__main__":
    main()
