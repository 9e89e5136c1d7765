"""The OpenMP spin setting every qdedup process gets on importing the package (transforms/openmp.py)."""
import os
import subprocess
import sys

from transforms.openmp import SPIN_COUNT

# A process that imports the package, then torch, and reports the CPU its other threads (torch's OpenMP
# workers) burn while its main thread sleeps after each of 20 bursts of work on 2 threads. It first takes
# every core back from the test worker's share (tests/worker_cores.py): OpenMP does not spin where its
# threads outnumber the cores it may use.
_IDLE = """
import os, time
os.sched_setaffinity(0, range(os.cpu_count()))
import transforms
import torch
torch.set_num_threads(2)
x = torch.randn(256, 256)
def others():
    return time.process_time() - time.clock_gettime(time.CLOCK_THREAD_CPUTIME_ID)
idle = 0.0
for _ in range(20):
    for _ in range(5):
        x = torch.tanh(x @ x)
    start = others()
    time.sleep(0.02)
    idle += others() - start
print(idle)
"""


def _run(code: str, **env: str) -> str:
    environment = {k: v for k, v in os.environ.items() if k not in ("GOMP_SPINCOUNT", "OMP_WAIT_POLICY")}
    return subprocess.run([sys.executable, "-c", code], check=True, capture_output=True, text=True,
                          env={**environment, **env}).stdout.strip()


def test_importing_qdedup_sets_the_spin_and_keeps_a_users_own_setting():
    show = "import os, transforms; print(os.environ.get('GOMP_SPINCOUNT'))"
    assert _run(show) == str(SPIN_COUNT)
    assert _run(show, GOMP_SPINCOUNT="300000") == "300000"
    assert _run(show, OMP_WAIT_POLICY="active") == "None"  # the user's policy decides the spin


def test_torchs_idle_threads_sleep_soon_after_their_work():
    """With OpenMP's default spin (set here by hand, as a user's own setting is kept) the idle workers burn
    ~9 ms after each burst on the test machine; with the package's, ~1 ms."""
    assert (os.cpu_count() or 1) >= 2, "needs 2 cores: OpenMP's threads on one core never spin"
    spinning = float(_run(_IDLE, GOMP_SPINCOUNT="300000"))
    tuned = float(_run(_IDLE))
    assert spinning > 0.02, f"the control did not spin ({spinning:.4f} s): the measure sees nothing"
    assert tuned < spinning / 3, (spinning, tuned)
