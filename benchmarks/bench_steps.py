"""Where a run's CPU goes, step by step: Beam's own per-step timings and element counts, per candidate pair.

`bench_scale.py` gives a run's CPU outside the model per pair; this says which
steps spend it. It runs one `qdedup run` (`configs/local-one-process.yaml`, `bench_scale.py`'s
corpus and tiny random scorer) in this process on the in-process runner, then
reads the runner's monitoring data:

- per top-level step (the first one or two names of its path: `BlockLexical`,
  `ClusterGroups/SplitChains`, ...), the time Beam's state sampler saw the
  bundle thread spend in its transforms (start, process and finish of every
  bundle, encoding and decoding what they pass on included: on an otherwise idle
  machine, the in-process runner's CPU; on a busy one, more) and the elements its
  transforms produced ("hops": one element passed from one transform to the
  next, fused or through a shuffle), both per candidate pair (candidate and
  re-split pairs);
- the process's own CPU (user + sys) beside the sum of the steps' times, and
  the CPU outside the model and blocking per pair two ways: as `bench_scale.py`
  counts it (process CPU minus the `score` and `block` stages' seconds), and
  from the main thread's CPU alone (the in-process runner runs every bundle on
  it; faiss's and torch's helper threads work only inside those two stages,
  yet the first way counts their CPU as outside them).

With `--coding`, it also times the coding of every element that crosses a stage boundary (encoded
by the stage that makes it, decoded by each stage that reads it: a shuffle's input and output, a
collection two stages read), the per-element cost that fusing steps and carrying lists save, and
lists the boundaries that cost most, each under the step that made the collection (`BoundaryCoding`).

With `--stage-memory LOG`, it also writes a line per stage the runner executes
(seconds since the start, the stage's seconds, the process's RSS before it, its
peak during it, sampled every 0.2 s, and after it, the stage's name) and prints
the stages where memory peaked: the in-process runner holds each shuffle's
values in memory, so the peak names the shuffle that sets it.

    python -m benchmarks.bench_steps [--rows 30000] [--work DIR] [--top 20] [--split STEP,...]
        [--coding] [--stage-memory LOG] [-- EXTRA qdedup FLAGS]

One run: the figures are shares, not A/B ratios.
"""
from __future__ import annotations

import argparse
import collections
import contextlib
import json
import os
import resource
import shutil
import subprocess
import sys
import threading
import time
from typing import Collection, Optional

from apache_beam.metrics import monitoring_infos
from apache_beam.runners.portability.fn_api_runner import fn_runner
from apache_beam.runners.worker import bundle_processor

import pipelines.cli as cli
from benchmarks.bench_scale import write_corpus

_TIMINGS = (monitoring_infos.START_BUNDLE_MSECS_URN, monitoring_infos.PROCESS_BUNDLE_MSECS_URN,
            monitoring_infos.FINISH_BUNDLE_MSECS_URN)
_NESTED = ("ClusterGroups", "ScoreCandidates")  # steps reported by their second name too


def step_of(transform: str, split: Collection[str] = ()) -> str:
    """The step a transform is counted under: its first name (two inside `_NESTED` steps), and one name
    deeper for each step named in `split` that it is inside (`--split`)."""
    parts = transform.split("/")
    depth = 2 if parts[0] in _NESTED else 1
    while depth < len(parts) and "/".join(parts[:depth]) in split:
        depth += 1
    return "/".join(parts[:depth])


def step_costs(infos, producers: dict, split: Collection[str] = ()) -> tuple[dict, dict]:
    """({step: milliseconds}, {step: elements produced}) from a run's monitoring infos; `producers` maps a
    PCollection id to the transform that makes it; `split`: as `step_of`'s."""
    msecs, elements = collections.Counter(), collections.Counter()
    for info in infos:
        labels = info.labels
        if info.urn in _TIMINGS:
            msecs[step_of(labels.get(monitoring_infos.PTRANSFORM_LABEL, "?"), split)] += \
                monitoring_infos.extract_counter_value(info)
        elif info.urn == monitoring_infos.ELEMENT_COUNT_URN:
            producer = producers.get(labels.get(monitoring_infos.PCOLLECTION_LABEL), "(runner)")
            elements[step_of(producer, split)] += monitoring_infos.extract_counter_value(info)
    return dict(msecs), dict(elements)


def _rss_gib() -> float:
    with open("/proc/self/statm") as handle:
        return int(handle.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**30


class StageMemory:
    """While active, logs every stage the in-process runner executes with the process's RSS around and during it.

    It wraps the runner's private `FnApiRunner._execute_bundle` (a benchmark's tool: Beam may rename it),
    and a thread samples the RSS every `interval` seconds (Linux: /proc/self/statm).
    """

    def __init__(self, path: str, interval: float = 0.2):
        self._path = path
        self._interval = interval
        self._peak = 0.0
        self._stop = threading.Event()

    def _sample(self) -> None:
        while not self._stop.wait(self._interval):
            self._peak = max(self._peak, _rss_gib())

    def __enter__(self) -> "StageMemory":
        # Line-buffered: a run the kernel kills for memory leaves its log up to the stage that killed it.
        log = self._log = open(self._path, "w", buffering=1)
        execute = self._execute = fn_runner.FnApiRunner._execute_bundle
        started = time.monotonic()

        def logged(runner, context, manager, inputs):
            before = self._peak = _rss_gib()
            began = time.monotonic()
            try:
                return execute(runner, context, manager, inputs)
            finally:
                log.write(f"{began - started:.1f}\t{time.monotonic() - began:.1f}\t{before:.2f}\t"
                          f"{max(self._peak, _rss_gib()):.2f}\t{_rss_gib():.2f}\t{manager.stage.name}\n")

        fn_runner.FnApiRunner._execute_bundle = logged
        threading.Thread(target=self._sample, daemon=True).start()
        return self

    def __exit__(self, *exc) -> None:
        fn_runner.FnApiRunner._execute_bundle = self._execute
        self._stop.set()
        self._log.close()


def memory_peaks(lines, top: int) -> list[tuple[float, float, str]]:
    """The `top` stages of a `StageMemory` log with the highest peak RSS: (peak GiB, RSS before, stage name)."""
    stages = []
    for line in lines:
        _, _, before, peak, _, name = line.rstrip("\n").split("\t", 5)
        stages.append((float(peak), float(before), name))
    return sorted(stages, key=lambda stage: -stage[0])[:top]


class _TimedCoder:
    """A stage boundary's coder, timing each element it encodes or decodes into `BoundaryCoding`'s tallies."""

    def __init__(self, impl, name: str, tallies: dict):
        self._impl = impl
        self._tally = tallies.setdefault(name, [0, 0.0])

    def encode_to_stream(self, value, stream, nested) -> None:
        started = time.perf_counter()
        self._impl.encode_to_stream(value, stream, nested)
        self._tally[0] += 1
        self._tally[1] += time.perf_counter() - started

    def decode_from_stream(self, stream, nested):
        started = time.perf_counter()
        value = self._impl.decode_from_stream(stream, nested)
        self._tally[0] += 1
        self._tally[1] += time.perf_counter() - started
        return value

    def __getattr__(self, name: str):
        return getattr(self._impl, name)


class BoundaryCoding:
    """While active, counts and times every element the in-process runner's stages encode for the next stage
    (`DataOutputOperation`) or decode from the one before (`DataInputOperation`): `tallies` is
    {boundary operation's name: [elements, seconds]}, e.g. "ClusterGroups/GroupRows/Group/Write". The runner's
    own work between them (grouping a shuffle's encoded elements by key) is not a stage's and is not counted.

    It wraps Beam's private operations (a benchmark's tool, as `StageMemory` is: Beam may rename them).
    """

    def __init__(self):
        self.tallies: dict = {}

    def __enter__(self) -> "BoundaryCoding":
        self._decode = decode = bundle_processor.DataInputOperation.process_encoded
        self._encode = encode = bundle_processor.DataOutputOperation.process
        tallies = self.tallies

        def timed(operation) -> None:
            if not isinstance(operation.windowed_coder_impl, _TimedCoder):
                operation.windowed_coder_impl = _TimedCoder(operation.windowed_coder_impl,
                                                            operation.name_context.step_name, tallies)

        def decoded(operation, encoded) -> None:
            timed(operation)
            decode(operation, encoded)

        def encoded(operation, value) -> None:
            timed(operation)
            encode(operation, value)

        bundle_processor.DataInputOperation.process_encoded = decoded
        bundle_processor.DataOutputOperation.process = encoded
        return self

    def __exit__(self, *exc) -> None:
        bundle_processor.DataInputOperation.process_encoded = self._decode
        bundle_processor.DataOutputOperation.process = self._encode


def boundary_steps(tallies: dict, producers: dict, split: Collection[str] = ()) -> dict:
    """{step: [elements coded, seconds]} from `BoundaryCoding` tallies, each boundary counted under the step that
    made its collection: the transform it names, or, for a runner's read or write of a collection
    ("<collection id>/Read"), the producer of that collection (`producers`, as `run_once` gives)."""
    steps: dict = {}
    for name, (count, seconds) in tallies.items():
        producer = producers.get(name.split("/")[0])  # a collection's id names the runner's read or write of it
        step = step_of(producer or name.rsplit("/", 1)[0], split)
        held = steps.setdefault(step, [0, 0.0])
        held[0] += count
        held[1] += seconds
    return steps


def run_once(argv: list[str]) -> tuple[int, object, dict]:
    """Runs `qdedup run` here; (exit code, the runner's result, {PCollection id: producing transform})."""
    seen: dict = {}
    finish, via = cli.finish_report, fn_runner.FnApiRunner.run_via_runner_api

    def keep_result(result, *args, **kwargs):
        seen["result"] = result
        return finish(result, *args, **kwargs)

    def keep_proto(runner, proto, *args, **kwargs):
        seen["proto"] = proto
        return via(runner, proto, *args, **kwargs)

    cli.finish_report, fn_runner.FnApiRunner.run_via_runner_api = keep_result, keep_proto
    try:
        code = cli.main(["run", *argv])
    finally:
        cli.finish_report, fn_runner.FnApiRunner.run_via_runner_api = finish, via
    producers = {}
    for transform in seen["proto"].components.transforms.values():
        if not transform.subtransforms:
            producers.update({pcoll: transform.unique_name for pcoll in transform.outputs.values()})
    return code, seen.get("result"), producers


def main(argv: Optional[list[str]] = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, default=30_000)
    parser.add_argument("--work", default="/tmp/qdedup-scale")
    parser.add_argument("--top", type=int, default=20, help="steps listed, most CPU first")
    parser.add_argument("--split", default="", metavar="STEP,...",
                        help="steps to list by their parts, one name deeper (e.g. "
                             "ClusterGroups/SplitChains,BlockLexical; a part named here too is split again)")
    parser.add_argument("--coding", action="store_true",
                        help="time the coding of elements crossing stage boundaries; list the costliest")
    parser.add_argument("--stage-memory", metavar="LOG", help="log each stage's RSS to LOG; print where it peaked")
    parser.add_argument("extra", nargs="*", help="more `qdedup run` flags, after --")
    args = parser.parse_args(argv)
    data = os.path.join(args.work, f"corpus-{args.rows}")
    if not os.path.isdir(data):
        write_corpus(args.rows, data)
    model = os.path.join(args.work, "tiny-model")
    if not os.path.isdir(model):
        subprocess.run([sys.executable, "-m", "pipelines.random_model", model], check=True)
    out = os.path.join(args.work, f"steps-{args.rows}")
    shutil.rmtree(out, ignore_errors=True)
    before = resource.getrusage(resource.RUSAGE_SELF)
    main_before, started = time.thread_time(), time.perf_counter()
    run_args = ["--config", "configs/local-one-process.yaml", "--input", os.path.join(data, "*.parquet"),
                "--output", out, "--scorer-model", model, *args.extra]
    with contextlib.ExitStack() as watching:
        if args.stage_memory:
            watching.enter_context(StageMemory(args.stage_memory))
        coding = watching.enter_context(BoundaryCoding()) if args.coding else None
        code, result, producers = run_once(run_args)
    main_cpu, wall = time.thread_time() - main_before, time.perf_counter() - started
    after = resource.getrusage(resource.RUSAGE_SELF)
    if code != 0 or result is None:
        raise SystemExit(f"the run failed (exit {code})")
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    with open(os.path.join(out, "report.json")) as handle:
        report = json.load(handle)
    pairs = report["candidate_pairs"] + report["resplit_pairs"]
    msecs, elements = step_costs(result.monitoring_infos(), producers, set(filter(None, args.split.split(","))))
    timed = sum(msecs.values()) / 1000
    stages = report["stage_seconds"]
    model_and_blocking = stages.get("score", 0.0) + stages.get("block", 0.0)
    stage_cpu = report.get("stage_cpu_seconds", {})
    model_and_blocking_cpu = stage_cpu.get("score", 0.0) + stage_cpu.get("block", 0.0)
    print(json.dumps({"rows": args.rows, "pairs": pairs, "wall_s": round(wall, 1), "cpu_s": round(cpu, 1),
                      "main_thread_cpu_s": round(main_cpu, 1), "in_steps_s": round(timed, 1),
                      "outside_us_per_pair": round((cpu - model_and_blocking) / pairs * 1e6, 1),
                      "outside_cpu_us_per_pair": round((cpu - model_and_blocking_cpu) / pairs * 1e6, 1),
                      "main_thread_outside_us_per_pair": round((main_cpu - model_and_blocking) / pairs * 1e6, 1),
                      "hops_per_pair": round(sum(elements.values()) / pairs, 1),
                      "peak_rss_gib": round(after.ru_maxrss / 2**20, 2), "stage_seconds": stages,
                      "stage_cpu_seconds": stage_cpu, "forward_hardware": report.get("forward_hardware")}))
    print(f"{'step':48} {'s':>8} {'µs/pair':>8} {'hops/pair':>9}")
    for step in sorted(msecs, key=msecs.get, reverse=True)[:args.top]:
        print(f"{step:48} {msecs[step] / 1000:8.1f} {msecs[step] / pairs * 1000:8.0f} "
              f"{elements.get(step, 0) / pairs:9.2f}")
    if coding is not None:
        coded = boundary_steps(coding.tallies, producers, set(filter(None, args.split.split(","))))
        count, seconds = sum(c for c, _ in coded.values()), sum(s for _, s in coded.values())
        print(f"stage boundaries: {count / pairs:.2f} elements coded a pair (encoded or decoded), {seconds:.1f} s, "
              f"{seconds / pairs * 1e6:.0f} µs a pair; by the step that made them:")
        print(f"{'step':48} {'s':>8} {'µs/pair':>8} {'coded/pair':>10}")
        for step in sorted(coded, key=lambda name: -coded[name][1])[:args.top]:
            print(f"{step:48} {coded[step][1]:8.1f} {coded[step][1] / pairs * 1e6:8.0f} {coded[step][0] / pairs:10.2f}")
    if args.stage_memory:
        with open(args.stage_memory) as log:
            peaks = memory_peaks(log, 5)
        print("stages where memory peaked (GiB before -> peak):")
        for peak, before, name in peaks:
            print(f"  {before:6.2f} -> {peak:6.2f}  {name[:150]}")


if __name__ == "__main__":
    main()
