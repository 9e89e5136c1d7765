"""Python's garbage collector set for a data pipeline: young collections rarer, so full ones are too.

A run keeps millions of live objects (the in-process runner's buffers, a stage's grouped values) while it
makes and drops millions more, nearly all freed at once by reference counting. With CPython's default
thresholds (700, 10, 10) the collector still scanned every live object 37 times in a 30k-row run: 10.3 s
of its 83 s of CPU (benchmarks/README.md, "2026-12-01 (second session)"). At `THRESHOLDS` that run made
no full collection, used 11% less CPU and the same peak memory. Objects in reference cycles are still collected,
every `THRESHOLDS[0]` net allocations for the youngest.

Set when the package is imported, so in the launcher, in local worker processes and on Dataflow workers
(which import qdedup's steps to run them) alike.
"""
from __future__ import annotations

import gc

THRESHOLDS = (50_000, 20, 10)


def tune() -> None:
    """Sets `THRESHOLDS`, unless a user's own setting (anything but CPython's default) is in place."""
    if gc.get_threshold() == (700, 10, 10):
        gc.set_threshold(*THRESHOLDS)
