"""What one `JoinByKey` costs a record in the in-process runner: values packed (as a run joins them) or not.

N records (`ScoredPair`s, keyed by their first id) are joined with their first ids' labels (one per
id, every 10th id has none), and the function yields each pair under its second id with its label, as
chaining control's joins do. Each variant runs in a fresh process on the in-process runner, A B B A ...:

- `packed`: `JoinByKey` as it is (records cross the join as `RecordCoder` bytes);
- `plain`: the same with every value left as it is (`joins.tagged` made the identity);
- `none`: the same records and labels made and flattened, no join: what the other two cost besides.

Reported: process CPU seconds, median (min-max), and the join's CPU per element (records + labels):
the variant's median less `none`'s. Both joins must give the same output (count and checksum).

    python -m benchmarks.bench_joins [--records 300000] [--labels 30000] [--repeat 5]
"""
from __future__ import annotations

import argparse
import json
import random
import resource
import statistics
import subprocess
import sys
from operator import attrgetter
from typing import Optional

import apache_beam as beam
from apache_beam.options.pipeline_options import PipelineOptions

from transforms import joins
from transforms.coders import use_record_coder
from transforms.records import ScoredPair

SHARDS = 10
VARIANTS = ("none", "plain", "packed")


def _records(shard: int, records: int, labels: int):
    rng = random.Random(shard)
    for _ in range(shard, records, SHARDS):
        yield ScoredPair(rng.randrange(labels), rng.randrange(labels), rng.random(), rng.random(), "lexical")


def _labels(shard: int, labels: int):
    return ((i, i // 7) for i in range(shard, labels, SHARDS) if i % 10)


def _label_end_b(element):
    _, joined = element
    label = joins.only(joined["label"])
    if label is not None:
        for pair in joined["pair"]:
            yield pair.id_b, (label, pair)


def _checksum(element) -> int:
    key, (label, pair) = element
    return key * 7 + label * 3 + pair.id_a


def run_one(variant: str, records: int, labels: int) -> dict:
    """One variant in this process: its CPU seconds and output (count, checksum)."""
    if variant == "plain":
        joins.tagged = lambda tag, value: (tag, value)
    use_record_coder()
    before = resource.getrusage(resource.RUSAGE_SELF)
    with beam.Pipeline(options=PipelineOptions(["--runner=FnApiRunner"])) as pipeline:
        shards = pipeline | "Shards" >> beam.Create(list(range(SHARDS)))
        pairs = shards | "Records" >> beam.FlatMap(_records, records, labels)
        labelled = shards | "Labels" >> beam.FlatMap(_labels, labels)
        if variant == "none":
            sums = (pairs, labelled) | beam.Flatten() | beam.Map(lambda _: (1, 0))
        else:
            sums = ({"pair": pairs, "label": labelled}
                    | joins.JoinByKey(_label_end_b, keys={"pair": attrgetter("id_a")})
                    | beam.Map(lambda e: (1, _checksum(e))))
        (sums
         | beam.CombineGlobally(lambda values: tuple(map(sum, zip(*values))) or (0, 0))
         | beam.Map(lambda total: print(json.dumps({"output": list(total)}))))
    after = resource.getrusage(resource.RUSAGE_SELF)
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return {"variant": variant, "cpu_s": round(cpu, 2)}


def main(argv: Optional[list[str]] = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--records", type=int, default=300_000)
    parser.add_argument("--labels", type=int, default=30_000)
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--one", choices=VARIANTS, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.one:
        print(json.dumps(run_one(args.one, args.records, args.labels)), flush=True)
        return
    cpu: dict = {v: [] for v in VARIANTS}
    outputs: dict = {}
    for i in range(args.repeat):
        for variant in (VARIANTS if i % 2 == 0 else VARIANTS[::-1]):
            lines = subprocess.run(
                [sys.executable, "-m", "benchmarks.bench_joins", "--one", variant, "--records", str(args.records),
                 "--labels", str(args.labels)], capture_output=True, text=True, check=True).stdout.splitlines()
            found = [json.loads(line) for line in lines if line.startswith("{")]
            cpu[variant].append(next(f["cpu_s"] for f in found if "cpu_s" in f))
            outputs.setdefault(variant, set()).add(tuple(next(f["output"] for f in found if "output" in f)))
    elements = args.records + sum(1 for s in range(SHARDS) for _ in _labels(s, args.labels))
    base = statistics.median(cpu["none"])
    print(f"{args.records:,} records joined with {args.labels:,} labels, {args.repeat} runs each, interleaved")
    print("| variant | CPU s: median (min-max) | join CPU per element, µs |")
    print("| --- | --- | --- |")
    for variant in VARIANTS:
        seconds = cpu[variant]
        per = "-" if variant == "none" else f"{(statistics.median(seconds) - base) / elements * 1e6:.1f}"
        print(f"| {variant} | {statistics.median(seconds):.2f} ({min(seconds):.2f}-{max(seconds):.2f}) | {per} |")
    same = len(outputs["plain"]) == 1 and outputs["plain"] == outputs["packed"]
    print(f"same output: {same} {sorted(outputs['packed'])}")


if __name__ == "__main__":
    main()
