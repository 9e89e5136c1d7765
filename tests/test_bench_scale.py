import os
import subprocess
import sys

from benchmarks.bench_scale import _tree_rss


def test_resident_memory_is_given_for_each_process_of_the_tree():
    child = subprocess.Popen([sys.executable, "-c", "import time; x = bytearray(64 << 20); time.sleep(30)"])
    try:
        for _ in range(100):  # until the child holds its 64 MiB
            tree = _tree_rss(os.getpid())
            if tree.get(child.pid, 0) > 64 << 20:
                break
            subprocess.run(["sleep", "0.1"])
        assert tree[child.pid] > 64 << 20 and tree[os.getpid()] > 0  # each process apart, the launcher's own too
    finally:
        child.kill()
        child.wait()
