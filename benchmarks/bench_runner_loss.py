"""Elements Beam's local runner loses in worker processes, with its timed flush and with the launcher's setting.

A collection made by two worker processes is read by a stage that waits on a side input (so the
runner holds the collection and sends it to that stage, as blocking reads its questions), and counted
where made and where read. Beam 2.77's runner flushes the stream that sends a stage's input every
`DATA_BUFFER_TIME_LIMIT_MS` (1,000 by default) from a background thread, and a flush clears what was
written while it sent; `pipelines.local_runner.turn_off_timed_flush` sets the limit to 0.

    python -m benchmarks.bench_runner_loss [--elements 8000000] [--limits 1000,0]

Each limit runs once, in the order given, in this process; a line per run: made, read, lost, seconds.
"""
from __future__ import annotations

import argparse
import functools
import os
import tempfile
import time
from typing import Optional

RUNNER = ["--runner=FnApiRunner", "--direct_running_mode=multi_processing", "--direct_num_workers=2"]


def _record(path: str, read: int, made: int) -> None:
    with open(path, "w") as handle:
        handle.write(f"{made} {read}")


def made_and_read(elements: int, path: str, time_limit_ms: Optional[int] = None) -> tuple[int, int]:
    """Elements made and elements read by the stage after the count, in two local worker processes.

    Args:
        elements: how many to make (four seeds, each making a quarter), ~220 bytes each.
        path: a file the last stage writes the two counts to (the workers are other processes).
        time_limit_ms: the runner's flush interval for this run; None keeps what is set.

    Returns:
        (made, read).
    """
    import apache_beam as beam
    from apache_beam.options.pipeline_options import PipelineOptions
    from apache_beam.runners.portability.fn_api_runner import worker_handlers

    if time_limit_ms is not None:
        worker_handlers.DATA_BUFFER_TIME_LIMIT_MS = time_limit_ms
    with beam.Pipeline(options=PipelineOptions(RUNNER)) as pipeline:
        rows = (pipeline | beam.Create(range(4))
                | beam.FlatMap(lambda seed: ((seed, i, "x" * 200) for i in range(elements // 4))))
        total = rows | "CountMade" >> beam.combiners.Count.Globally()
        count = (rows | "ReadAfterTheCount" >> beam.Map(lambda row, _: row[1], beam.pvalue.AsSingleton(total))
                 | "CountRead" >> beam.combiners.Count.Globally())
        _ = count | beam.Map(functools.partial(_record, path), beam.pvalue.AsSingleton(total))
    with open(path) as handle:
        made, read = handle.read().split()
    return int(made), int(read)


def main(argv: Optional[list[str]] = None) -> list[dict]:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--elements", type=int, default=8_000_000)
    parser.add_argument("--limits", default="1000,0", help="flush intervals in ms, run in this order")
    args = parser.parse_args(argv)
    rows = []
    with tempfile.TemporaryDirectory() as scratch:
        for i, limit in enumerate(int(value) for value in args.limits.split(",")):
            started = time.perf_counter()
            made, read = made_and_read(args.elements, os.path.join(scratch, f"{i}.txt"), limit)
            rows.append({"limit_ms": limit, "made": made, "read": read, "lost": made - read,
                         "seconds": round(time.perf_counter() - started, 1)})
            print(f"| {limit:,} ms | {made:,} | {read:,} | {made - read:,} | {rows[-1]['seconds']} |", flush=True)
    return rows


if __name__ == "__main__":
    main()
