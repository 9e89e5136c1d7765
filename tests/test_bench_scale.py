import os
import subprocess
import sys

from benchmarks.bench_scale import _tree_usage, default_max_rss_gib


def test_resident_memory_and_cpu_are_given_for_each_process_of_the_tree():
    child = subprocess.Popen([sys.executable, "-c",
                              "import time; x = bytearray(64 << 20); end = time.process_time() + 0.5\n"
                              "while time.process_time() < end: pass\ntime.sleep(120)"])
    try:
        for _ in range(600):  # until the child holds its 64 MiB and has spent its half second of CPU (in clock ticks)
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


def test_a_larger_corpus_gets_more_base_questions_not_more_copies_of_each():
    """`base_families`: the shared questions alone while they are enough (the 100k corpus, row for row as
    before), then spliced ones, as many as keep `ROWS_PER_BASE` near-copy rows per base; seeded."""
    import random

    from benchmarks.bench_scale import ROWS_PER_BASE, _sections, base_families
    rng = random.Random(0)
    shared = sorted({"".join(rng.choice("如何怎么办信用卡额度还款利息贷款") for _ in range(rng.randint(6, 20)))
                     for _ in range(22_840)})
    assert base_families(shared, 100_000) == shared
    for n in (300_000, 1_000_000):
        bases = base_families(shared, n)
        rest = _sections(n)[3]
        assert bases[:len(shared)] == shared and rest / len(bases) <= ROWS_PER_BASE
        assert rest / (len(bases) - 1) > ROWS_PER_BASE  # no more than that takes
        assert len(set(bases)) > 0.99 * len(bases) and bases == base_families(shared, n)


def test_the_default_memory_limit_is_two_thirds_of_the_machine(monkeypatch):
    """A run is stopped above two thirds of the machine's memory: 16 GiB on a 24 GiB machine, 80 on 120."""
    pages = {"SC_PAGE_SIZE": 4096, "SC_PHYS_PAGES": 24 * 2**30 // 4096}
    monkeypatch.setattr(os, "sysconf", pages.__getitem__)
    assert default_max_rss_gib() == 16.0
    pages["SC_PHYS_PAGES"] = 120 * 2**30 // 4096
    assert default_max_rss_gib() == 80.0
