"""Imported first by conftest.py: under pytest-xdist, each worker process keeps to its own share of the cores.

numpy's BLAS, torch and faiss size their thread pools to the cores a process may use when they load; two
workers whose pools each span every core wait on each other's threads (two processes with two torch threads
each on two cores made scoring 22x slower, `preflight.divide_local_threads`). So this runs on import, before
any of them loads.
"""
from __future__ import annotations

import os


def keep_to_this_workers_cores() -> None:
    worker = os.environ.get("PYTEST_XDIST_WORKER", "")
    count = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))
    if not worker.startswith("gw") or count < 2:
        return
    cores, index = sorted(os.sched_getaffinity(0)), int(worker[2:])
    os.sched_setaffinity(0, cores[index % count::count] if len(cores) >= count else [cores[index % len(cores)]])


keep_to_this_workers_cores()
