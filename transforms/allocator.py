"""glibc's malloc set for a data pipeline: large blocks, made and dropped again and again, reuse the memory the
process holds instead of new pages.

By default glibc gives a block above its mmap threshold (which it raises to at most 32 MiB) pages of its own,
handed back to the kernel when the block is freed, and hands back the free top of its heap past twice that
threshold. Every new page is a page fault and a page the kernel clears (2 MiB at a time where numpy asks for
huge pages: arrays of 4 MiB or more), and on a virtual machine that reports its free pages to its host, the
host's work too. The pipeline makes such blocks all the time: blocking's densified work items and products,
the cut's columns, scoring's batches, each bundle's buffers. In a 100k-row run on this project's test machine
the kernel clearing pages was 23% of all the CPU (`perf`; benchmarks/README.md, "forty-seventh session").
At `MMAP_THRESHOLD` and `TRIM_THRESHOLD` a block of up to 256 MiB comes from the heap, and up to 1 GiB of
free heap is kept for the next ones.

Set when the package is imported: in the launcher, in local worker processes and on Dataflow workers alike.
A user's own MALLOC_MMAP_THRESHOLD_, MALLOC_TRIM_THRESHOLD_ or GLIBC_TUNABLES is left as it is; a no-op
where the C library has no mallopt.
"""
from __future__ import annotations

import ctypes
import os

MMAP_THRESHOLD = 256 << 20  # the largest block served from the heap
TRIM_THRESHOLD = 1 << 30  # the most free memory at the top of a heap kept for later blocks

# mallopt's codes for those settings and for the most arenas (glibc's malloc.h)
M_TRIM_THRESHOLD, M_MMAP_THRESHOLD, M_ARENA_MAX = -1, -3, -8

_USERS_OWN = ("MALLOC_MMAP_THRESHOLD_", "MALLOC_TRIM_THRESHOLD_", "GLIBC_TUNABLES")


def mallopt(option: int, value: int) -> bool:
    """glibc's mallopt(option, value) in this process: whether it took it (False where there is none)."""
    function = getattr(ctypes.CDLL(None), "mallopt", None)
    return function is not None and bool(function(option, value))


def tune() -> None:
    """Sets `MMAP_THRESHOLD` and `TRIM_THRESHOLD`, unless a user's own malloc setting is in the environment."""
    if not any(name in os.environ for name in _USERS_OWN):
        mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD)
        mallopt(M_TRIM_THRESHOLD, TRIM_THRESHOLD)
