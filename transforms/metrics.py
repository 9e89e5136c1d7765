"""Per-stage timing through Beam counters, so report.json can say where a run spent its time."""
from __future__ import annotations

import time

from apache_beam.metrics import Metrics

STAGE_NAMESPACE = "qdedup.stage_us"


class StageTimer:
    """Context manager adding the wall microseconds of a block of work to the stage's counter."""

    def __init__(self, stage: str):
        self._counter = Metrics.counter(STAGE_NAMESPACE, stage)

    def __enter__(self) -> "StageTimer":
        self._start = time.perf_counter()
        return self

    def __exit__(self, *exc) -> None:
        self._counter.inc(int((time.perf_counter() - self._start) * 1_000_000))


LARGEST_NAMESPACE = "qdedup.largest"


def largest(step: str):
    """A distribution of the sizes of what one step holds or walks at once (a group, a sample, a work item):
    report.json's `largest_elements` gives its maximum, the figure the sizing table bounds."""
    return Metrics.distribution(LARGEST_NAMESPACE, step)
