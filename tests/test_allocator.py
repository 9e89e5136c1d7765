"""The malloc setting every qdedup process gets on importing the package (transforms/allocator.py), read from
glibc's own account of a block's memory (mallinfo2)."""
import json
import os
import subprocess
import sys

import pytest

from transforms.allocator import MMAP_THRESHOLD

# A 64 MiB array: above glibc's own largest mmap threshold (32 MiB), below `MMAP_THRESHOLD`.
_HELD_AND_DROPPED = """
import ctypes, json
import numpy as np
import transforms

class Info(ctypes.Structure):
    _fields_ = [(name, ctypes.c_size_t) for name in
                ("arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks", "fsmblks", "uordblks", "fordblks",
                 "keepcost")]

mallinfo2 = ctypes.CDLL(None).mallinfo2
mallinfo2.restype = Info
block = np.ones(64 << 20, dtype=np.uint8)
held = mallinfo2()
del block
dropped = mallinfo2()
print(json.dumps({"own_pages": held.hblkhd, "free_kept": dropped.fordblks}))
"""


def _memory_of_a_block(**environment) -> dict:
    env = {key: value for key, value in os.environ.items()
           if key not in ("MALLOC_MMAP_THRESHOLD_", "MALLOC_TRIM_THRESHOLD_", "GLIBC_TUNABLES")}
    done = subprocess.run([sys.executable, "-c", _HELD_AND_DROPPED], capture_output=True, text=True,
                          env={**env, **environment})
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's malloc: Linux only")
def test_a_large_block_comes_from_the_heap_and_its_memory_is_kept_unless_the_user_set_malloc_himself():
    assert 64 << 20 < MMAP_THRESHOLD
    tuned = _memory_of_a_block()
    assert tuned["own_pages"] < 64 << 20 and tuned["free_kept"] >= 64 << 20
    users = _memory_of_a_block(MALLOC_MMAP_THRESHOLD_=str(32 << 20))  # left as it is: glibc's own behaviour
    assert users["own_pages"] >= 64 << 20 and users["free_kept"] < 64 << 20
