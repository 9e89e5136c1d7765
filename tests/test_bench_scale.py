import os
import subprocess
import sys

from benchmarks.bench_scale import _tree_usage


def test_resident_memory_and_cpu_are_given_for_each_process_of_the_tree():
    child = subprocess.Popen([sys.executable, "-c",
                              "import time; x = bytearray(64 << 20); end = time.process_time() + 0.5\n"
                              "while time.process_time() < end: pass\ntime.sleep(30)"])
    try:
        for _ in range(100):  # until the child holds its 64 MiB and has spent its half second of CPU (in clock ticks)
            tree = _tree_usage(os.getpid())
            resident, cpu = tree.get(child.pid, (0, 0.0))
            if resident > 64 << 20 and cpu >= 0.45:
                break
            subprocess.run(["sleep", "0.1"])
        assert resident > 64 << 20 and tree[os.getpid()][0] > 0  # each process apart, the launcher's own too
        assert 0.45 <= cpu < 5  # its own CPU, in seconds (not the tree's, not clock ticks)
    finally:
        child.kill()
        child.wait()
