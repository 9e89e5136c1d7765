"""The scoring stage's CPU a pair outside the model's forward pass: what keeps a GPU waiting.

On a GPU worker the forward pass of a batch takes little of the worker's CPU; what
the CPU does for each pair around it (dealing pairs into shards, the shuffle,
assembling token ids, packing, padding, RunInference's per-element work, making
the scored records) is what limits the pairs a second a worker's cores can feed
its GPU. This runs the scoring stage alone, in this process on the in-process
runner, over LCQMC dev questions (texts tokenized ahead, as a run carries them),
with the forward pass replaced by one that returns a constant, so that every CPU
second measured is feeding. Fixed costs (building the pipeline, loading the
tokenizer and the tiny random model) cancel out: the figure is the difference
between a run of `--pairs` and one of `--small` pairs, per extra pair.

    python -m benchmarks.bench_feeding [--pairs 200000] [--small 2000] [--budgets 2048,32768]
                                       [--paths pairs] [--repeats 5]

`--paths`: what the stage starts from. `pairs`: `CandidatePair`s made one by one
(random pairs of questions), through `ScorePairs` (chaining control's re-split
pairs, and a run that builds on an earlier one). `lists`: each question's
neighbour lists, as blocking gives them (100 questions a chunk, 10 neighbours
each, 6 of them found from both ends: 700 pairs), through `ScoreNeighbours` (a run
from scratch). `lists-made`: the same lists made into pairs by
`DistinctCandidates`, then `ScorePairs` (how a run from scratch scored before
`ScoreNeighbours`). Every (path, token budget) is measured `--repeats` times,
interleaved (A B, B A, ...); a line per measurement, then the median (min-max)
CPU µs a pair for each, and the pairs a batch held.
"""
from __future__ import annotations

import argparse
import json
import os
import random
import statistics
import sys
import tempfile
import time

import apache_beam as beam
import numpy as np
from apache_beam.options.pipeline_options import PipelineOptions

import transforms.score
from pipelines.random_model import make_random_model
from pipelines.recall import read_labelled_pairs
from transforms.block import DistinctCandidates
from transforms.coders import use_record_coder
from transforms.feeding import ModelSettings, ahead_of_scoring
from transforms.records import CandidatePair
from transforms.sources import load_tokenizer

SHARED_DATA = os.path.join(os.path.dirname(__file__), "..", "..", "shared", "data")


class _Constant:
    """A forward pass that costs nothing: the same score for every row. Counts its calls and rows in a file
    (the runner calls an unpickled copy)."""

    def __init__(self, log: str):
        self._log = log

    def __call__(self, model, batch: dict, label: int) -> np.ndarray:
        rows = int(batch["input_ids"].shape[0])
        with open(self._log, "a") as handle:
            handle.write(f"{rows}\n")
        return np.full(rows, 0.5, dtype=np.float32)


def question_tokens(model_dir: str) -> list[bytes]:
    """The distinct LCQMC dev questions, each tokenized ahead as a run carries it into its pairs."""
    path = os.path.join(os.environ.get("QDEDUP_SHARED_DATA", SHARED_DATA), "lcqmc", "dev.tsv")
    texts = sorted({text for a, b, _ in read_labelled_pairs(path) for text in (a, b)})
    ahead = ahead_of_scoring(load_tokenizer(model_dir), 512)
    return ahead(texts)


CHUNK = 1000  # pairs a made element becomes (`pairs`)
QUESTIONS = 100  # questions a made element becomes (`lists`), each with these neighbours in its chunk:
BOTH_ENDS, ONE_END = (1, 2, 3, -1, -2, -3), (4, 5, 6, 7)
LIST_PAIRS = QUESTIONS * (len(BOTH_ENDS) // 2 + len(ONE_END))  # distinct pairs a chunk of lists makes: 700


def _per_chunk(path: str) -> int:
    return CHUNK if path == "pairs" else LIST_PAIRS


def _made(pairs: int, path: str = "pairs") -> int:
    return pairs // _per_chunk(path) * _per_chunk(path)


class _MakePairs(beam.DoFn):
    """A chunk number -> `CHUNK` pairs of distinct questions drawn at random (seeded by the chunk), made on the
    worker so that the pipeline carries the question table once, not every pair."""

    def __init__(self, tokens: list):
        self._tokens = tokens

    def process(self, chunk: int):
        rng, n = random.Random(chunk), len(self._tokens)
        for i in range(CHUNK):
            a, b = sorted(rng.sample(range(n), 2))
            yield CandidatePair(chunk * CHUNK + i, -(chunk * CHUNK + i), self._tokens[a], self._tokens[b], 0.5,
                                "lexical")


class _MakeLists(beam.DoFn):
    """A chunk number -> `QUESTIONS` neighbour lists (id, (text, {neighbour: (similarity, text)})) as blocking
    gives them: each question's neighbours are those `BOTH_ENDS` and `ONE_END` places on in its chunk, so that
    `LIST_PAIRS` distinct pairs come of `len(BOTH_ENDS + ONE_END)` entries a question."""

    def __init__(self, tokens: list):
        self._tokens = tokens

    def process(self, chunk: int):
        rng = random.Random(chunk)
        ids = [chunk * QUESTIONS + i for i in range(QUESTIONS)]
        texts = {i: self._tokens[rng.randrange(len(self._tokens))] for i in ids}
        for place, query in enumerate(ids):
            neighbours = {ids[(place + step) % QUESTIONS] for step in BOTH_ENDS + ONE_END}
            yield query, (texts[query], {n: (0.5, texts[n]) for n in neighbours})


def cpu_of_scoring(tokens: list, pairs: int, settings: ModelSettings, path: str = "pairs") -> float:
    """Process CPU seconds of a pipeline that makes about `pairs` pairs (or the neighbour lists they come of),
    scores them along `path` and counts what comes out."""
    options = PipelineOptions(["--runner=FnApiRunner"])
    start = time.process_time()
    with beam.Pipeline(options=options) as pipeline:
        chunks = pipeline | beam.Create(range(pairs // _per_chunk(path)))
        if path == "pairs":
            scored = chunks | beam.ParDo(_MakePairs(tokens)) | transforms.score.ScorePairs(settings)
        else:
            found = {"lexical": chunks | beam.ParDo(_MakeLists(tokens))}
            most_found = (chunks | beam.combiners.Count.Globally()
                          | beam.Map(lambda n: n * QUESTIONS * len(BOTH_ENDS + ONE_END)),)  # the lists' entries
            scored = (found | transforms.score.ScoreNeighbours(settings, most_found) if path == "lists"
                      else found | DistinctCandidates() | transforms.score.ScorePairs(settings))
        _ = (scored.scored | beam.Map(len) | beam.CombineGlobally(sum)  # scored batches: lists of pairs
             | beam.Map(_check_count, _made(pairs, path)))
    return time.process_time() - start


def _check_count(count: int, expected: int) -> None:
    if count != expected:
        raise RuntimeError(f"{count} pairs scored of {expected}")


def _measure(order: list, work: str, log: str, pairs: int, small: int) -> tuple[dict, dict]:
    """({variant: [CPU µs a pair, one per measurement]}, {variant: pairs a forward pass}) for each variant
    "path/budget" of `order`, printing each measurement as it is made."""
    figures: dict = {variant: [] for variant in order}
    batches: dict = {}
    model_dir = make_random_model(os.path.join(work, "model"))
    tokens = question_tokens(model_dir)
    for variant in order:
        path, budget = variant.split("/")
        settings = ModelSettings(model_dir, device="cpu", torch_threads=1, token_budget=int(budget))
        base = cpu_of_scoring(tokens, small, settings, path)
        open(log, "w").close()
        cpu = cpu_of_scoring(tokens, pairs, settings, path)
        with open(log) as handle:
            calls = [int(line) for line in handle]
        figures[variant].append(1e6 * (cpu - base) / (_made(pairs, path) - _made(small, path)))
        batches[variant] = round(sum(calls) / max(len(calls), 1), 1)
        print(json.dumps({"path": path, "token_budget": int(budget), "cpu_us_per_pair": round(figures[variant][-1], 1),
                          "cpu_s": round(cpu, 2), "small_cpu_s": round(base, 2),
                          "pairs_per_batch": batches[variant]}), flush=True)
    return figures, batches


def main(argv=None) -> None:
    """Measures each token budget `--repeats` times, interleaved; prints a JSON line each, then the summary."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pairs", type=int, default=200_000)
    parser.add_argument("--small", type=int, default=2_000)
    parser.add_argument("--budgets", default="2048,32768",
                        help="token budgets compared (the CPU's and the GPU's automatic ones), interleaved")
    parser.add_argument("--paths", default="pairs", help="what scoring starts from: pairs, lists, lists-made")
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args(argv)
    paths = args.paths.split(",")
    if set(paths) - {"pairs", "lists", "lists-made"}:
        parser.error(f"--paths {args.paths}: each of pairs, lists, lists-made")
    step = max(_per_chunk(path) for path in paths)
    if not all(_per_chunk(path) <= _made(args.small, path) < _made(args.pairs, path) for path in paths):
        parser.error(f"--small must be at least {step} and --pairs more than --small (in steps of {step})")
    use_record_coder()
    variants = [f"{path}/{int(budget)}" for path in paths for budget in args.budgets.split(",")]
    order = [variants[i] if r % 2 == 0 else variants[-1 - i] for r in range(args.repeats) for i in range(len(variants))]
    forward = transforms.score.positive_probability
    with tempfile.TemporaryDirectory() as work:
        log = os.path.join(work, "calls.txt")
        transforms.score.positive_probability = _Constant(log)  # put back below: this process may score again
        try:
            figures, batches = _measure(order, work, log, args.pairs, args.small)
        finally:
            transforms.score.positive_probability = forward
    print(json.dumps({"pairs": args.pairs, "small": args.small, "order": order, "python": sys.version.split()[0],
                      "cpu_us_per_pair": {variant: {"median": round(statistics.median(values), 1),
                                                    "min": round(min(values), 1), "max": round(max(values), 1)}
                                          for variant, values in figures.items()},
                      "pairs_per_batch": batches}))


if __name__ == "__main__":
    main()
