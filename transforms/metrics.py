"""Beam metrics of a run: per-stage timing, the sizes each bounded step held, and report.json's counts.

Counts go through metrics because the runner sums them from every bundle it ran, whatever order it ran
them in: an in-pipeline count (a global combine read as a side input) came out short in a 1M-row local run
in two processes (docs/design.md, "Output contract"). A collection a later stage reads whole is counted
twice, where it is made and where it is read (`read_count`), so that a runner that loses some of it on the
way fails the run.
"""
from __future__ import annotations

import time

import apache_beam as beam
from apache_beam.metrics import Metrics

STAGE_NAMESPACE = "qdedup.stage_us"
STAGE_CPU_NAMESPACE = "qdedup.stage_cpu_us"


class StageTimer:
    """Context manager adding the wall microseconds of a block of work to the stage's counter, and its CPU
    microseconds to its CPU counter.

    With `helpers` (a model, a search), the CPU is the whole process's meanwhile, so that it counts the
    helper threads the work starts (torch's and faiss's pools), which the wall figure cannot: the stage's
    own CPU where the stage has the process to itself (the in-process runner), and an upper bound where
    other bundles run beside it in the same process. Reading the process's CPU clock is slow in a busy
    process (14 µs a reading in a 100k-row run, py-spy: the kernel sums every thread's time), so a stage
    timed element by element whose work stays on its thread (normalizing, lexical vectors) reads the
    thread's clock (`helpers=False`).
    """

    def __init__(self, stage: str, helpers: bool = True):
        self._counter = Metrics.counter(STAGE_NAMESPACE, stage)
        self._cpu_counter = Metrics.counter(STAGE_CPU_NAMESPACE, stage)
        self._cpu_time = time.process_time if helpers else time.thread_time

    def __enter__(self) -> "StageTimer":
        self._start = time.perf_counter()
        self._cpu_start = self._cpu_time()
        return self

    def __exit__(self, *exc) -> None:
        self._counter.inc(int((time.perf_counter() - self._start) * 1_000_000))
        self._cpu_counter.inc(int((self._cpu_time() - self._cpu_start) * 1_000_000))


LARGEST_NAMESPACE = "qdedup.largest"


def largest(step: str):
    """A distribution of the sizes of what one step holds or walks at once (a group, a sample, a work item):
    report.json's `largest_elements` gives its maximum, the figure the sizing table bounds."""
    return Metrics.distribution(LARGEST_NAMESPACE, step)


HARDWARE_NAMESPACE = "qdedup.hardware"


def hardware_rows(stage: str, hardware: str):
    """A counter of the rows a model stage forwarded on one kind of hardware (`devices.hardware`): report.json's
    `forward_hardware` gives them by stage, so a run whose workers differed says so."""
    return Metrics.counter(HARDWARE_NAMESPACE, f"{stage}: {hardware}")


COUNT_NAMESPACE = "qdedup.count"


class BundleCount:
    """A counter a DoFn adds to once per bundle (a metric update per element would cost more than the
    count): `start()` in start_bundle, `add()` per element, `finish()` in finish_bundle."""

    def __init__(self, namespace: str, name: str):
        self._counter = Metrics.counter(namespace, name)
        self._count = 0

    def start(self) -> None:
        self._count = 0

    def add(self, count: int = 1) -> None:
        self._count += count

    def finish(self) -> None:
        if self._count:
            self._counter.inc(self._count)


class _CountElements(beam.DoFn):
    """Adds the elements of each bundle to a counter (and their largest `size` to a distribution); with
    `items`, what each element holds (element -> count)."""

    def __init__(self, name: str, size=None, items=None):
        self._name = name
        self._size = size
        self._items = items

    def setup(self) -> None:
        self._count = BundleCount(COUNT_NAMESPACE, self._name)
        self._largest = Metrics.distribution(COUNT_NAMESPACE, self._name) if self._size else None

    def start_bundle(self) -> None:
        self._count.start()
        self._max = None

    def process(self, element):
        self._count.add(1 if self._items is None else self._items(element))
        if self._size:
            size = self._size(element)
            self._max = size if self._max is None or size > self._max else self._max
        return ()

    def finish_bundle(self) -> None:
        self._count.finish()
        if self._max is not None:
            self._largest.update(self._max)


def count_elements(name: str, size=None, items=None) -> beam.ParDo:
    """A step counting a collection into report.json's count `name` (read back by `pipelines.report.run_counts`);
    with `size` (element -> int), also the largest size it saw, as the distribution `name`; with `items`
    (element -> int), an element counts as that many (a scored batch as its pairs)."""
    return beam.ParDo(_CountElements(name, size, items))


READ_NAMESPACE = "qdedup.read"


def read_count(collection: str, step: str) -> BundleCount:
    """For a step that reads a collection made in an earlier stage: the count of the elements it read, under
    "<collection>/<step>"; `collection` is also counted where it is made (`count_elements`), and a run whose
    step read another number is refused (`pipelines.report.read_problem`).

    Needed where losing elements would leave every other count whole: at 1M rows in two local worker
    processes, 18% of the questions never reached blocking's partitioning, and the run's rows and pairs
    still added up.
    """
    return BundleCount(READ_NAMESPACE, f"{collection}/{step}")
