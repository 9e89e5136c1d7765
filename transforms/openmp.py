"""OpenMP's idle threads set for a data pipeline: they sleep a fraction of a millisecond after their work, not ~9 ms.

torch's CPU kernels and faiss's search run on GNU OpenMP threads. Between parallel regions an idle thread
spins before it sleeps, by default 300,000 times (GOMP_SPINCOUNT): about 9 ms of CPU on this project's test
machine after every batch the model scores and every search faiss runs, while the pipeline's own Python
goes on beside it. At `SPIN_COUNT` a thread still spins across the short gaps inside a forward pass, which
is as fast, and burns next to nothing after it (benchmarks/README.md, "thirtieth session"). Only processes
whose model or search runs on several threads spin: the one-process local preset's; each worker of the
multi-process one runs on one.

Set when the package is imported, before torch or faiss loads OpenMP (it reads the setting once, then):
in the launcher, in local worker processes and on Dataflow workers alike. A user's own GOMP_SPINCOUNT or
OMP_WAIT_POLICY is left as it is.
"""
from __future__ import annotations

import os

SPIN_COUNT = 10_000  # a thirtieth of the default: under 0.4 ms of CPU after a batch on this project's test machine


def tune() -> None:
    """Sets GOMP_SPINCOUNT to `SPIN_COUNT` in this process's environment (and so its children's), unless a
    user's own GOMP_SPINCOUNT or OMP_WAIT_POLICY is set."""
    if "GOMP_SPINCOUNT" not in os.environ and "OMP_WAIT_POLICY" not in os.environ:
        os.environ["GOMP_SPINCOUNT"] = str(SPIN_COUNT)
